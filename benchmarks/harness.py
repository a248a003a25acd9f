"""What every side-by-side benchmark needs: the machine's conditions, one
measured child process, interleaved rounds, and medians with their spread.

These machines are shared: another process can take a core for seconds. So a
comparison runs each side in turn, A/B/A/B, in fresh processes (peak RSS is
then one scenario's), compares CPU time of the timed region (which a busy
neighbour inflates far less than wall time), and says how loaded the machine
was at the start and at the end. A child reports its figures on one line
``RESULT {json}``, the format of NautilusTrader's anchor script
(``../shared/bench/nautilus_bench.py``), so one parser reads both sides.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The anchor lives beside the repository (../shared/bench; for a git worktree
# kept in a folder of the checkout's parent, one level further up);
# BOT4_NAUTILUS_BENCH or --nautilus-script points elsewhere.
ANCHOR_ENV = "BOT4_NAUTILUS_BENCH"
ANCHOR_RELATIVE = Path("shared", "bench", "nautilus_bench.py")
RESULT_PREFIX = "RESULT "


class HarnessError(Exception):
    """A child failed or printed no result: one line for the user (exit 1)."""


class UsageError(HarnessError):
    """The command line names something that is not there: one line, exit 2."""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass
class Conditions:
    """When and where a benchmark ran: started at construction, ended by :meth:`line`."""

    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load_start: str = field(default_factory=_load)

    def line(self) -> str:
        return (
            f"measured {self.started:%Y-%m-%d %H:%M} UTC; load average (1/5/15 min) "
            f"{self.load_start} at start, {_load()} at end; {os.cpu_count()} CPUs "
            f"({cpu_model()}); Python {platform.python_version()}"
        )


def parse_result(stdout: str) -> dict[str, Any]:
    """The figures of one child: its last ``RESULT {json}`` line. Warnings,
    progress and log lines around it are ignored."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith(RESULT_PREFIX):
            try:
                value = json.loads(line[len(RESULT_PREFIX) :])
            except json.JSONDecodeError as exc:
                raise HarnessError(f"unreadable result line {line[:80]!r}: {exc}") from None
            if not isinstance(value, dict):
                raise HarnessError(f"result line is not a JSON object: {line[:80]!r}")
            return value
    raise HarnessError("no 'RESULT {...}' line in the output")


@dataclass(frozen=True)
class Job:
    """One scenario of one side, as a command that prints a RESULT line."""

    side: str
    scenario: str
    argv: Sequence[str]


@dataclass(frozen=True)
class Measured:
    job: Job
    round: int
    result: dict[str, Any]


@dataclass(frozen=True)
class Process:
    """What one finished child did: its output, and the kernel's accounting
    of that process alone (wall time, user + system CPU, peak RSS)."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float

    def failure(self, name: str) -> str:
        tail = self.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return f"{name} exited with {self.returncode}: {tail[0][:200]}"


def run_process(argv: Sequence[str], cwd: Path | None = None) -> Process:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, cwd=cwd, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Process(
            proc.returncode,
            out.read(),
            err.read(),
            wall,
            usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024,  # Linux: KiB
        )


def run_child(argv: Sequence[str], cwd: Path | None = None) -> dict[str, Any]:
    """Run one child to completion and return its RESULT, with ``child_cpu_s``
    (CPU of the whole process, start-up included) and ``child_peak_rss_mib``."""
    done = run_process(argv, cwd)
    name = " ".join(str(a) for a in argv[:4]) + " ..."
    if done.returncode != 0:
        raise HarnessError(done.failure(name))
    try:
        result = parse_result(done.stdout)
    except HarnessError as exc:
        raise HarnessError(f"{name}: {exc}") from None
    result["child_cpu_s"] = done.cpu_s
    result["child_peak_rss_mib"] = done.peak_rss_mib
    return result


def interleave(
    jobs: Sequence[Job],
    rounds: int,
    run: Callable[[Sequence[str]], dict[str, Any]] = run_child,
    progress: Callable[[Measured], None] | None = None,
) -> list[Measured]:
    """Every job once per round, in the given order, round after round, so
    that a slow spell of the machine falls on both sides alike."""
    done: list[Measured] = []
    for r in range(rounds):
        for job in jobs:
            m = Measured(job, r, run(job.argv))
            done.append(m)
            if progress is not None:
                progress(m)
    return done


@dataclass(frozen=True)
class Spread:
    """Median of a figure over the rounds, with its lowest and highest value."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no values")
        return cls(statistics.median(values), min(values), max(values), len(values))

    @property
    def pct(self) -> float:
        """Half the range, in percent of the median: the +/- a reader sees."""
        return 50.0 * (self.high - self.low) / self.median if self.median else 0.0


def collect(done: Sequence[Measured], side: str, scenario: str, key: str) -> list[float]:
    return [
        float(m.result[key])
        for m in done
        if m.job.side == side and m.job.scenario == scenario and m.result.get(key) is not None
    ]


def resolve_python(python: str) -> str:
    """The interpreter named on the command line, as an executable path; a
    name without a slash is looked up on PATH."""
    path = shutil.which(python) if os.sep not in python else python
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise UsageError(f"--vs-nautilus: no Python interpreter at {python!r}")
    return path


def check_nautilus(python: str) -> str:
    """The version of nautilus_trader under ``python``, or a one-line error."""
    probe = subprocess.run(
        [python, "-c", "import nautilus_trader; print(nautilus_trader.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise UsageError(
            f"--vs-nautilus: {python} cannot import nautilus_trader "
            "(see ../shared/bench/README.md for its set-up)"
        )
    return probe.stdout.strip()


def anchor_script(override: str | None = None) -> Path:
    """The anchor script: ``override``, else $BOT4_NAUTILUS_BENCH, else the
    first ``shared/bench/nautilus_bench.py`` in a folder above the repository."""
    raw = override or os.environ.get(ANCHOR_ENV)
    if raw:
        path = Path(raw)
        if not path.is_file():
            how = "--nautilus-script" if override else ANCHOR_ENV
            raise UsageError(f"--vs-nautilus: anchor script {path} not found ({how})")
        return path
    for folder in ROOT.parents:
        if (folder / ANCHOR_RELATIVE).is_file():
            return folder / ANCHOR_RELATIVE
    raise UsageError(
        f"--vs-nautilus: no ../{ANCHOR_RELATIVE.as_posix()} above {ROOT} "
        f"(name it with --nautilus-script or {ANCHOR_ENV})"
    )


def python_version_of(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


if __name__ == "__main__":  # pragma: no cover - a quick look at this machine
    print(Conditions().line())
    sys.exit(0)
