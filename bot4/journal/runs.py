"""The runs of a session id, counted in the journal: a restart loop is seen.

Each start of a session writes the journal_state key ``runs:<session id>``
with its session record (one durable transaction): how many runs that id has
had, when this one started, and ``clean: false``. The last flush of a clean
stop (the end of the data, a signal, an error bot4 unwound) sets
``clean: true``. A start that finds the previous run not clean knows it was
killed or crashed; if that run started within :data:`WINDOW_S` it counts as a
quick restart, and one line is logged: ``session s1: restarted 5 times in
60 s without a clean stop``. The count is exported as the
``bot4_session_restarts`` metric (and the runs as ``bot4_session_runs``).

Unlike :class:`~bot4.journal.riskstate.RunHistory` (the runs of the current
venue epoch, what a resume continues), these counts cover every run of the
id since the journal was made.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

__all__ = ["WINDOW_S", "RunStart", "end_of_run", "runs_key", "start_of_run"]

WINDOW_S = 60  # a run that died within this of its start counts as a restart loop
_MAX_KEPT = 64  # start times kept (a loop longer than this reads ">= 64")


def runs_key(session_id: str) -> str:
    return f"runs:{session_id}"


@attrs.frozen
class RunStart:
    """What a start found and writes."""

    run: int  # this run's number (1 for the first run of the id)
    restarts: int  # runs that ended without a clean stop within WINDOW_S, before this one
    value: dict[str, Any]  # the journal_state value this start writes

    def mark(self, session_id: str) -> tuple[str, str]:
        return runs_key(session_id), json.dumps(self.value, sort_keys=True)

    def line(self, session_id: str) -> str | None:
        """The one log line for a restart loop, or None."""
        if not self.restarts:
            return None
        times = "once" if self.restarts == 1 else f"{self.restarts} times"
        return (
            f"session {session_id}: restarted {times} in {WINDOW_S} s without a clean stop "
            f"(run {self.run}); see the log of the runs before for why"
        )


def start_of_run(previous: Any, *, now_ns: int | None = None, pid: int = 0) -> RunStart:
    """This start, given the value the journal holds (None for a new id)."""
    now = time.time_ns() if now_ns is None else now_ns
    prev = previous if isinstance(previous, dict) else {}
    runs = int(prev.get("runs", 0))
    recent: list[int] = []
    if prev and not prev.get("clean", False):
        horizon = now - WINDOW_S * 1_000_000_000
        starts = [*prev.get("unclean", []), int(prev.get("started_ns", 0))]
        recent = [int(t) for t in starts if int(t) > horizon][-_MAX_KEPT:]
    value = {"runs": runs + 1, "started_ns": now, "pid": pid, "clean": False, "unclean": recent}
    return RunStart(runs + 1, len(recent), value)


def end_of_run(start: RunStart, *, now_ns: int | None = None) -> dict[str, Any]:
    """The value a clean stop writes."""
    ended = time.time_ns() if now_ns is None else now_ns
    return {**start.value, "clean": True, "ended_ns": ended}
