"""Every benchmark, one command: ``python3 dev.py bench [--quick]``.

Each module exposes ``run(quick) -> rows`` and ``format_table(rows)``; this
prints each table in turn. Figures depend on the machine: the seed's and
NautilusTrader's numbers are printed beside ours as ratios, not as pass/fail.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Module name -> what it measures. Modules that need a server (PostgreSQL,
# Redis) say so in their own output and skip what they cannot reach.
BENCHMARKS = {
    "bench_bus": "event bus: publish -> deliver latency and throughput",
    "bench_risk": "pre-trade decision latency of the default policy",
    "bench_kernel": "order path on the NautilusTrader workload",
    "bench_journal": "order path with the journal on (SQLite, PostgreSQL)",
    "bench_shared": "Redis bridge throughput and reservation round trip",
}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute in all)")
    parser.add_argument("only", nargs="*", help="run only these (e.g. bench_bus)")
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    for name in names:
        path = Path(__file__).with_name(f"{name}.py")
        if not path.exists():
            print(f"== {name}: not present in this checkout\n")
            continue
        print(f"== {name}: {BENCHMARKS.get(name, '')}", flush=True)
        module = importlib.import_module(name)
        rows = module.run(args.quick)
        print(module.format_table(rows), flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
