"""Every benchmark, one command: ``python3 dev.py bench [--quick] [--vs-nautilus PYTHON]``.

Each module exposes ``run(quick) -> report`` and ``format_table(report)``;
this prints each table in turn, then the machine's conditions over the whole
run. Figures depend on the machine. With ``--vs-nautilus PYTHON`` the kernel
benchmark runs NautilusTrader's anchor (``../shared/bench/nautilus_bench.py``)
under PYTHON interleaved with bot4's runs and prints bot4 / NT ratios from that
same run; without it no NautilusTrader figure is printed, as one from another
day would not compare.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_kernel
from harness import Conditions, HarnessError, UsageError

# Module name -> what it measures. Modules that need a server (PostgreSQL,
# Redis) say so in their own output and skip what they cannot reach.
BENCHMARKS = {
    "bench_bus": "event bus: publish -> deliver latency and throughput",
    "bench_risk": "pre-trade decision latency of the default policy",
    "bench_kernel": "order path on the NautilusTrader workload",
    "bench_journal": "order path with the journal on (SQLite, PostgreSQL)",
    "bench_shared": "Redis bridge throughput and reservation round trip",
    "bench_session": "the default `bot4 run` session and the replay of its recording",
    "bench_catalog": "market-data catalog rows into the feed (columnar and MarketData)",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    bench_kernel.add_options(parser)
    parser.add_argument("only", nargs="*", help="run only these (e.g. bench_bus)")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    kernel_opts: dict[str, Any] = {
        "rounds": args.rounds,
        "vs_nautilus": args.vs_nautilus,
        "nautilus_script": args.nautilus_script,
    }
    conditions = Conditions()
    try:
        if args.vs_nautilus is not None:
            # Before anything runs: a wrong interpreter should not cost minutes.
            bench_kernel.prepare_anchor(args.vs_nautilus, args.nautilus_script)
        for name in names:
            path = Path(__file__).with_name(f"{name}.py")
            if not path.exists():
                print(f"== {name}: not present in this checkout\n")
                continue
            print(f"== {name}: {BENCHMARKS.get(name, '')}", flush=True)
            module = importlib.import_module(name)
            opts = kernel_opts if name == "bench_kernel" else {}
            during = Conditions()
            table = module.format_table(module.run(args.quick, **opts))
            print(table, flush=True)
            if "load average" not in table:
                print(during.line(), flush=True)
            print()
    except HarnessError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    print("== all: " + conditions.line())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
