"""The order path with the journal on: off vs SQLite vs PostgreSQL.

    .venv/bin/python benchmarks/bench_journal.py [--quick] [--rounds R]

Three measurements:

* ``kernel``: the order path of ``bench_kernel`` (its ticks built before
  timing, a market order every 10th tick through the full default policy, a
  paper fill), each run in a fresh process, in CPU time (``time.process_time``,
  every thread of the process: the journal's worker thread included) beside
  wall time: ``off`` (no journal), ``sqlite`` (the journal on SQLite against a
  paper-kind venue, as a backtest runs it: intents ride the batch) and
  ``sqlite-live`` (the same venue taken as live: each intent committed with
  ``synchronous=FULL`` before ``place_order``; a fifth of the ticks, as it
  waits for an fsync per order). Rounds are interleaved (off, sqlite, live,
  then again); the ratio is of the medians, to ``off``.

* ``session``: a real session (kernel, default rules and packs, sma_cross at
  fast=10/slow=40 so it trades often, the in-memory paper exchange) over the
  first ticks of the bundled sample, with no journal, then with the journal
  service on SQLite and on PostgreSQL, each with intents committed
  ``full`` (fsync / synchronous_commit on before place_order) and ``normal``
  (survives a crash of the bot, not of the machine). Three rounds,
  interleaved (off, then each backend and sync, then again); reported: the
  medians of wall time (the session as ``run_session`` times it, start-up
  and the last flush included: orders per second and the ratio to no
  journal) and of the process's CPU time (every thread) with its ratio.
* ``path``: the journal's share alone, per order as the kernel produces it: a
  write-ahead intent (a durable commit that waits), then the decision, ack,
  two order updates, the fill and the position record queued for group
  commit. Reported: orders per second and mean microseconds per order.

PostgreSQL is the server named by BOT4_TEST_PG_URL (default
postgresql://postgres@127.0.0.1:5432/test), in a scratch schema dropped after;
skipped when it is not reachable.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import RESULT_PREFIX, Conditions, run_child

from bot4.data import iter_sample
from bot4.journal import Journal, Record, RecordKind, open_store
from bot4.journal.service import JournalService, journal_for
from bot4.journal.writer import JournalWriter, VenueKind
from bot4.model import Approved, Fill, Order, OrderState, OrderStatus, OrderType, Side
from bot4.session import SessionConfig, StrategyConfig, run_session

PG_URL = os.environ.get("BOT4_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_schema() -> Iterator[str | None]:
    import psycopg

    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        print(f"PostgreSQL not reachable ({str(exc).strip().splitlines()[0]}): skipped")
        yield None
        return
    name = f"bot4_bench_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _targets(tmp: Path, schema: str | None) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = [("sqlite", str(tmp / "j-{n}.sqlite"), None)]
    if schema is not None:
        out.append(("postgres", PG_URL, schema))
    return out


def _session(
    ticks: list[Any], tmp: Path, service: JournalService | None
) -> tuple[int, float, float]:
    config = SessionConfig(
        strategies=(
            StrategyConfig(
                "sma_cross",
                {
                    "fast": 10,
                    "slow": 40,
                    "size": "0.01",
                    "leverage": "3",  # the most the default policy allows
                    "stop_loss_pct": "0.2",
                    "take_profit_pct": "0.4",
                },
            ),
        ),
        out=str(tmp),
        record=False,
        journal="off",
    )
    services = [] if service is None else [service]
    gc.collect()
    cpu = time.process_time()
    result = trio.run(lambda: run_session(config, feed=iter(ticks), services=services))
    return result.stats.approved, result.wall_seconds, time.process_time() - cpu


def _records(i: int, ts: int) -> tuple[Order, list[Record]]:
    o = Order(
        f"b-e-{i}",
        "BTC-USDT",
        Side.BUY if i % 2 else Side.SELL,
        OrderType.MARKET,
        Decimal("0.01"),
        leverage=Decimal(5),
        correlation_id=f"b-e-{i}",
    )
    new = OrderState(o, OrderStatus.NEW, exchange_order_id=f"P{i}")
    done = OrderState(o, OrderStatus.FILLED, Decimal("0.01"), Decimal("50000.5"), f"P{i}")
    f = Fill(
        f"paper-{i}",
        o.client_order_id,
        o.symbol,
        o.side,
        o.qty,
        Decimal("50000.5"),
        Decimal("0.2"),
        datetime.fromtimestamp(ts / 1e9, UTC),
    )
    return o, [
        Record.decision(
            Approved(o, ("allow-reducing-orders", "max-position-size")), ts, o.client_order_id
        ),
        Record.state(done, ts, ack=True),
        Record.state(new, ts),
        Record.fill(f, ts),
        Record.state(done, ts),
        Record(
            RecordKind.POSITION,
            {"symbol": o.symbol, "qty": "0.01"},
            ts,
            o.client_order_id,
            o.symbol,
        ),
    ]


def _path(target: str, schema: str | None, sync: str, n: int) -> tuple[int, float]:
    store = open_store(target, schema=schema, migrate=True, lock=True, intent_sync=sync)
    writer = JournalWriter(Journal(store), venue=VenueKind.LIVE)
    prepared = [_records(i, 1_700_000_000_000_000_000 + i) for i in range(n)]

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            start = time.perf_counter()
            for o, records in prepared:
                await writer.write_ahead(o)
                for r in records:
                    writer.enqueue(r)
            await writer.flush()
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
        return elapsed

    return n, trio.run(main)


KERNEL_MODES = ("off", "sqlite", "sqlite-live")


def kernel_child(mode: str, ticks: int) -> dict[str, Any]:
    """One ``kernel`` run in this (fresh) process: bench_kernel's ``orders``
    case, with the journal as the session service attaches it."""
    import bench_kernel as bk
    import bot4_correlation
    import bot4_paper

    from bot4.bus import open_bus
    from bot4.gate import RiskGate
    from bot4.kernel import Kernel
    from bot4.portfolio import PortfolioTracker
    from bot4.risk import RiskPolicy

    feed = bk.build_ticks(ticks)
    with tempfile.TemporaryDirectory(prefix="bot4-bench-journal-") as tmp_name:
        tmp = Path(tmp_name)
        packs = [bot4_correlation.factory({})]
        policy = RiskPolicy.load([bk._bench_rules(tmp)], packs)
        exchange = bot4_paper.create({"feed": feed, "balance": "1000000", "slippage_bps": "0"})
        del feed
        strategy = bk._strategy("orders")

        async def main() -> tuple[Any, float, float, int]:
            async with open_bus() as bus:
                tracker = PortfolioTracker(Decimal(1000000))
                kernel = Kernel(
                    exchange=exchange,
                    strategies=[strategy],
                    gate=RiskGate(policy),
                    policy=policy,
                    tracker=tracker,
                    bus=bus,
                    packs=packs,
                    resize_rejected=False,
                )
                async with trio.open_nursery() as nursery:
                    writer: JournalWriter | None = None
                    if mode != "off":
                        live = mode == "sqlite-live"
                        store = open_store(
                            tmp / "journal.sqlite",
                            lock=True,
                            intent_sync="full" if live else "normal",
                        )
                        venue = VenueKind.LIVE if live else VenueKind.PAPER
                        writer = JournalWriter(journal_for(store, venue), venue=venue)
                        writer.attach(bus, policy, tracker=tracker, clock=lambda: kernel.now_ns)
                        kernel.journal = writer
                        kernel.risk_journal = writer
                        nursery.start_soon(writer.run)
                    gc.collect()
                    wall, cpu = time.perf_counter(), time.process_time()
                    stats = await kernel.run(["BTC-USDT"])
                    await bus.drain()
                    if writer is not None:
                        await writer.flush()  # timed: every record written
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    nursery.cancel_scope.cancel()
                return stats, wall, cpu, writer.records if writer is not None else 0

        stats, wall, cpu, records = trio.run(main)
    orders = stats.approved + stats.rejected
    return {
        "mode": mode,
        "ticks": stats.ticks,
        "orders": orders,
        "records": records,
        "run_s": wall,
        "run_cpu_s": cpu,
        "orders_per_s": orders / wall,
        "orders_per_cpu_s": orders / cpu,
    }


def run_kernel(quick: bool, rounds: int) -> list[dict[str, Any]]:
    """Each mode in a fresh process, interleaved round by round; medians."""
    n = 20_000 if quick else 200_000
    done: dict[str, list[dict[str, Any]]] = {m: [] for m in KERNEL_MODES}
    for _ in range(rounds):
        for mode in KERNEL_MODES:
            ticks = n // 5 if mode == "sqlite-live" else n
            argv = [sys.executable, __file__, "--kernel-child", mode, "--ticks", str(ticks)]
            done[mode].append(run_child(argv))
    rows = []
    base = statistics.median(r["orders_per_cpu_s"] for r in done["off"])
    base_wall = statistics.median(r["orders_per_s"] for r in done["off"])
    for mode, results in done.items():
        cpu_rate = statistics.median(r["orders_per_cpu_s"] for r in results)
        wall_rate = statistics.median(r["orders_per_s"] for r in results)
        rows.append(
            {
                "case": "kernel",
                "backend": mode,
                "orders": results[-1]["orders"],
                "records": results[-1]["records"],
                "orders_per_cpu_s": round(cpu_rate, 1),
                "orders_per_s": round(wall_rate, 1),
                "ratio_cpu": round(cpu_rate / base, 3),
                "ratio_wall": round(wall_rate / base_wall, 3),
                "rounds": len(results),
            }
        )
    return rows


def format_kernel(rows: list[dict[str, Any]]) -> str:
    lines = [
        "kernel order path (bench_kernel's orders case), journal off / on; medians, "
        "CPU time of every thread",
        f"{'journal':<12} {'orders':>7} {'records':>8} {'orders/s CPU':>13} {'vs off':>7} "
        f"{'orders/s wall':>14} {'vs off':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['backend']:<12} {r['orders']:>7} {r['records']:>8} "
            f"{r['orders_per_cpu_s']:>13,.0f} {r['ratio_cpu']:>6.2f}x "
            f"{r['orders_per_s']:>14,.0f} {r['ratio_wall']:>6.2f}x"
        )
    return "\n".join(lines)


def run(quick: bool = False, rounds: int | None = None) -> list[dict[str, Any]]:
    conditions = Conditions()  # the load at the start, and at the end when printed
    rows = run_kernel(quick, rounds or (1 if quick else 3))
    rows += run_session_cases(quick)
    return [*rows, {"case": "conditions", "line": conditions.line()}]


def run_session_cases(quick: bool = False, rounds: int = 3) -> list[dict[str, Any]]:
    """The ``session`` case, ``rounds`` times interleaved (off, then each
    backend and sync, then again), medians of wall and CPU time; then the
    ``path`` case once per backend and sync."""
    n_ticks = 20_000 if quick else 60_000
    n_path = 300 if quick else 2_000
    rounds = 1 if quick else rounds
    ticks = list(itertools.islice(iter_sample(), n_ticks))
    rows: list[dict[str, Any]] = []
    counter = itertools.count()
    with tempfile.TemporaryDirectory(prefix="bot4-bench-journal-") as tmp_name:
        tmp = Path(tmp_name)
        for schema in _pg_schema():
            configs = [("off", "", None, "-")] + [
                (backend, target, sch, sync)
                for backend, target, sch in _targets(tmp, schema)
                for sync in ("full", "normal")
            ]
            runs: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
            # One session first, not counted: imports, compiled rules and
            # classes are then warm for every configuration alike.
            _session(ticks, tmp / "warm-up", None)
            for _ in range(rounds):
                for backend, target, sch, sync in configs:
                    service = None
                    if backend != "off":
                        t = target.format(n=next(counter))
                        if backend == "postgres":
                            _drop_tables(sch)
                            open_store(t, schema=sch, migrate=True).close()
                        service = JournalService(t, schema=sch, intent_sync=sync)
                    done = _session(ticks, tmp / f"s{next(counter)}", service)
                    runs.setdefault((backend, sync), []).append(done)
            base_wall = statistics.median(w for _, w, _ in runs[("off", "-")])
            base_cpu = statistics.median(c for _, _, c in runs[("off", "-")])
            for backend, _, _, sync in configs:
                done_runs = runs[(backend, sync)]
                orders = done_runs[0][0]
                wall = statistics.median(w for _, w, _ in done_runs)
                cpu = statistics.median(c for _, _, c in done_runs)
                rows.append(
                    {
                        "case": "session",
                        "backend": backend,
                        "sync": sync,
                        "orders": orders,
                        "seconds": round(wall, 3),
                        "cpu_seconds": round(cpu, 3),
                        "orders_per_s": round(orders / wall, 1),
                        # Orders are the same in every run: the ratio of the
                        # rates is that of the medians' times.
                        "ratio": round(base_wall / wall, 3),
                        "cpu_ratio": round(base_cpu / cpu, 3),
                    }
                )
            if schema is not None:
                _drop_tables(schema)
            for backend, target, sch in _targets(tmp, schema):
                for sync in ("full", "normal"):
                    t = target.format(n=next(counter))
                    n, secs = _path(t, sch, sync, n_path)
                    rows.append(
                        {
                            "case": "path",
                            "backend": backend,
                            "sync": sync,
                            "orders": n,
                            "seconds": round(secs, 3),
                            "orders_per_s": round(n / secs, 1),
                            "us_per_order": round(secs / n * 1e6, 1),
                        }
                    )
                    if backend == "postgres":
                        _drop_tables(sch)
    return rows


def _drop_tables(schema: str | None) -> None:
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def format_table(rows: list[dict[str, Any]]) -> str:
    kernel = [r for r in rows if r["case"] == "kernel"]
    lines = [r["line"] for r in rows if r["case"] == "conditions"] or [Conditions().line()]
    rows = [r for r in rows if r["case"] not in ("kernel", "conditions")]
    head = format_kernel(kernel) + "\n\n" if kernel else ""
    return head + _format_rest(rows) + "\n" + lines[0]


def _format_rest(rows: list[dict[str, Any]]) -> str:
    lines = [
        "session: medians of interleaved rounds, wall time (the session as run_session times "
        "it: start-up and the last flush included) and CPU time of the process",
        f"{'case':<8} {'backend':<9} {'sync':<7} {'orders':>7} {'seconds':>8} "
        f"{'orders/s':>10} {'vs off':>7} {'CPU s':>7} {'CPU vs off':>10} {'us/order':>9}",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else ""
        cpu = f"{r['cpu_seconds']:.3f}" if "cpu_seconds" in r else ""
        cpu_ratio = f"{r['cpu_ratio']:.2f}x" if "cpu_ratio" in r else ""
        us = f"{r['us_per_order']:.0f}" if "us_per_order" in r else ""
        lines.append(
            f"{r['case']:<8} {r['backend']:<9} {r['sync']:<7} {r['orders']:>7} "
            f"{r['seconds']:>8.3f} {r['orders_per_s']:>10.1f} {ratio:>7} {cpu:>7} "
            f"{cpu_ratio:>10} {us:>9}"
        )
    return "\n".join(lines)


def _print(rows: list[dict[str, Any]], out: Callable[[str], Any] = print) -> None:
    out(format_table(rows))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, help="kernel rounds (default 3; 1 with --quick)")
    p.add_argument("--kernel-child", choices=KERNEL_MODES, help=argparse.SUPPRESS)
    p.add_argument("--ticks", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.kernel_child:
        result = kernel_child(args.kernel_child, args.ticks or 200_000)
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    _print(run(args.quick, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
