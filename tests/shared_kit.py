"""Helpers for the tests of bot4.shared: a real Redis, a random namespace,
a test-owned redis-server, a small tick file whose prices make sma_cross
trade every few seconds."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from tests.conftest import service_missing

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def redis_url() -> str:
    return os.environ.get("BOT4_TEST_REDIS_URL", DEFAULT_URL)


@pytest.fixture
def url() -> str:
    target = redis_url()
    client = redis.Redis.from_url(target, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        service_missing("Redis", f"{target}: {exc}")
    finally:
        client.close()
    return target


@pytest.fixture
def namespace(url: str) -> Iterator[str]:
    ns = f"bot4test-{secrets.token_hex(4)}"
    yield ns
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"{ns}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server this test starts, stops and restarts on one port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server", "the binary is not on PATH")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
            try:
                client.ping()
            except (redis.RedisError, OSError):
                time.sleep(0.05)
                continue
            finally:
                client.close()
            return
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


def zigzag_ticks(path: Path, seconds: int, symbol: str = "BTC-USDT") -> Path:
    """One tick a second; the price walks a triangle (period 8 s) around 100,
    so sma_cross(fast=2, slow=4) signals every few seconds."""
    start = datetime(2024, 3, 1, tzinfo=UTC)
    wave = [100, 101, 102, 103, 104, 103, 102, 101]
    lines = ["timestamp,symbol,bid,ask,last,volume"]
    for i in range(seconds):
        last = wave[i % len(wave)]
        ts = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{ts},{symbol},{last - 0.01:.2f},{last + 0.01:.2f},{last:.2f},1")
    path.write_text("\n".join(lines) + "\n")
    return path


def session_config(path: Path, data: Path, out: Path) -> Path:
    path.write_text(
        f"data: {data}\n"
        f"out: {out}\n"
        "journal: 'off'\n"
        "strategies:\n"
        "  - name: sma_cross\n"
        "    params: {fast: 2, slow: 4, size: 1, stop_loss_pct: 3, take_profit_pct: 6}\n"
    )
    return path
