"""Shared state in Redis: bus events across processes, reservation round trip.

    .venv/bin/python benchmarks/bench_shared.py [--quick]

* Bridge: a writer process publishes fills on its bus, mirrored by the
  StreamBridge (batched: one EVALSHA of XADDs per batch); this process reads
  them with XREADGROUP + XACK through a StreamReader (JSON envelope parsed,
  payloads not turned back into objects). Events/s end to end, from the
  writer's first publish until the reader has acknowledged the last event,
  and each side alone. The target is 100k events/s; ``redis-benchmark -q -n
  100000 -P 16 -t set`` on the same machine is printed beside it (what the
  server does with pipelined trivial commands and a C client).
* Reservation round trip: SharedBudgetCheck.check (thread hop + one EVALSHA of
  the reserve script) then release, sequentially from trio; p50/p99.

Needs Redis at $BOT4_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); says
so and returns nothing when it is not reachable.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot4.bus import open_bus  # noqa: E402
from bot4.model import Fill, Order, OrderType, Portfolio, Side  # noqa: E402
from bot4.shared.bridge import StreamBridge, StreamReader  # noqa: E402
from bot4.shared.budget import BudgetLimits, SharedBudget, SharedBudgetCheck  # noqa: E402
from bot4.shared.connection import RedisConfig, SharedConnection  # noqa: E402

URL = os.environ.get("BOT4_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET_EPS = 100_000


def _config(ns: str, process: str) -> RedisConfig:
    return RedisConfig(url=URL, namespace=ns, process=process)


async def _write(ns: str, events: int) -> tuple[float, float]:
    fill = Fill(
        "f",
        "c",
        "BTC-USDT",
        Side.BUY,
        Decimal("0.01"),
        Decimal(50000),
        Decimal("0.1"),
        datetime.now(UTC),
    )
    with SharedConnection(_config(ns, "writer")) as conn:
        bridge = StreamBridge(conn, patterns=("fill.#",), maxlen=events * 2)
        async with open_bus() as bus:
            bridge.attach(bus)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run)
                wall = time.time()
                started = time.perf_counter()
                for i in range(events):
                    await bus.publish("fill.BTC-USDT", fill, ts=i)
                    if not i % 512:
                        await trio.lowlevel.checkpoint()
                await bus.drain()
                await bridge.flush()
                elapsed = time.perf_counter() - started
                nursery.cancel_scope.cancel()
    return wall, elapsed


def _read(ns: str, events: int, timeout: float) -> tuple[int, float]:
    with SharedConnection(_config(ns, "reader")) as conn:
        reader = StreamReader(conn, "bench", "r1", objects=False)
        reader.ensure_group("0")
        got = 0
        deadline = time.monotonic() + timeout
        while got < events and time.monotonic() < deadline:
            batch = reader.read(count=5000, block_ms=200)
            if batch:
                reader.ack(e.id for e in batch)
                got += len(batch)
        return got, time.time()


def bridge_across_processes(events: int) -> dict[str, Any]:
    ns = f"bench-{secrets.token_hex(4)}"
    with SharedConnection(_config(ns, "setup")) as conn:
        StreamReader(conn, "bench", "r1").ensure_group("0")
    writer = subprocess.Popen(
        [sys.executable, __file__, "--writer", ns, str(events)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    got, done = _read(ns, events, timeout=120)
    out, _ = writer.communicate(timeout=120)
    first_publish, write_s = (float(x) for x in out.split())
    # The reader alone, on the stream the writer left behind.
    with SharedConnection(_config(ns, "reader2")) as conn:
        StreamReader(conn, "again", "r2").ensure_group("0")
    t0 = time.perf_counter()
    with SharedConnection(_config(ns, "reader2")) as conn:
        reader = StreamReader(conn, "again", "r2", objects=False)
        alone = 0
        while alone < events:
            batch = reader.read(count=5000, block_ms=100)
            if not batch:
                break
            reader.ack(e.id for e in batch)
            alone += len(batch)
    read_s = time.perf_counter() - t0
    client = redis.Redis.from_url(URL)
    try:
        client.delete(f"{ns}:events")
    finally:
        client.close()
    # From the writer's first publish (its start-up is not part of the run)
    # to the reader's last acknowledgement; both clocks are this machine's.
    end_to_end = done - first_publish
    return {
        "events": got,
        "end_to_end_eps": got / end_to_end if end_to_end > 0 else 0.0,
        "writer_eps": events / write_s,
        "reader_eps": alone / read_s if read_s > 0 else 0.0,
    }


def redis_benchmark_set() -> float | None:
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    match = re.search(r"127\.0\.0\.1:(\d+)", URL) or re.search(r"localhost:(\d+)", URL)
    port = match.group(1) if match else "6379"
    out = subprocess.run(
        [binary, "-p", port, "-q", "-n", "100000", "-P", "16", "-t", "set"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    found = re.search(r"SET:\s*([\d.]+)\s*requests per second", out)
    return float(found.group(1)) if found else None


async def _round_trips(count: int) -> list[int]:
    ns = f"bench-{secrets.token_hex(4)}"
    samples: list[int] = []
    portfolio = Portfolio(cash=Decimal(1_000_000), marks={"BTC-USDT": Decimal(100)})
    with SharedConnection(_config(ns, "rt")) as conn:
        budget = SharedBudget(conn, BudgetLimits(max_exposure=Decimal(10**9)))
        check = SharedBudgetCheck(budget)
        for i in range(count):
            order = Order(f"o{i}", "BTC-USDT", Side.BUY, OrderType.MARKET, Decimal(1))
            t = time.perf_counter_ns()
            verdict = await check.check(order, portfolio)
            samples.append(time.perf_counter_ns() - t)
            assert verdict is None
            await budget.release(order.client_order_id)
        await trio.to_thread.run_sync(budget.withdraw_sync)
        keys = conn.client.keys(f"{ns}:*")
        if keys:
            conn.client.delete(*keys)
    return sorted(samples)


def run(quick: bool = False) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(URL, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        print(f"bench_shared: Redis not reachable at {URL}: {exc}; skipped")
        return []
    finally:
        client.close()
    events = 50_000 if quick else 200_000
    bridge = bridge_across_processes(events)
    server = redis_benchmark_set()
    samples = trio.run(_round_trips, 1000 if quick else 5000)
    p50 = samples[len(samples) // 2] / 1000
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000
    rows: list[dict[str, Any]] = [
        {
            "what": "bridge end to end (2 processes)",
            "value": bridge["end_to_end_eps"],
            "unit": "events/s",
            "target": TARGET_EPS,
            "server": server,
        },
        {
            "what": "bridge writer alone",
            "value": bridge["writer_eps"],
            "unit": "events/s",
            "target": TARGET_EPS,
            "server": server,
        },
        {
            "what": "bridge reader alone",
            "value": bridge["reader_eps"],
            "unit": "events/s",
            "target": TARGET_EPS,
            "server": server,
        },
        {
            "what": "reservation round trip p50",
            "value": p50,
            "unit": "us",
            "target": None,
            "server": None,
        },
        {
            "what": "reservation round trip p99",
            "value": p99,
            "unit": "us",
            "target": None,
            "server": None,
        },
    ]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(skipped: no Redis)"
    lines = [
        f"{'measure':<34} {'ours':>14} {'target':>10} {'ours/target':>11} "
        f"{'redis-benchmark SET -P16':>25} {'ours/redis-bench':>16}"
    ]
    for r in rows:
        target, server, value = r["target"], r["server"], r["value"]
        ratio = f"{value / target:.2f}" if target else "-"
        bench = f"{server:,.0f} req/s" if server else "-"
        bench_ratio = f"{value / server:.3f}" if server else "-"
        shown_target = f"{target:,}" if target else "-"
        lines.append(
            f"{r['what']:<34} {value:>10,.0f} {r['unit']:<3} {shown_target:>10} {ratio:>11} "
            f"{bench:>25} {bench_ratio:>16}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--writer"]:
        wall, elapsed = trio.run(_write, argv[1], int(argv[2]))
        print(wall, elapsed, flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(format_table(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
