"""Per-tick hooks of a session: pacing to event time and the progress bar.

This module holds :data:`ProgressHook` (called with each tick the kernel
handles), :func:`tick_pacer` (sleeps so a session replays event time at
``speed`` x real time, then calls the progress hook), :func:`progress_bar`
(the one-line bar ``bot4 run`` shows on a terminal) and :func:`count_rows`
(a data file's rows, for the bar's ETA).

:func:`bot4.session.run_session` hands the kernel ``tick_pacer(speed,
progress)`` as its ``on_tick``; ``bot4 run`` (:mod:`bot4.cli.run`) builds the
progress hook. :mod:`bot4.session` re-exports the public names.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bot4.model import MarketData

ProgressHook = Callable[[MarketData], Awaitable[None]]


def count_rows(path: Path) -> int | None:
    """Rows in a data file (less a header line), for the progress bar's ETA.
    A candle file yields several ticks per row, so this is a lower bound."""
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            first = f.readline()
            rows = sum(1 for _ in f)
    except OSError:
        return None
    return rows + (0 if first[:1].isalpha() else 1)


def tick_pacer(speed: float, progress: ProgressHook | None) -> ProgressHook | None:
    """Per-tick hook: progress display, and sleeping to replay event time at
    ``speed`` x real time (0 = no pacing)."""
    if speed <= 0:
        return progress
    state: dict[str, float] = {}

    async def pace(tick: MarketData) -> None:
        event_s = tick.timestamp.timestamp()
        if "t0" not in state:
            state["t0"], state["w0"] = event_s, time.monotonic()
        due = state["w0"] + (event_s - state["t0"]) / speed
        delay = due - time.monotonic()
        if delay > 0:
            await trio.sleep(delay)
        if progress is not None:
            await progress(tick)

    return pace


def progress_bar(total: int | None, stream: Any = sys.stderr) -> ProgressHook | None:
    """A one-line progress bar with ticks/s and ETA; None when not a terminal."""
    if not stream.isatty():
        return None
    start = time.monotonic()
    state = {"n": 0, "shown": 0.0}

    async def show(tick: MarketData) -> None:
        n = int(state["n"]) + 1
        state["n"] = n
        if n & 1023:
            return
        now = time.monotonic()
        if now - state["shown"] < 0.2:
            return
        state["shown"] = now
        rate = n / max(now - start, 1e-9)
        if total:
            frac = min(n / total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (total - n) / rate if rate else 0
            line = (
                f"\r[{bar:<30}] {frac:6.1%} {n:,}/{total:,} ticks"
                f"  {rate:,.0f} ticks/s  ETA {eta:4.0f}s"
            )
        else:
            line = f"\r{n:,} ticks  {rate:,.0f} ticks/s"
        stream.write(line)
        stream.flush()

    return show
