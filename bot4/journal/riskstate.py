"""Risk state that must survive a restart, as journal records.

A crash must not reset a limit: the drawdown is measured from the peak equity
the book reached (unrealised gains included), a tripped breaker stays
tripped, a liquidation-ladder rung that acted does not act again, and the
rules' event-time windows (stop-outs in the last hour, orders per symbol per
minute) still count what happened before the crash. Two record kinds carry
it, written when the state changes, and read back by recovery
(:mod:`bot4.journal.recovery`) before the first tick:

* ``risk_state``: ``{"key": K, "value": V}``, the latest value per key
  (table ``journal_risk_state``). Any component may keep a small JSON-able
  value under its own key; bot4's keys are ``peak_equity``
  (``{"peak": "<decimal>"}``), ``ladder.<SYMBOL>`` (``{"rung": n, "side":
  "buy"}``, or ``null`` once the position is flat or flipped) and
  ``window.<kind>.cleared`` (the events of ``kind`` before it are not
  restored: a breaker reset forgets the stop-outs). The breaker itself keeps
  its ``breaker`` records and ``journal_state`` row (tripped, reason, since).
* ``risk_event``: ``{"kind": K, "symbol": S}`` at the event's time
  (``ts_ns``, event time, as the windows count it); table
  ``journal_risk_events``, read back by kind within the windows' horizon.

:class:`RunHistory` is what the journal knows of the earlier runs of a
session (a resume against a venue that kept its state), for the summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

import attrs

__all__ = [
    "PEAK_KEY",
    "PEAK_STEP",
    "RiskEventRow",
    "RiskStateRow",
    "RunHistory",
    "cleared_key",
    "peak_to_journal",
    "read_history",
    "read_risk_events",
    "read_risk_state",
]

PEAK_KEY = "peak_equity"
# Peak equity is journaled rounded *up* by this fraction of itself, and again
# only once the true peak passes the journaled figure: one record per 0.01 %
# of new high, however many ticks, and a restored peak is never below the
# true one (at most 0.01 % above it: the drawdown then reads high, the safe side).
PEAK_STEP = Decimal("0.0001")
_PEAK_QUANTUM = Decimal("0.00000001")


def cleared_key(kind: str) -> str:
    return f"window.{kind}.cleared"


def peak_to_journal(peak: Decimal) -> Decimal:
    """The figure to journal for a new peak: ``peak * (1 + PEAK_STEP)``,
    rounded up to 8 decimals. The tracker is told again above it."""
    if peak <= 0:
        return peak
    return (peak * (1 + PEAK_STEP)).quantize(_PEAK_QUANTUM, rounding=ROUND_CEILING)


class _Tx(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...


@attrs.frozen(slots=True)
class RiskStateRow:
    key: str
    value: Any  # plain JSON (Decimals as strings)
    ts_ns: int
    seq: int


@attrs.frozen(slots=True)
class RiskEventRow:
    kind: str
    symbol: str
    ts_ns: int
    seq: int


def read_risk_state(tx: _Tx, since_seq: int = 0) -> dict[str, RiskStateRow]:
    rows = tx.execute(
        "SELECT key, value, ts_ns, seq FROM journal_risk_state WHERE seq > ?", (since_seq,)
    )
    return {
        str(k): RiskStateRow(str(k), json.loads(v), int(ts), int(seq)) for k, v, ts, seq in rows
    }


def read_risk_events(
    tx: _Tx, kind: str, *, since_seq: int = 0, horizon_ns: int | None = None
) -> list[RiskEventRow]:
    """Events of ``kind`` journaled after ``since_seq``, in event-time order;
    with ``horizon_ns`` only those within it of the newest one (older ones
    are outside every window)."""
    where = "kind = ? AND seq > ?"
    params: list[Any] = [kind, since_seq]
    if horizon_ns is not None:
        newest = tx.execute(
            f"SELECT MAX(ts_ns) FROM journal_risk_events WHERE {where}", tuple(params)
        )
        if not newest or newest[0][0] is None:
            return []
        where += " AND ts_ns > ?"
        params.append(int(newest[0][0]) - horizon_ns)
    rows = tx.execute(
        f"SELECT kind, symbol, ts_ns, seq FROM journal_risk_events WHERE {where}"
        " ORDER BY ts_ns, seq",
        tuple(params),
    )
    return [RiskEventRow(str(k), str(s), int(ts), int(seq)) for k, s, ts, seq in rows]


@attrs.frozen(kw_only=True)
class RunHistory:
    """The earlier runs of this session, from the journal (the records a
    crash lost with its last, unflushed batch are not in it). ``fills`` is
    filled in by recovery (the fills it replayed)."""

    runs: int = 0  # runs before this one
    started_ns: int = 0  # wall time the first of them started
    orders_approved: int = 0
    orders_rejected: int = 0
    rejections_by_rule: Mapping[str, int] = attrs.field(factory=dict)
    risk_actions: Mapping[str, int] = attrs.field(factory=dict)
    breaker_trips: int = 0
    fills: int = 0
    # Every run of the session id, this one included, and the runs before it
    # that died without a clean stop within a minute (bot4.journal.runs).
    starts: int = 0
    restarts: int = 0


def read_history(tx: _Tx, after_seq: int, before_seq: int) -> RunHistory:
    """Counts of the runs whose records lie in ``(after_seq, before_seq)``."""
    span = (after_seq, before_seq)
    runs = tx.execute(
        "SELECT COUNT(*), MIN(ts_ns) FROM journal_records"
        " WHERE kind = 'session' AND seq > ? AND seq < ?",
        span,
    )
    count = int(runs[0][0]) if runs else 0
    if not count:
        return RunHistory()
    decided = "SELECT {what} FROM journal_records WHERE kind = 'decision' AND seq > ? AND seq < ?"
    # Bodies are canonical JSON (sorted keys), so the class tag comes first.
    approved = tx.execute(
        decided.format(what="COUNT(*)") + " AND body LIKE ?", (*span, '{"_t":"Approved"%')
    )
    rejected = tx.execute(
        decided.format(what="rule, COUNT(*)") + " AND body LIKE ? GROUP BY rule",
        (*span, '{"_t":"Rejected"%'),
    )
    actions: Counter[str] = Counter()
    for (body,) in tx.execute(
        "SELECT body FROM journal_records WHERE kind = 'action' AND seq > ? AND seq < ?", span
    ):
        actions[str(json.loads(body).get("kind", "unknown"))] += 1
    by_rule = {str(rule): int(n) for rule, n in rejected}
    return RunHistory(
        runs=count,
        started_ns=int(runs[0][1] or 0),
        orders_approved=int(approved[0][0]) if approved else 0,
        orders_rejected=sum(by_rule.values()),
        rejections_by_rule=by_rule,
        risk_actions=dict(actions),
        breaker_trips=actions.get("trip_breaker", 0),
    )
