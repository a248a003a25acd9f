"""``summary.json``: one run's figures, and the whole session's when the run
resumed one.

A session against a venue that keeps its state can span several runs (a
crash, a restart: :mod:`bot4.journal.recovery`). The summary then has three
parts:

* the top-level keys, as they always were (:meth:`bot4.report.Summary.as_dict`):
  the counters are this run's, the book figures (PnL, final equity, drawdown,
  fees) are the whole book's, because the tracker holds every fill of the
  session and the restored peak;
* ``this_run``: this process alone: its ticks, fills, orders, rejections,
  actions, and the equity change from its first tick to its end;
* ``session``: every run so far: ``runs``, when the first started (wall
  clock; ``null`` for a session of one run), the
  counters of the earlier runs (from the journal,
  :class:`bot4.journal.riskstate.RunHistory`) plus this run's, and the book.

A run that resumed nothing has ``session.runs == 1`` and the same counters in
all three places.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bot4.journal.riskstate import RunHistory
from bot4.report import SessionReport
from bot4.summary import Summary, ns_to_datetime

__all__ = ["resumed_text", "summary_json"]

_COUNTERS = ("fills", "orders_approved", "orders_rejected", "breaker_trips")
_BY_NAME = ("rejections_by_rule", "risk_actions")


def _add(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter(a)
    total.update(b)
    return dict(sorted(total.items()))


def _plain(value: Decimal) -> Decimal:
    """Zero as ``0``, not ``0E-10`` (a difference keeps its operands' exponent)."""
    return value if value else Decimal(0)


def summary_json(
    summary: Summary, report: SessionReport, history: RunHistory | None = None
) -> dict[str, Any]:
    """The summary as written to ``summary.json``; ``history`` is the
    RunHistory of the earlier runs (None: this run is the whole session)."""
    out = summary.as_dict()
    earlier = history.runs if history is not None else 0
    this_run: dict[str, Any] = {
        "run": earlier + 1,
        "resumed": earlier > 0,
        **{k: out[k] for k in ("ticks", "trades", "orders_resized", *_COUNTERS, *_BY_NAME)},
        "equity_at_start": str(report.first_equity),
        "pnl": str(_plain(summary.final_equity - report.first_equity)),
        **{k: out[k] for k in ("start", "end", "duration", "wall_seconds")},
    }
    session: dict[str, Any] = {"runs": earlier + 1, "first_run_started": None}
    if history is not None and earlier:
        # Wall-clock time (the journal's session record), not event time.
        session["first_run_started"] = ns_to_datetime(int(history.started_ns)).isoformat()
        for key in _COUNTERS:
            session[key] = int(getattr(history, key)) + int(out[key])
        for key in _BY_NAME:
            session[key] = _add(getattr(history, key), out[key])
    else:
        session.update({k: out[k] for k in (*_COUNTERS, *_BY_NAME)})
    session.update(
        {
            k: out[k]
            for k in ("starting_cash", "final_equity", "pnl", "return_pct", "max_drawdown", "fees")
        }
    )
    session["peak_equity"] = str(report.tracker.peak_equity)
    out["this_run"] = this_run
    out["session"] = session
    return out


def resumed_text(document: Mapping[str, Any]) -> str | None:
    """A line for the terminal after the summary when the run resumed a
    session (the summary's counters are this run's); None otherwise."""
    run, session = document["this_run"], document["session"]
    if not run["resumed"]:
        return None
    return (
        f"  resumed        run {run['run']} of this session; all {session['runs']} runs: "
        f"{session['fills']:,} fills, {session['orders_approved']:,} approved, "
        f"{session['orders_rejected']:,} rejected, {session['breaker_trips']:,} breaker trips"
    )
