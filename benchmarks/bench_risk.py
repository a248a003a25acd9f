"""Risk policy benchmark: pre-trade decision latency and decisions per second
for the default policy (rules/, >= 10 order rules) with the correlation pack.

    .venv/bin/python benchmarks/bench_risk.py [--quick]

Scenarios:

* ``pre-trade, approve``   one order that passes every rule (the common case);
* ``pre-trade, mixed``     a rotation of orders: approved, too large, no stop
                           loss, 25x (above the leverage limit and too close
                           to liquidation), too much gross exposure
                           (rejections also render the reason and the size);
* ``tick, position held``  the liquidation ladder and drawdown on a price
                           update of a held symbol;
* ``tick, no position``    a price update of a symbol not held (must be cheap);
* ``tick, held, band``      as the kernel asks (``on_tracked_tick`` with a
                           PortfolioTracker): the price moves inside the
                           symbol's price band (bot4.risk.band), no engine.

Latency is ``perf_counter_ns`` around one call of ``check_order`` /
``on_market_data``, which includes building the facts from bot4's types,
the pack's facts, the durable-rules evaluation and the Decision object. GC is
paused while measuring. Event time advances 61 s per order so the rate-limit
rule does not turn the approve scenario into rejections.

NautilusTrader's pre-trade risk checks take about 20-35 us per order (its
documentation's figure); the target here is p99 <= 20 us. Both are printed
beside our figures.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot4.model import Fill, MarketData, Order, Portfolio, Position
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path

NAUTILUS_US = (20.0, 35.0)
TARGET_P99_US = 20.0
TS = datetime(2024, 1, 1, tzinfo=UTC)
SEC = 1_000_000_000


def _percentile(samples: list[int], q: float) -> int:
    return samples[min(len(samples) - 1, int(q * len(samples)))]


def _market(symbol: str, last: int) -> MarketData:
    p = Decimal(last)
    return MarketData(symbol, "bench", p - 1, p + 1, p, Decimal(1), TS)


def _order(qty: str, stop: int | None = 49000, leverage: int = 1, cid: str = "b") -> Order:
    return Order(
        client_order_id=cid,
        symbol="BTC-USDT",
        side="buy",
        type="limit",
        qty=Decimal(qty),
        price=Decimal(50000),
        stop_loss=None if stop is None else Decimal(stop),
        leverage=Decimal(leverage),
    )


def _packs() -> list[Any]:
    try:
        from bot4_correlation import CorrelationPack
    except ImportError as exc:
        raise SystemExit(
            "the default policy needs the correlation pack: "
            "pip install -e plugins/risk_rules/correlation"
        ) from exc
    return [CorrelationPack()]


def _measure(name: str, n: int, call: Callable[[int], object]) -> dict[str, Any]:
    for i in range(min(2000, n)):  # warm up caches and the engine session
        call(i)
    samples: list[int] = []
    record = samples.append
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for i in range(n):
            t0 = clock()
            call(i)
            record(clock() - t0)
        elapsed = clock() - start
    finally:
        gc.enable()
    samples.sort()
    p50 = _percentile(samples, 0.50) / 1000
    p99 = _percentile(samples, 0.99) / 1000
    return {
        "scenario": name,
        "calls": n,
        "p50_us": round(p50, 2),
        "p99_us": round(p99, 2),
        "decisions_per_s": round(n / (elapsed / 1e9)),
        "nautilus_us": f"{NAUTILUS_US[0]:g}-{NAUTILUS_US[1]:g}",
        "target_p99_us": TARGET_P99_US,
        # > 1 means slower than the target.
        "p99_vs_target": round(p99 / TARGET_P99_US, 2),
    }


def run(quick: bool, rules: Path | None = None) -> list[dict[str, Any]]:
    """Run every scenario; one dict of figures per scenario."""
    n = 5_000 if quick else 50_000
    policy = RiskPolicy.load([rules or default_rules_path()], _packs())
    try:
        order_rules = len(policy.compiled.stages["order"].rules)
        flat = Portfolio(cash=Decimal(100000), peak_equity=Decimal(100000))
        market = _market("BTC-USDT", 50000)
        good = _order("0.03")

        def approve(i: int) -> object:
            return policy.check_order(good, flat, market, i * 61 * SEC)

        rotation = [
            good,
            _order("0.06"),
            _order("0.01", stop=None),
            _order("0.01", leverage=25),
            good,
        ]
        eth = Position("ETH-USDT", Decimal(100), Decimal(2990))
        levered = Portfolio(
            cash=Decimal(100000),
            positions={"ETH-USDT": eth},
            marks={"ETH-USDT": Decimal(2990)},
            peak_equity=Decimal(100000),
        )
        books = [flat, flat, flat, flat, levered]

        def mixed(i: int) -> object:
            k = i % len(rotation)
            return policy.check_order(rotation[k], books[k], market, i * 61 * SEC)

        held = Position("BTC-USDT", Decimal("0.01"), Decimal(50000), leverage=Decimal(10))
        book = Portfolio(
            cash=Decimal(100000),
            positions={"BTC-USDT": held},
            marks={"BTC-USDT": Decimal(51000)},
            peak_equity=Decimal(100000),
        )
        tick_held = _market("BTC-USDT", 51000)
        tick_other = _market("SOL-USDT", 150)
        tracker = PortfolioTracker(Decimal(100000))
        tracker.apply(
            Fill("f", "c", "BTC-USDT", "buy", Decimal("0.01"), Decimal(50000), Decimal(0), TS),
            leverage=Decimal(10),
        )
        banded = [_market("BTC-USDT", 51000 + (k % 7) - 3) for k in range(64)]

        def band(i: int) -> object:
            tick = banded[i % 64]
            tracker.mark(tick.symbol, tick.last)  # as the kernel does
            return policy.on_tracked_tick(tick, tracker, i)

        results = [
            _measure("pre-trade, approve", n, approve),
            _measure("pre-trade, mixed", n, mixed),
            _measure("tick, position held", n, lambda i: policy.on_market_data(tick_held, book, i)),
            _measure("tick, no position", n, lambda i: policy.on_market_data(tick_other, book, i)),
            _measure("tick, held, band", n, band),
        ]
        for r in results:
            r["order_rules"] = order_rules
        return results
    finally:
        policy.close()


def format_table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<22} {'calls':>7} {'p50 us':>8} {'p99 us':>8} {'decisions/s':>12} "
        f"{'Nautilus us':>12} {'p99/target':>10}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['scenario']:<22} {r['calls']:>7} {r['p50_us']:>8.2f} {r['p99_us']:>8.2f} "
            f"{r['decisions_per_s']:>12,} {r['nautilus_us']:>12} {r['p99_vs_target']:>10.2f}"
        )
    if results:
        lines.append(
            f"default policy: {results[0]['order_rules']} order rules; target p99 <= "
            f"{TARGET_P99_US:g} us; NautilusTrader pre-trade checks ~{NAUTILUS_US[0]:g}-"
            f"{NAUTILUS_US[1]:g} us per order"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = parser.parse_args()
    print(format_table(run(args.quick)))


if __name__ == "__main__":
    main()
