"""The bot under test in ``test_journal_crash.py``: a real session (kernel,
default rules with the stop-out breaker out of reach, sma_cross, the journal
service) against the durable paper exchange, run as a subprocess that the
test kills with SIGKILL.

    python tests/journal_crash_driver.py --dir D --data F --journal TARGET
        [--speed S] [--kill-at-place N --kill-when before|after] [--ticks 0]

``--kill-at-place N`` makes the process SIGKILL itself at the N-th
``place_order`` of this run: ``before`` (the intent is journaled, the
exchange never hears of the order) or ``after`` (the exchange accepted it,
the kernel never saw the answer): the two windows a timer rarely hits.
``--ticks 0`` runs recovery only (an empty feed), which the test does last.

The feed skips the ticks the durable venue has already taken by comparing
the timestamp text before parsing, so a restart late in the file is fast.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import signal
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import trio
from bot4_paper.exchange import PaperExchange

from bot4.model import MarketData, Order, OrderState
from bot4.risk import default_rules_path
from bot4.session import SessionConfig, StrategyConfig, run_session

BALANCE = "100000"


def resume_point(state: Path) -> str | None:
    if not state.exists():
        return None
    conn = sqlite3.connect(state)
    try:
        row = conn.execute("SELECT value FROM paper_meta WHERE key = 'last_tick'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    if row is None or json.loads(row[0]) is None:
        return None
    return str(datetime.fromisoformat(json.loads(row[0])).strftime("%Y-%m-%dT%H:%M:%SZ"))


def feed(path: Path, after: str | None, limit: int | None) -> Iterator[MarketData]:
    """The sample's CSV (timestamp,symbol,bid,ask,last,volume), fixed format."""
    with gzip.open(path, "rt") as f:
        next(f)
        n = 0
        for line in f:
            if after is not None and line[:20] <= after:
                continue
            if limit is not None and n >= limit:
                return
            ts, symbol, bid, ask, last, volume = line.rstrip("\n").split(",")
            n += 1
            yield MarketData(
                symbol,
                "paper",
                Decimal(bid),
                Decimal(ask),
                Decimal(last),
                Decimal(volume),
                datetime.fromisoformat(ts.replace("Z", "+00:00")),
            )


def crash_rules(folder: Path) -> Path:
    """The default rules with the stop-out breaker out of reach. The crash
    test is about the order path; with the stop-outs of earlier runs now
    counted after a restart (bot4.journal.riskstate), the default three per
    hour would trip the breaker for good after a few restarts, and a bot that
    places no more orders cannot be killed around place_order."""
    folder.mkdir(exist_ok=True)
    for source in sorted(default_rules_path().glob("*.yaml")):
        text = source.read_text(encoding="utf-8")
        if source.name == "10-breaker.yaml":
            text, n = re.subn(r"max_stop_outs: 3\b", "max_stop_outs: 1000000", text)
            assert n == 1, "10-breaker.yaml no longer sets max_stop_outs: 3"
        (folder / source.name).write_text(text, encoding="utf-8")
    return folder


def arm(kill_at: int, when: str) -> None:
    original = PaperExchange.place_order
    count = {"n": 0}

    async def place_order(self: PaperExchange, order: Order) -> OrderState:
        count["n"] += 1
        if count["n"] == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        state = await original(self, order)
        if count["n"] == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return state

    PaperExchange.place_order = place_order  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--journal", required=True)
    p.add_argument("--schema")
    p.add_argument("--speed", type=float, default=0.0)
    p.add_argument("--ticks", type=int)
    p.add_argument("--kill-at-place", type=int, default=0)
    p.add_argument("--kill-when", choices=["before", "after"], default="before")
    args = p.parse_args(argv)
    state = args.dir / "paper.sqlite"
    if args.kill_at_place:
        arm(args.kill_at_place, args.kill_when)
    config = SessionConfig(
        exchange="paper",
        exchange_params={"state": str(state), "balance": BALANCE},
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
        rules=(str(crash_rules(args.dir / "rules")),),
        speed=args.speed,
        out=str(args.dir / "out"),
        record=False,
        journal=args.journal,
    )
    from bot4.journal.service import JournalService

    service = JournalService(args.journal, schema=args.schema)
    ticks = feed(args.data, resume_point(state), args.ticks)
    result = trio.run(lambda: run_session(config, feed=ticks, services=[service]))
    report = service.report.as_dict() if service.report is not None else {}
    print(
        json.dumps(
            {"ticks": result.stats.ticks, "approved": result.stats.approved, "recovery": report}
        )
    )
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
