"""Real ``bot4`` sessions and commands sharing state through Redis: the kill
switch from a shell, a late starter, Redis stopped mid-session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import redis

from bot4.recording_read import read_records
from bot4.shared.bridge import StreamReader
from bot4.shared.connection import RedisConfig, SharedConnection
from tests.conftest import REPO, run_bot4
from tests.shared_kit import OwnRedis, free_port, namespace, session_config, url, zigzag_ticks

__all__ = ["namespace", "url"]  # fixtures


def _env(url: str, ns: str, **extra: str) -> dict[str, str]:
    return {
        "BOT4_REDIS_URL": url,
        "BOT4_REDIS_NAMESPACE": ns,
        "BOT4_PLUGINS": "paper,sma_cross,correlation",
        **extra,
    }


def _session(tmp: Path, name: str, seconds: int, env: dict[str, str]) -> subprocess.Popen[str]:
    data = zigzag_ticks(tmp / f"{name}.csv", seconds)
    config = session_config(tmp / f"{name}.yaml", data, tmp / name)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot4",
            "run",
            "--config",
            str(config),
            "--speed",
            "1",
            "--json",
            "--no-chart",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **env, "BOT4_REDIS_PROCESS": name},
    )


def _records(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in read_records(path)]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _live(client: redis.Redis, ns: str) -> set[str]:
    # The clients here decode responses: members are str.
    members = cast(set[str], client.smembers(f"{ns}:procs"))
    return {p for p in members if client.exists(f"{ns}:hb:{p}")}


def test_commands_need_redis_configured() -> None:
    env = {"BOT4_REDIS_URL": ""}
    for args in (("breaker", "status"), ("breaker", "trip"), ("kill",)):
        result = run_bot4(*args, env=env)
        assert result.returncode == 2
        assert "BOT4_REDIS_URL is not set" in result.stderr


def test_breaker_commands_from_a_shell(url: str, namespace: str) -> None:
    env = _env(url, namespace)
    status = run_bot4("breaker", "status", env=env)
    assert status.returncode == 0, status.stderr
    assert "breaker:   armed" in status.stdout
    trip = run_bot4("breaker", "trip", "--reason", "exchange outage", env=env)
    assert trip.returncode == 0, trip.stderr
    shown = json.loads(run_bot4("breaker", "status", "--json", env=env).stdout)
    assert (shown["tripped"], shown["reason"], shown["killed"]) == (True, "exchange outage", False)
    assert run_bot4("breaker", "reset", env=env).returncode == 0
    assert json.loads(run_bot4("breaker", "status", "--json", env=env).stdout)["tripped"] is False


def test_kill_from_a_shell_stops_two_sessions_within_a_second(
    url: str, namespace: str, tmp_path: Path
) -> None:
    env = _env(url, namespace)
    sessions = {name: _session(tmp_path, name, 20, env) for name in ("bot-a", "bot-b")}
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        _wait_for(lambda: _live(client, namespace) == set(sessions), 30, "both sessions")
        time.sleep(9)  # let them trade (the first signal comes after about 6 ticks)
        killed = run_bot4("kill", "--reason", "test kill", env=env)
        kill_done_ms = time.time() * 1000
        assert killed.returncode == 0, killed.stderr
        assert "2 of 2 live process(es) confirmed halting" in killed.stdout
        outputs = {name: p.communicate(timeout=60) for name, p in sessions.items()}
    finally:
        for proc in sessions.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        client.close()
    for name, proc in sessions.items():
        assert proc.returncode == 0, outputs[name][1]
    # Every process followed: from its recording (bus order), nothing opened after the halt.
    for name in sessions:
        records = _records(tmp_path / name / "recording.jsonl.gz")
        topics = [r["topic"] for r in records]
        halted = topics.index("kernel.halted")
        assert records[halted]["payload"] == "bot4 kill: test kill"
        assert "risk.approved" in topics[:halted], f"{name} never traded before the kill"
        after = records[halted:]
        assert not [r for r in after if r["topic"] == "risk.approved"]
        refused = [r for r in after if r["topic"] == "risk.rejected"]
        assert all(r["payload"]["rule"] == "kill-switch" for r in refused)
    # And in wall-clock time, through the bridge stream (server timestamps).
    with SharedConnection(RedisConfig(url=url, namespace=namespace, process="t")) as conn:
        events = StreamReader(conn, "test", "t", objects=False).replay("0")
    halts = {e.origin: e.ms for e in events if e.topic == "kernel.halted"}
    assert set(halts) == set(sessions)
    assert max(halts.values()) <= kill_done_ms + 1000
    late = [e for e in events if e.topic == "risk.approved" and e.ms > kill_done_ms + 1000]
    assert not late
    # A session that starts now sees the kill at once and trades nothing.
    late_starter = _session(tmp_path, "bot-c", 10, env)
    out, err = late_starter.communicate(timeout=60)
    assert late_starter.returncode == 0, err
    summary = json.loads(out)
    assert summary["orders_approved"] == 0
    assert summary["rejections_by_rule"].get("kill-switch", 0) > 0
    assert run_bot4("breaker", "reset", env=env).returncode == 0


def test_redis_stopped_mid_session(tmp_path: Path) -> None:
    server = OwnRedis(free_port())
    server.start()
    ns = "outage"
    env = _env(server.url, ns, BOT4_REDIS_BRIDGE="#")
    session = _session(tmp_path, "bot-x", 30, env)
    try:
        client = server.client()
        _wait_for(lambda: _live(client, ns) == {"bot-x"}, 30, "the session to register")
        client.close()
        time.sleep(5)
        server.stop()
        time.sleep(8)
        server.start()
        client = server.client()
        # Reconciled: the session registers again on the empty server.
        _wait_for(lambda: _live(client, ns) == {"bot-x"}, 10, "re-registration")
        out, err = session.communicate(timeout=60)
        assert session.returncode == 0, err
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange(f"{ns}:events", "-", "+"))
        stream = [json.loads(fields["e"]) for _id, fields in entries]
        procs_after = client.smembers(f"{ns}:procs")
        client.close()
    finally:
        if session.poll() is None:
            session.kill()
            session.communicate()
        server.stop()
    records = _records(tmp_path / "bot-x" / "recording.jsonl.gz")
    rejected = [r for r in records if r["topic"] == "risk.rejected"]
    down = [r for r in rejected if "Redis at redis://127.0.0.1:" in r["payload"]["reason"]]
    assert down, "no order was refused while Redis was down"
    assert all(r["payload"]["rule"] == "shared-budget" for r in down)
    first_down = down[0]["seq"]
    approved_after = [
        r for r in records if r["topic"] == "risk.approved" and r["seq"] > down[-1]["seq"]
    ]
    assert approved_after, "no order approved after Redis came back"
    # Nothing lost: every mirrored event from the outage on reached the new server.
    wanted = {r["seq"] for r in records if r["seq"] >= first_down and r["topic"] != "session.start"}
    assert wanted <= {e["seq"] for e in stream}
    assert procs_after == set()  # and the session withdrew cleanly at its end
    summary = json.loads(out)
    assert summary["rejections_by_rule"]["shared-budget"] == len(down)
