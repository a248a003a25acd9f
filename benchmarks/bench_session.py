"""The main job, as a user runs it: the default ``bot4 run`` session, then
``bot4 replay`` of the recording it wrote.

The session is the command with no options but ``--out`` (a temporary
folder): the bundled sample, sma_cross, the default rules, the chart, the
recording and whatever else the defaults turn on. Each command runs in its own
process and is measured from outside (wall time, user + system CPU, peak RSS):
what a user waits for, start-up and chart included. The session's own
ticks/s (its loop, as ``bot4 run`` prints it) is shown beside that.

    python benchmarks/bench_session.py [--quick]

``--quick`` runs the same command on the first 20,000 rows of the sample.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Conditions, HarnessError, Process, parse_result, run_process

QUICK_ROWS = 20_000
# `bot4 run` itself, with the session loop's CPU time taken as well: cmd_run
# imports run_session when called, so wrapping the module's function is seen.
RUN_TIMED = """
import sys, time, json
import bot4.session
from bot4.cli import main

loop = {}
inner = bot4.session.run_session

async def run_session(*args, **kwargs):
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        return await inner(*args, **kwargs)
    finally:
        loop.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall)

bot4.session.run_session = run_session
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"loop_cpu_s": loop.get("cpu_s"), "loop_wall_s": loop.get("wall_s")}))
sys.exit(code)
"""


def _quick_data(folder: Path) -> Path:
    from bot4.data import sample_path

    path = folder / "sample-head.csv.gz"
    with gzip.open(sample_path(), "rt") as src, gzip.open(path, "wt") as dst:
        for i, line in enumerate(src):
            if i > QUICK_ROWS:  # the header and QUICK_ROWS rows
                break
            dst.write(line)
    return path


def _events(recording: Path) -> int:
    """The events a recording holds, read as a stream by bot4's own reader
    (any of its forms: columnar frames, compact lines, plain lines)."""
    from bot4.recording_read import read_records

    return sum(1 for _ in read_records(recording))


def _checked(done: Process, name: str) -> Process:
    if done.returncode != 0:
        raise HarnessError(done.failure(name))
    return done


def run(quick: bool = False) -> dict[str, Any]:
    conditions = Conditions()
    bot4 = [sys.executable, "-m", "bot4"]
    with tempfile.TemporaryDirectory(prefix="bot4-bench-session-") as tmp:
        out = Path(tmp) / "out"
        argv = [sys.executable, "-c", RUN_TIMED, "run", "--out", str(out)]
        if quick:
            argv += ["--data", str(_quick_data(Path(tmp)))]
        session = _checked(run_process(argv), "bot4 run")
        loop = parse_result(session.stdout)
        summary = json.loads((out / "summary.json").read_text())
        # The session's recording, whichever form this checkout writes
        # (recording.jsonl.gz since the compact recording, recording.jsonl before).
        (recording,) = [p for p in out.iterdir() if p.name.startswith("recording.")]
        sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        events = _events(recording)
        replay = run_process([*bot4, "replay", str(recording)])
    if replay.returncode not in (0, 1):  # 1: replay ran and differs, reported below
        raise HarnessError(replay.failure("bot4 replay"))
    return {
        "quick": quick,
        "ticks": summary["ticks"],
        "orders": summary["orders_approved"] + summary["orders_rejected"],
        "fills": summary["fills"],
        "session_loop_s": summary["wall_seconds"],
        "session_loop_cpu_s": loop["loop_cpu_s"],
        "session": session,
        "sizes": sizes,
        "recording": recording.name,
        "recording_events": events,
        "replay": replay,
        "replay_verdict": replay.stdout.strip().splitlines()[-1:] or [""],
        "conditions": conditions.line(),
    }


def format_table(r: dict[str, Any]) -> str:
    s: Process = r["session"]
    p: Process = r["replay"]
    mb = 1e6
    rec = r["sizes"].get(r["recording"], 0)
    others = ", ".join(
        f"{name} {size / mb:.1f} MB"
        for name, size in sorted(r["sizes"].items())
        if name != r["recording"] and size
    )
    data = f"first {QUICK_ROWS:,} rows of the sample" if r["quick"] else "the bundled sample"
    ticks = r["ticks"]
    lines = [
        f"default `bot4 run` session on {data}: {ticks:,} ticks, {r['orders']:,} orders, "
        f"{r['fills']:,} fills",
        f"  session loop   {r['session_loop_s']:8.1f} s wall  "
        f"{ticks / r['session_loop_s']:>10,.0f} ticks/s (as bot4 run prints it);  "
        f"{r['session_loop_cpu_s']:.1f} s CPU  {ticks / r['session_loop_cpu_s']:,.0f} ticks/CPU-s",
        f"  whole command  {s.wall_s:8.1f} s wall  {ticks / s.wall_s:>10,.0f} ticks/s;  "
        f"{s.cpu_s:.1f} s CPU  {ticks / s.cpu_s:,.0f} ticks/CPU-s;  peak RSS "
        f"{s.peak_rss_mib:.0f} MiB",
        f"  {r['recording']}  {rec / mb:8.1f} MB, {r['recording_events']:,} events "
        f"({rec / ticks:,.0f} bytes a tick); also {others}",
        f"  bot4 replay    {p.wall_s:8.1f} s wall  {ticks / p.wall_s:>10,.0f} ticks/s;  "
        f"{p.cpu_s:.1f} s CPU  {ticks / p.cpu_s:,.0f} ticks/CPU-s;  peak RSS "
        f"{p.peak_rss_mib:.0f} MiB; {r['replay_verdict'][0][:80]}",
        r["conditions"],
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_ROWS:,} rows only")
    args = parser.parse_args(argv)
    try:
        print(format_table(run(args.quick)))
    except HarnessError as exc:
        print(f"bench_session: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
