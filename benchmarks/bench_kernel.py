"""The order path, on the workload of NautilusTrader's anchor benchmark.

The ticks are those of ``../shared/bench/nautilus_bench.py``: one symbol,
100 ms apart from 2024-01-01, a random walk from 50,000.0 in steps of
-0.2..+0.2 (``random.Random(12345).choice((-2, -1, 0, 1, 2))`` tenths). Both
sides build every tick object before timing; the timed region is the run
alone (``kernel.run`` here, ``engine.run`` there), in CPU time
(``time.process_time``) and wall time. Cases:

  noop      1,000,000 ticks, a strategy that does nothing;
  orders    200,000 ticks, a market order every 10th tick, 0.01 BTC, sides
            chosen so the net position moves between +1 and +2 lots and never
            goes flat; each order through the full default risk policy (with
            the correlation pack), a paper fill and the portfolio; no journal;
  oversized as ``orders``, every 100th order 5 BTC so the size rule rejects it;
  flat      as ``orders`` on 1,000,000 ticks, but the position goes flat every
            other fill, so closed positions pile up: the cost per order must not
            grow with them (second half / first half of the run's CPU time ~1.0,
            RSS growth per order ~0).
  perps     as ``orders`` on a linear perpetual, ``BTC-USDT-PERP``: the orders
            at 3x (the default policy's most), the kernel setting isolated
            margin and the leverage before the first entry, the paper venue's
            margin model watching the position's liquidation price on every
            tick, funding at 0.01% per 8 h, and the liquidation ladder
            evaluated for the open position on every tick; its cost per order
            is compared with ``orders`` (issue 14: within 1.2x).

Each case runs in a fresh process (peak RSS is that process's high-water
mark, tick list included on both sides). The anchor's trade ticks carry a
size of 0.001-0.05 BTC; the paper venue takes a tick's volume as the size at
the best price and would fill a 0.01 order in parts, so the bot4 ticks carry
10 BTC: one fill per order on both sides, as NautilusTrader's L1 book gives.
The default order-rate rule (10 orders a minute) would refuse 5 of 6 orders
at one order a second of simulated time (NautilusTrader's default allows 100
a second), so the benchmark raises that one threshold in a copy of the rules;
every other rule is the default.

    python benchmarks/bench_kernel.py [--quick] [--ticks N] [--rounds R]
                                      [--vs-nautilus PYTHON [--nautilus-script PATH]]

With ``--vs-nautilus``, the anchor runs under PYTHON interleaved with bot4
(bot4 noop, NT noop, bot4 orders, NT orders, NT bypass, then again; at least
3 rounds) and the ratios printed come from this run alone.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    RESULT_PREFIX,
    Conditions,
    HarnessError,
    Job,
    Measured,
    Spread,
    UsageError,
    anchor_script,
    check_nautilus,
    collect,
    interleave,
    python_version_of,
    resolve_python,
    run_child,
)

LOT = Decimal("0.01")
CASES = ("noop", "orders", "oversized", "flat", "perps")
PERP = "BTC-USDT-PERP"
PERP_LEVERAGE = Decimal(3)
EVERY = 10
SEED = 12345  # the anchor's
FULL = {"noop": 1_000_000, "orders": 200_000}
QUICK = {"noop": 100_000, "orders": 20_000}
MIN_ROUNDS_VS = 3
# NautilusTrader's scenarios beside ours: (ours, theirs); bypass is the
# anchor with its risk engine off, for reference.
PAIRS = (("noop", "noop"), ("orders", "orders"), (None, "bypass"))


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * (resource.getpagesize() // 1024)


def _peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM belongs to the address space that
    exec created; ``ru_maxrss`` would include the parent's size at fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def price_path(n: int, seed: int = SEED) -> list[int]:
    """The anchor's prices, in tenths: 500,000 (50,000.0) plus a walk of
    ``rng.choice((-2, -1, 0, 1, 2))`` per tick, drawn in the same order."""
    rng = random.Random(seed)
    steps = (-2, -1, 0, 1, 2)
    px = 500_000
    out = []
    for _ in range(n):
        px += rng.choice(steps)
        out.append(px)
    return out


def build_ticks(n: int, symbol: str = "BTC-USDT") -> list[Any]:
    """Every MarketData of the run, built before timing as the anchor builds
    its TradeTicks: last = the walk's price, bid/ask 0.05 either side. Built
    the way the loader's columnar path builds them: the columns (int64 ns,
    fixed-point prices) checked once with numpy, then trusted ticks carrying
    their ``ts_ns`` and ``last_float`` (the anchor's ticks carry int ns and a
    fixed-point price it reads as a double without parsing text)."""
    import numpy as np

    from bot4.data.columns import exact_floats
    from bot4.model import trusted_market_data

    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    t0_ns = int(t0.timestamp()) * 1_000_000_000
    step = timedelta(milliseconds=100)
    tenths = np.array(price_path(n), dtype=np.int64)
    bids, asks = tenths * 10 - 5, tenths * 10 + 5  # hundredths
    ts_ns = t0_ns + np.arange(n, dtype=np.int64) * 100_000_000
    if n and not ((bids > 0).all() and (bids <= asks).all() and (np.diff(ts_ns) >= 0).all()):
        raise AssertionError("the price walk left the valid range")
    volume = Decimal(10)
    return list(
        map(
            trusted_market_data,
            repeat(symbol, n),
            repeat("paper", n),
            [Decimal(b).scaleb(-2) for b in bids.tolist()],
            [Decimal(a).scaleb(-2) for a in asks.tolist()],
            [Decimal(px).scaleb(-1) for px in tenths.tolist()],
            repeat(volume, n),
            [t0 + step * i for i in range(n)],
            ts_ns.tolist(),
            repeat(None, n),
            repeat(None, n),
            exact_floats(tenths, 1) or repeat(None, n),
        )
    )


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
            return self.on_market_data_sync(tick)

        def on_market_data_sync(self, tick: MarketData) -> Sequence[Signal]:
            # A plain call per tick, as the anchor's on_quote_tick handler is.
            if case == "noop":
                return ()
            self.n += 1
            if self.n % EVERY:
                return ()
            self.orders += 1
            if case == "flat":
                side = Side.BUY if self.lots == 0 else Side.SELL
            else:
                # 0 -> 1 -> 2 -> 1 -> 2 ...: never flat after the first order.
                side = Side.BUY if self.lots < 2 else Side.SELL
            size = LOT
            if case == "oversized" and self.orders % 100 == 0:
                size = Decimal(5)  # 250,000 of notional: far over 2% of equity
            else:
                self.lots += 1 if side is Side.BUY else -1
            stop = tick.last * (Decimal("0.95") if side is Side.BUY else Decimal("1.05"))
            return (
                Signal(
                    symbol=tick.symbol,
                    side=side,
                    confidence=0.5,
                    size=size,
                    entry=tick.last,
                    stop_loss=stop.quantize(Decimal("0.1")),
                    strategy="bench",
                    leverage=PERP_LEVERAGE if case == "perps" else Decimal(1),
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


def child(case: str, ticks: int, profile: Path | None = None) -> dict[str, Any]:
    """Run one case in this (fresh) process and return its figures; with
    ``profile``, under cProfile, writing the top 25 functions by own time there."""
    import bot4_correlation
    import bot4_paper
    import trio

    from bot4.bus import open_bus
    from bot4.gate import RiskGate
    from bot4.kernel import Kernel
    from bot4.portfolio import PortfolioTracker
    from bot4.risk import RiskPolicy

    t = time.perf_counter()
    symbol = PERP if case == "perps" else "BTC-USDT"
    feed = build_ticks(ticks, symbol)
    gen_s = time.perf_counter() - t
    # Kept for the whole run: the kernel polls the rule files for edits.
    tmp = tempfile.TemporaryDirectory()
    packs = [bot4_correlation.factory({})]
    policy = RiskPolicy.load([_bench_rules(Path(tmp.name))], packs)
    balance = "1000000"
    config: dict[str, Any] = {"feed": feed, "balance": balance, "slippage_bps": "0"}
    if case == "perps":
        config["funding_rate"] = "0.0001"
        config["markets"] = {
            PERP: {"price_increment": "0.01", "qty_increment": "0.0001", "type": "perp"}
        }
    exchange = bot4_paper.create(config)
    del feed  # the exchange holds the list, as the anchor's engine holds its data
    strategy = _strategy(case)
    # Only `flat` samples during the run (an extra call per tick): the RSS
    # growth per order and the time of each half.
    rss: list[tuple[int, int]] = []  # (orders so far, RSS KiB)
    halves: list[float] = []  # CPU seconds at half way: wall time here is the neighbours'
    started = [0.0, 0.0]  # wall, CPU

    async def sample(tick: Any) -> None:
        if strategy.n % (ticks // 8) == 0:
            rss.append((strategy.orders, _rss_kib()))
        if strategy.n == ticks // 2:
            halves.append(time.process_time() - started[1])

    async def main() -> Any:
        async with open_bus() as bus:
            kernel = Kernel(
                exchange=exchange,
                strategies=[strategy],
                gate=RiskGate(policy),
                policy=policy,
                tracker=PortfolioTracker(Decimal(balance)),
                bus=bus,
                packs=packs,
                on_tick=sample if case == "flat" else None,
                resize_rejected=False,
            )
            gc.collect()
            started[:] = [time.perf_counter(), time.process_time()]
            if profile is None:
                stats = await kernel.run([symbol])
            else:
                # CPU time, not wall time: on a shared machine a function's
                # wall time is mostly other processes' turns.
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                stats = await kernel.run([symbol])
                profiler.disable()
                _write_profile(profiler, profile, f"{case}, {ticks:,} ticks")
            return stats, time.perf_counter() - started[0], time.process_time() - started[1]

    stats, seconds, cpu_s = trio.run(main)
    tmp.cleanup()
    orders = stats.approved + stats.rejected
    out: dict[str, Any] = {
        "scenario": case,
        "n_ticks": stats.ticks,
        "gen_s": round(gen_s, 3),
        "run_s": round(seconds, 4),
        "run_cpu_s": round(cpu_s, 4),
        "ticks_per_s": stats.ticks / seconds,
        "ticks_per_cpu_s": stats.ticks / cpu_s,
        "submitted": orders,
        "approved": stats.approved,
        "rejected": stats.rejected,
        "deny_reasons": dict(stats.rejections_by_rule),
        "filled": stats.fills,
        "orders_per_s": orders / seconds if case != "noop" else None,
        "orders_per_cpu_s": orders / cpu_s if case != "noop" else None,
        "peak_rss_mib": round(_peak_rss_kib() / 1024, 1),
        "python": sys.version.split()[0],
    }
    if case == "perps":
        # What the venue's margin account ended with: the kernel set it.
        book = exchange.engine.margin
        out["margin"] = {"leverage": str(book.leverage.get(symbol)), "mode": book.mode_of(symbol)}
    if case == "flat":
        # Growth per order between the first and last quarter of the run
        # (after warm-up), from the process's current RSS.
        growth = 0.0
        if len(rss) >= 3 and rss[-1][0] > rss[1][0]:
            growth = (rss[-1][1] - rss[1][1]) / (rss[-1][0] - rss[1][0])
        out["kib_per_order"] = growth
        out["first_half_cpu_s"] = halves[0]
        out["second_half_cpu_s"] = cpu_s - halves[0]
    return out


def _write_profile(profiler: cProfile.Profile, path: Path, title: str) -> None:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(25)
    # Keep the table, not the header about this machine's file names.
    body = text.getvalue()
    body = body[body.index("   ncalls") :] if "   ncalls" in body else body
    total = stats.total_tt  # type: ignore[attr-defined]
    head = f"{title}: {total:.2f} CPU s of own time in all, top 25 by own time"
    path.write_text(f"{head}\n\n{body}")


def _with_cpu_rates(result: dict[str, Any]) -> dict[str, Any]:
    """The anchor reports wall rates only; derive the CPU ones the same way."""
    cpu = result.get("run_cpu_s")
    if cpu:
        result.setdefault("ticks_per_cpu_s", result["n_ticks"] / cpu)
        if result.get("orders_per_s") is not None:
            result.setdefault("orders_per_cpu_s", result["submitted"] / cpu)
    return result


def ticks_for(case: str, quick: bool, ticks: int | None) -> int:
    base = QUICK if quick else FULL
    # `flat` runs as long as the no-op case: enough closed positions to fill
    # the venue's bounded history (10,000) early and then show the cost flat.
    long = case in ("noop", "flat")
    if ticks is None:
        return base["noop"] if long else base["orders"]
    # --ticks sets the no-op run; the order runs keep the anchor's 1:5 ratio.
    return ticks if long else max(ticks // 5, EVERY * 100)


def bot4_job(case: str, n: int) -> Job:
    return Job("bot4", case, [sys.executable, __file__, "--child", case, "--ticks", str(n)])


def nautilus_job(python: str, script: Path, scenario: str, n: int) -> Job:
    argv = [python, str(script), "run", "--scenario", scenario, "--n", str(n)]
    return Job("nautilus", scenario, [*argv, "--every", str(EVERY)])


def plan(
    quick: bool, ticks: int | None, nautilus: tuple[str, Path] | None
) -> tuple[list[Job], list[Job]]:
    """(interleaved jobs, jobs run once after them)."""
    if nautilus is None:
        return [bot4_job(c, ticks_for(c, quick, ticks)) for c in CASES], []
    python, script = nautilus
    jobs: list[Job] = []
    for ours, theirs in PAIRS:
        n = ticks_for(ours or "orders", quick, ticks)
        if ours is not None:
            jobs.append(bot4_job(ours, n))
        jobs.append(nautilus_job(python, script, theirs, n))
    once = [bot4_job(c, ticks_for(c, quick, ticks)) for c in ("oversized", "flat", "perps")]
    return jobs, once


def prepare_anchor(
    vs_nautilus: str, nautilus_script: str | None = None
) -> tuple[str, Path, dict[str, str]]:
    """(interpreter, anchor script, versions), or UsageError naming what is
    missing: checked before any benchmark runs."""
    python = resolve_python(vs_nautilus)
    script = anchor_script(nautilus_script)
    versions = {"nautilus_trader": check_nautilus(python), "NT Python": python_version_of(python)}
    return python, script, versions


def run(
    quick: bool = False,
    ticks: int | None = None,
    rounds: int | None = None,
    vs_nautilus: str | None = None,
    nautilus_script: str | None = None,
) -> dict[str, Any]:
    """Measure; raises HarnessError (one line) when the anchor cannot run."""
    conditions = Conditions()
    versions: dict[str, str] = {"bot4 Python": python_version_of(sys.executable)}
    nautilus = None
    if vs_nautilus is not None:
        python, script, theirs = prepare_anchor(vs_nautilus, nautilus_script)
        versions.update(theirs)
        nautilus = (python, script)
        rounds = max(rounds or MIN_ROUNDS_VS, MIN_ROUNDS_VS)
    jobs, once = plan(quick, ticks, nautilus)

    def show(m: Measured) -> None:
        r = m.result
        print(
            f"  round {m.round + 1} {m.job.side:<8} {m.job.scenario:<9} "
            f"run {r['run_s']:.2f} s wall, {r['run_cpu_s']:.2f} s CPU; "
            f"peak RSS {r['child_peak_rss_mib']:.0f} MiB",
            file=sys.stderr,
            flush=True,
        )

    runner = lambda argv: _with_cpu_rates(run_child(argv))  # noqa: E731
    done = interleave(jobs, rounds or 1, runner, show)
    done += interleave(once, 1, runner, show)
    return {"measured": done, "conditions": conditions.line(), "versions": versions}


def _fmt(s: Spread, unit: str = "") -> str:
    return f"{s.median:,.0f}{unit} (+/-{s.pct:.0f}%)"


def summarize(done: Sequence[Measured]) -> list[dict[str, Any]]:
    """One row per (side, scenario): medians and spreads over the rounds."""
    rows = []
    seen: list[tuple[str, str]] = []
    for m in done:
        key = (m.job.side, m.job.scenario)
        if key not in seen:
            seen.append(key)
    for side, scenario in seen:
        row: dict[str, Any] = {"side": side, "scenario": scenario}
        for k in (
            "ticks_per_s",
            "ticks_per_cpu_s",
            "orders_per_s",
            "orders_per_cpu_s",
            "run_s",
            "run_cpu_s",
            "child_peak_rss_mib",
        ):
            values = collect(done, side, scenario, k)
            row[k] = Spread.of(values) if values else None
        last = [m.result for m in done if (m.job.side, m.job.scenario) == (side, scenario)][-1]
        row["last"] = last
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """bot4 / NautilusTrader per scenario, from medians of this run: above 1
    means bot4 is faster (rates) or bigger (RSS)."""
    by = {(r["side"], r["scenario"]): r for r in rows}
    out = []
    for ours, theirs in PAIRS:
        for ref in [theirs, "bypass"] if ours == "orders" else [theirs]:
            a, b = by.get(("bot4", ours or "")), by.get(("nautilus", ref))
            if ours is None or a is None or b is None:
                continue
            rate = "ticks" if ours == "noop" else "orders"
            out.append(
                {
                    "scenario": ours,
                    "against": ref,
                    "cpu": a[f"{rate}_per_cpu_s"].median / b[f"{rate}_per_cpu_s"].median,
                    "wall": a[f"{rate}_per_s"].median / b[f"{rate}_per_s"].median,
                    "rss": a["child_peak_rss_mib"].median / b["child_peak_rss_mib"].median,
                    "unit": f"{rate}/s",
                }
            )
    return out


def format_table(report: dict[str, Any]) -> str:
    rows = summarize(report["measured"])
    rounds = max(r["run_s"].n for r in rows)
    lines = [
        "bot4 kernel benchmark on the anchor's workload (ticks built before timing; "
        f"timed region = the run; median of {rounds} round(s), +/- half the range)",
        f"{'side':<9}{'scenario':<10}{'ticks':>10}{'ticks/s CPU':>20}{'ticks/s wall':>20}"
        f"{'orders/s CPU':>18}{'orders/s wall':>18}{'peak RSS MiB':>14}",
    ]
    for r in rows:
        last = r["last"]
        ocpu = _fmt(r["orders_per_cpu_s"]) if r["orders_per_cpu_s"] else "-"
        owall = _fmt(r["orders_per_s"]) if r["orders_per_s"] else "-"
        lines.append(
            f"{r['side']:<9}{r['scenario']:<10}{last['n_ticks']:>10,}"
            f"{_fmt(r['ticks_per_cpu_s']):>20}{_fmt(r['ticks_per_s']):>20}"
            f"{ocpu:>18}{owall:>18}{r['child_peak_rss_mib'].median:>14.0f}"
        )
    for r in rows:
        last = r["last"]
        if last.get("submitted"):
            lines.append(
                f"  {r['side']} {r['scenario']}: {last['submitted']:,} orders, "
                f"{last.get('denied', last.get('rejected', 0)):,} refused"
                f"{' ' + str(last['deny_reasons']) if last['deny_reasons'] else ''}, "
                f"{last['filled']:,} fills"
            )
        if "first_half_cpu_s" in last:
            lines.append(
                f"  {r['side']} {r['scenario']}: second half / first half of the run "
                f"{last['second_half_cpu_s'] / last['first_half_cpu_s']:.2f} in CPU time; "
                "RSS growth "
                f"{last['kib_per_order']:.2f} KiB/order"
            )
    found = ratios(rows)
    if found:
        lines.append("bot4 / NautilusTrader, same run (above 1: bot4 faster; RSS: bot4 bigger):")
        for q in found:
            lines.append(
                f"  {q['scenario']:<7} vs NT {q['against']:<7} {q['unit']}: "
                f"x{q['cpu']:.2f} CPU, x{q['wall']:.2f} wall; peak RSS x{q['rss']:.2f}"
            )
    else:
        lines.append("(no anchor in this run: `--vs-nautilus PYTHON` prints bot4 / NT ratios)")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    lines.append(report["conditions"])
    return "\n".join(lines)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vs-nautilus",
        metavar="PYTHON",
        help="also run ../shared/bench/nautilus_bench.py under PYTHON, interleaved",
    )
    parser.add_argument(
        "--nautilus-script",
        metavar="PATH",
        help="the anchor script (default: $BOT4_NAUTILUS_BENCH, else "
        "../shared/bench/nautilus_bench.py above the repository)",
    )
    parser.add_argument(
        "--rounds", type=int, help=f"kernel rounds (default 1; {MIN_ROUNDS_VS} or more with NT)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the ticks")
    parser.add_argument("--ticks", type=int, help="ticks of the no-op case (orders: a fifth)")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="with --child CASE: run it under cProfile, top 25 by own time to FILE",
    )
    add_options(parser)
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.ticks or FULL["noop"], args.profile)
        print(RESULT_PREFIX + json.dumps(result))
        return 0
    try:
        report = run(args.quick, args.ticks, args.rounds, args.vs_nautilus, args.nautilus_script)
    except HarnessError as exc:
        print(f"bench_kernel: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
