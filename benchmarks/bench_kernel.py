"""The order path, on the same workload as our NautilusTrader measurement.

1,000,000 synthetic trade ticks (a random walk of +/-0.2 around 50,000, 100 ms
apart) through the kernel with the paper exchange and the default policy:

  (a) a strategy that does nothing;
  (b) a market order every 10th tick, 0.01 BTC, sides chosen so the net
      position moves between +1 and +2 lots and never goes flat; each order
      through the full default risk policy, a paper fill and the portfolio;
  (c) as (b), every 100th order oversized so the size rule rejects it;
  flat: as (b) but the position goes flat every other fill, so closed
      positions pile up: the cost per order must not grow with them.

Each case runs in a fresh process (peak RSS is that process's high-water mark).
Only the run is timed: the price path is generated first (8 bytes a tick in
an array), and the MarketData objects are built as the feed is consumed, as a
data loader would. The default policy's order-rate rule (10 orders a minute)
would refuse 5 of 6 orders at one order a second, so the benchmark raises that
one threshold in a copy of the rules; every other rule is the default.

    python benchmarks/bench_kernel.py [--quick] [--ticks N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

# NautilusTrader 1.231 on this kind of machine (the figures).
ANCHOR = {
    "a": {"ticks_per_s": 163_000, "rss_mib": 579},
    "b": {"orders_per_s": 2_308, "rss_mib": 954, "kib_per_order": 4.3},
}
TARGET = {"a_ticks_per_s": 500_000, "b_orders_per_s": 23_000, "rss_mib": 150}
LOT = Decimal("0.01")
CASES = ("a", "b", "c", "flat")


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * (resource.getpagesize() // 1024)


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM belongs to the address space, which exec
    replaces; ``ru_maxrss`` is kept across exec on Linux and so reports the
    parent's size at fork when the parent was bigger (benchmarks/run.py is)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _prices(n: int, seed: int = 7) -> array[float]:
    rng = random.Random(seed)
    out = array("d", bytes(8 * n))
    p = 50_000.0
    for i in range(n):
        p += 0.2 if rng.random() < 0.5 else -0.2
        # Keep the walk around 50,000 so every case sees the same price range.
        if abs(p - 50_000.0) > 500:
            p -= 0.4 if p > 50_000.0 else -0.4
        out[i] = p
    return out


def _feed(prices: array[float]) -> Iterator[Any]:
    from bot4.model import MarketData

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    step = timedelta(milliseconds=100)
    half = Decimal("0.05")
    vol = Decimal(10)
    for i, p in enumerate(prices):
        last = Decimal(f"{p:.1f}")
        yield MarketData("BTC-USDT", "paper", last - half, last + half, last, vol, t0 + step * i)


def _strategy(case: str) -> Any:
    from bot4.contracts import Strategy
    from bot4.model import MarketData, Side, Signal

    class Bench(Strategy):
        name = "bench"

        def __init__(self) -> None:
            self.n = 0
            self.orders = 0
            self.lots = 0  # net position in lots, as the strategy intends it

        async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
            self.n += 1
            if case == "a" or self.n % 10:
                return ()
            self.orders += 1
            if case == "flat":
                side = Side.BUY if self.lots == 0 else Side.SELL
            else:
                # 0 -> 1 -> 2 -> 1 -> 2 ...: never flat after the first order.
                side = Side.BUY if self.lots < 2 else Side.SELL
            size = LOT
            if case == "c" and self.orders % 100 == 0:
                size = Decimal(5)  # 250,000 of notional: far over 2% of equity
            else:
                self.lots += 1 if side is Side.BUY else -1
            stop = tick.last * (Decimal("0.95") if side is Side.BUY else Decimal("1.05"))
            return (
                Signal(
                    symbol="BTC-USDT",
                    side=side,
                    confidence=0.5,
                    size=size,
                    entry=tick.last,
                    stop_loss=stop.quantize(Decimal("0.1")),
                    strategy="bench",
                ),
            )

    return Bench()


def _bench_rules(tmp: Path) -> Path:
    from bot4.risk import default_rules_path

    rules = tmp / "rules"
    shutil.copytree(default_rules_path(), rules, ignore=shutil.ignore_patterns("tests"))
    rate = rules / "40-rate-limit.yaml"
    text = rate.read_text()
    assert "max_orders_per_minute: 10" in text, "the rate-limit rule changed: update the benchmark"
    rate.write_text(text.replace("max_orders_per_minute: 10", "max_orders_per_minute: 100000"))
    return rules


def child(case: str, ticks: int) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its figures."""
    import bot4_correlation
    import bot4_paper
    import trio

    from bot4.bus import open_bus
    from bot4.gate import RiskGate
    from bot4.kernel import Kernel
    from bot4.portfolio import PortfolioTracker
    from bot4.risk import RiskPolicy

    prices = _prices(ticks)
    # Kept for the whole run: the kernel polls the rule files for edits.
    tmp = tempfile.TemporaryDirectory()
    policy = RiskPolicy.load([_bench_rules(Path(tmp.name))], [bot4_correlation.factory({})])
    balance = "1000000"
    exchange = bot4_paper.create({"feed": _feed(prices), "balance": balance, "slippage_bps": "0"})
    strategy = _strategy(case)
    rss: list[tuple[int, int]] = []  # (orders so far, RSS KiB)
    halves: list[float] = []
    started = [0.0]

    async def sample(tick: Any) -> None:
        if strategy.n % (ticks // 8) == 0:
            rss.append((strategy.orders, _rss_kib()))
        if strategy.n == ticks // 2:
            halves.append(time.perf_counter() - started[0])

    async def main() -> Any:
        async with open_bus() as bus:
            kernel = Kernel(
                exchange=exchange,
                strategies=[strategy],
                gate=RiskGate(policy),
                policy=policy,
                tracker=PortfolioTracker(Decimal(balance)),
                bus=bus,
                packs=[],
                on_tick=sample,
                resize_rejected=False,
            )
            started[0] = time.perf_counter()
            stats = await kernel.run(["BTC-USDT"])
            return stats, time.perf_counter() - started[0]

    stats, seconds = trio.run(main)
    tmp.cleanup()
    peak_kib = _peak_rss_kib()
    # Growth per order between the first and last quarter of the run (after
    # warm-up), from the process's current RSS.
    growth = 0.0
    if len(rss) >= 3 and rss[-1][0] > rss[1][0]:
        growth = (rss[-1][1] - rss[1][1]) / (rss[-1][0] - rss[1][0])
    first, second = halves[0], seconds - halves[0]
    return {
        "case": case,
        "ticks": stats.ticks,
        "orders": stats.approved + stats.rejected,
        "approved": stats.approved,
        "rejected": stats.rejected,
        "rejections": dict(stats.rejections_by_rule),
        "fills": stats.fills,
        "seconds": seconds,
        "ticks_per_s": stats.ticks / seconds,
        "orders_per_s": (stats.approved + stats.rejected) / seconds,
        "peak_rss_mib": peak_kib / 1024,
        "kib_per_order": growth,
        "first_half_s": first,
        "second_half_s": second,
    }


def run(quick: bool = False, ticks: int | None = None) -> list[dict[str, Any]]:
    n = ticks or (100_000 if quick else 1_000_000)
    rows = []
    for case in CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, "--ticks", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    by = {r["case"]: r for r in rows}
    lines = [
        f"bot4 kernel benchmark: {rows[0]['ticks']:,} ticks per case "
        "(paper exchange, default policy, fresh process per case)",
        f"{'case':<6}{'ticks/s':>12}{'orders/s':>11}{'approved':>10}{'rejected':>10}"
        f"{'peak RSS MiB':>14}{'KiB/order':>11}{'2nd/1st half':>14}",
    ]
    for r in rows:
        ratio = r["second_half_s"] / r["first_half_s"] if r["first_half_s"] else float("nan")
        lines.append(
            f"{r['case']:<6}{r['ticks_per_s']:>12,.0f}{r['orders_per_s']:>11,.0f}"
            f"{r['approved']:>10,}{r['rejected']:>10,}{r['peak_rss_mib']:>14.1f}"
            f"{r['kib_per_order']:>11.2f}{ratio:>14.2f}"
        )
    a, b = by["a"], by["b"]
    b_target = b["orders_per_s"] / TARGET["b_orders_per_s"]
    lines += [
        "",
        "against NautilusTrader 1.231 (same workload, this kind of machine) and our targets:",
        f"  (a) ticks/s   {a['ticks_per_s']:>10,.0f}  NT {ANCHOR['a']['ticks_per_s']:,} "
        f"(x{a['ticks_per_s'] / ANCHOR['a']['ticks_per_s']:.2f})  "
        f"target {TARGET['a_ticks_per_s']:,} (x{a['ticks_per_s'] / TARGET['a_ticks_per_s']:.2f})",
        f"  (b) orders/s  {b['orders_per_s']:>10,.0f}  NT {ANCHOR['b']['orders_per_s']:,} "
        f"(x{b['orders_per_s'] / ANCHOR['b']['orders_per_s']:.2f})  "
        f"target {TARGET['b_orders_per_s']:,} (x{b_target:.2f})",
        f"  (a) peak RSS  {a['peak_rss_mib']:>8.1f} MiB  NT {ANCHOR['a']['rss_mib']} MiB "
        f"(x{a['peak_rss_mib'] / ANCHOR['a']['rss_mib']:.2f})  target <= {TARGET['rss_mib']} MiB",
        f"  (b) peak RSS  {b['peak_rss_mib']:>8.1f} MiB  NT {ANCHOR['b']['rss_mib']} MiB "
        f"(x{b['peak_rss_mib'] / ANCHOR['b']['rss_mib']:.2f})  target <= {TARGET['rss_mib']} MiB",
        f"  (b) RSS growth {b['kib_per_order']:>7.2f} KiB/order  NT {ANCHOR['b']['kib_per_order']} "
        "KiB/order  target: flat",
        f"  (c) rejected by rule: {by['c']['rejections']}",
        "  flat: second half / first half time ~1.0 means the cost per order does not grow "
        "with closed positions",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100,000 ticks per case")
    parser.add_argument("--ticks", type=int)
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.ticks or 1_000_000)))
        return 0
    print(format_table(run(args.quick, args.ticks)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
