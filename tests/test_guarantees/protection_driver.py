"""The bot under test in ``test_protection.py``'s SIGKILL test: a kernel with
the journal service against a durable venue without stop orders, run as a
subprocess.

    python -m tests.test_guarantees.protection_driver DIR enter
    python -m tests.test_guarantees.protection_driver DIR resume

``enter`` buys with a stop at 49,000 on the second tick, waits until the
journal has committed the protective levels, and SIGKILLs itself mid-feed.
``resume`` starts afresh on the same venue and journal, with a strategy that
never trades and a feed whose bid falls through the stop, and prints what
happened as JSON: only a restored kernel-held stop can close the position.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from bot4.journal import open_store
from bot4.model import MarketData, Signal
from tests.test_guarantees.test_protection import BTC, NoStops, Run, Scripted, entry, flat, qty


class KillsItself(Scripted):
    """Enters on tick 2; on tick 5 waits for the journal, then SIGKILLs."""

    def __init__(self, journal: str) -> None:
        super().__init__({2: [entry()]})
        self.journal = journal

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        signals = await super().on_market_data(tick)
        if self.seen == 5:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                store = open_store(self.journal, migrate=False)
                try:
                    if f"protection:{BTC}" in store.state():
                        break
                finally:
                    store.close()
                await trio.sleep(0.02)
            os.kill(os.getpid(), signal.SIGKILL)
        return signals


def main(argv: list[str]) -> int:
    folder, phase = Path(argv[0]), argv[1]
    venue, journal = str(folder / "venue.sqlite"), str(folder / "journal.sqlite")
    if phase == "enter":
        ticks: Iterator[MarketData] = iter(flat(["50000"] * 20))
        run = Run(NoStops(ticks, state=venue), {})
        run.strategy = KillsItself(journal)
    else:
        later = flat(["50000", "49500", "48900", "50000"], start=30)
        run = Run(NoStops(iter(later), state=venue), {})
    kernel, service = trio.run(run.go_journaled, journal, folder / phase)
    report = service.report
    print(
        json.dumps(
            {
                "protected": report.protected if report is not None else None,
                "positions": report.positions if report is not None else None,
                "closes": [
                    {
                        "qty": str(s.order.qty),
                        "bid": str(run.tick_before(s.order.client_order_id).bid),
                    }
                    for s in run.placed("hs")
                ],
                "qty": str(qty(run)),
                "ticks": kernel.stats.ticks,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
