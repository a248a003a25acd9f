"""The portfolio's own costs: a mark of a held symbol, and a fill.

A mark must cost the same whatever the number of open positions (equity is
maintained per mark in fixed point, never re-summed over the book), so the
mark is timed with 1, 10 and 100 positions open; a fill is timed as an open
and a close of 0.01 at a price with one decimal. CPU time
(``time.process_time``) beside wall time, best of ``--rounds``.

    python benchmarks/bench_portfolio.py [--rounds R] [--marks N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from bot4.model import Fill
from bot4.portfolio import PortfolioTracker

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _fill(n: int, symbol: str, side: str, price: str) -> Fill:
    return Fill(
        fill_id=f"f{n}",
        client_order_id=f"o{n}",
        symbol=symbol,
        side=side,
        qty=Decimal("0.01"),
        price=Decimal(price),
        fee=Decimal("0.20004"),
        timestamp=T0,
    )


def _best(run: Callable[[], None], rounds: int) -> tuple[float, float]:
    """(CPU s, wall s) of the fastest round."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        best = min(best, (time.process_time() - cpu, time.perf_counter() - wall))
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--marks", type=int, default=20_000)
    args = parser.parse_args(argv)
    prices = [Decimal(50_000) + Decimal(i % 2000) / 10 for i in range(args.marks)]
    for positions in (1, 10, 100):
        tracker = PortfolioTracker(Decimal(10**7))
        for i in range(positions):
            tracker.apply(_fill(i, f"S{i}-USDT", "buy", "50000.1"))

        def marks(t: PortfolioTracker = tracker) -> None:
            for price in prices:
                t.mark("S0-USDT", price)

        cpu, wall = _best(marks, args.rounds)
        n = len(prices)
        print(
            f"mark, {positions:>3} positions open: {cpu / n * 1e6:6.2f} us CPU "
            f"({wall / n * 1e6:6.2f} us wall) per mark"
        )
    tracker = PortfolioTracker(Decimal(10**7))
    buy, sell = _fill(1, "S0-USDT", "buy", "50000.1"), _fill(2, "S0-USDT", "sell", "50000.3")

    def fills(t: PortfolioTracker = tracker) -> None:
        for _ in range(args.marks // 2):
            t.apply(buy, leverage=Decimal(2), stop_loss=Decimal(49_000))
            t.apply(sell)

    cpu, wall = _best(fills, args.rounds)
    n = args.marks // 2 * 2
    print(f"fill (open, close):      {cpu / n * 1e6:6.2f} us CPU ({wall / n * 1e6:6.2f} us wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
