"""Shadow policies: a candidate policy evaluated beside the live one, never deciding.

``bot4 run --shadow-rules DIR`` loads a second policy from DIR (with the same
risk packs) and asks it about every order, every tick of a held position and
every fill the live policy sees, after the live policy has answered. What it
says is compared, never used: the order goes out, or not, as the live policy
decided. A disagreement is counted (by kind, in the summary and the metric
``bot4_shadow_disagreements_total{kind}``) and published on ``risk.shadow``
with both sides: the live decision (its rule, reason and numbers) and the
shadow's full trace, so the recording keeps them. Kinds:

* ``approved->rejected`` / ``rejected->approved``: the verdict differs;
* ``rule``: both reject, by different rules;
* ``size``: both reject by the same rule, suggesting different sizes;
* ``actions``: on a tick or a fill, different risk actions (ladder rungs,
  breaker trips).

What the shadow counts is what happened: its order windows count the orders
the live policy approved (:meth:`ShadowPolicy.live_approved`), not the ones
it would have approved itself, and its stop-out windows the real stop-outs;
so a disagreement means "with the same history, the candidate would decide
otherwise here", which is the question a person switching policies asks.
The shadow's breaker trips only by its own rules and only counts.

Never in the way: an error in the shadow (a rule that raises, a pack that
fails, so that the shadow would fail closed) is counted as ``error`` and the
session goes on; the shadow runs after the live decision is made (an order
is evaluated once it has been placed), so its cost is not in the decision's
latency. Its cost per order and per tick
is in the benchmarks (``bench_risk --shadow``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from bot4.model import (
    Approved,
    Decision,
    Fill,
    MarketData,
    Order,
    Portfolio,
    Rejected,
    RiskAction,
)
from bot4.risk.fact_names import FILL, ORDER, TICK
from bot4.risk.policy import FAIL_CLOSED, Book, Explanation, RiskPolicy

APPROVED_TO_REJECTED = "approved->rejected"
REJECTED_TO_APPROVED = "rejected->approved"
RULE = "rule"
SIZE = "size"
ACTIONS = "actions"
ERROR = "error"
KINDS = (APPROVED_TO_REJECTED, REJECTED_TO_APPROVED, RULE, SIZE, ACTIONS, ERROR)


@attrs.frozen
class Disagreement:
    """One event on which the shadow would have decided otherwise."""

    kind: str
    stage: str  # order | tick | fill
    symbol: str
    ts_ns: int
    live: dict[str, Any]
    shadow: dict[str, Any]
    client_order_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class ShadowStats:
    orders: int = 0
    ticks: int = 0
    fills: int = 0
    disagreements: Counter[str] = attrs.field(factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "orders": self.orders,
            "ticks": self.ticks,
            "fills": self.fills,
            "disagreements": dict(sorted(self.disagreements.items())),
            "total": sum(v for k, v in self.disagreements.items() if k != ERROR),
        }


def decision_dict(decision: Decision | None) -> dict[str, Any]:
    if decision is None:
        return {"decision": None}
    if isinstance(decision, Approved):
        return {"decision": "approve", "rules": list(decision.rules)}
    return {
        "decision": "reject",
        "rule": decision.rule,
        "reason": decision.reason,
        "suggested_size": str(decision.suggested_size),
        "values": {k: str(v) for k, v in decision.values.items()},
    }


def _actions(actions: Sequence[RiskAction]) -> list[dict[str, Any]]:
    return [
        {"kind": a.kind.value, "symbol": a.symbol, "reason": a.reason, "fraction": str(a.fraction)}
        for a in actions
    ]


def _action_keys(actions: Sequence[RiskAction]) -> list[tuple[str, str | None, str]]:
    return sorted((a.kind.value, a.symbol, str(a.fraction)) for a in actions)


def _trace(explanation: Explanation) -> list[dict[str, Any]]:
    return [
        {
            "rule": e.rule,
            "where": e.where,
            "fired": e.fired,
            "decided": e.decided,
            "values": {k: v for k, v in e.values.items()},
        }
        for e in explanation.trace
    ]


def compare(live: Decision, shadow: Decision) -> str | None:
    """The kind of disagreement between two order decisions, or None."""
    if isinstance(live, Approved):
        return None if isinstance(shadow, Approved) else APPROVED_TO_REJECTED
    if isinstance(shadow, Approved):
        return REJECTED_TO_APPROVED
    assert isinstance(live, Rejected)
    if live.rule != shadow.rule:
        return RULE
    if live.suggested_size != shadow.suggested_size:
        return SIZE
    return None


class ShadowPolicy:
    """Evaluates ``policy`` beside the live one; ``report`` gets each
    :class:`Disagreement` (the kernel publishes it on ``risk.shadow``)."""

    def __init__(
        self, policy: RiskPolicy, report: Callable[[Disagreement], None] | None = None
    ) -> None:
        self.policy = policy
        # The shadow's order windows count what the live policy approved.
        policy.count_approvals = False
        self.report = report
        self.stats = ShadowStats()
        self.errors: list[str] = []  # the first few, for the summary

    @property
    def digest(self) -> str:
        return self.policy.digest

    def _disagree(self, disagreement: Disagreement) -> None:
        self.stats.disagreements[disagreement.kind] += 1
        if self.report is not None:
            self.report(disagreement)

    def _error(self, stage: str, exc: BaseException) -> None:
        self.stats.disagreements[ERROR] += 1
        if len(self.errors) < 5:
            self.errors.append(f"{stage}: {type(exc).__name__}: {exc}")

    def live_approved(self, symbol: str, now_ns: int) -> None:
        """The live policy approved an order in ``symbol``: count it."""
        try:
            self.policy.record_order(symbol, now_ns)
        except Exception as exc:  # the shadow never stops the session
            self._error(ORDER, exc)

    def order(
        self,
        order: Order,
        portfolio: Portfolio,
        market: MarketData | None,
        now_ns: int,
        live: Decision,
    ) -> Disagreement | None:
        self.stats.orders += 1
        try:
            explanation = self.policy.explain(
                ORDER, portfolio=portfolio, now_ns=now_ns, order=order, market=market
            )
            shadow = explanation.decision
            assert shadow is not None
            kind = compare(live, shadow)
        except Exception as exc:  # a shadow that cannot decide is only counted
            self._error(ORDER, exc)
            return None
        if kind is not None and isinstance(shadow, Rejected) and shadow.rule == FAIL_CLOSED:
            # The shadow failed (a pack that raised, no verdict): its error,
            # not a policy that decides otherwise.
            self._error(ORDER, RuntimeError(shadow.reason))
            return None
        if kind is None:
            return None
        found = Disagreement(
            kind,
            ORDER,
            order.symbol,
            now_ns,
            decision_dict(live),
            {**decision_dict(shadow), "trace": _trace(explanation)},
            order.client_order_id,
        )
        self._disagree(found)
        return found

    def tick(
        self, tick: MarketData, book: Book, now_ns: int, live: Sequence[RiskAction]
    ) -> Disagreement | None:
        """A tick: ``book`` is the kernel's tracker (the shadow answers from
        it as the live policy does, at no cost for a symbol not held)."""
        position = book.position(tick.symbol)
        if position is None or position.qty == 0:
            return None
        self.stats.ticks += 1
        try:
            shadow = self.policy.on_tracked_tick(tick, book, now_ns)
            if _action_keys(shadow) == _action_keys(live):
                return None
            # Only now the trace: a tick evaluation has no side effects.
            explanation = self.policy.explain(
                TICK, portfolio=book.snapshot(), now_ns=now_ns, market=tick
            )
        except Exception as exc:
            self._error(TICK, exc)
            return None
        found = Disagreement(
            ACTIONS,
            TICK,
            tick.symbol,
            now_ns,
            {"actions": _actions(live)},
            {"actions": _actions(shadow), "trace": _trace(explanation)},
        )
        self._disagree(found)
        return found

    def fill(
        self,
        fill: Fill,
        portfolio: Portfolio,
        now_ns: int,
        stop_out: bool,
        live: Sequence[RiskAction],
    ) -> Disagreement | None:
        self.stats.fills += 1
        try:
            # on_fill counts the stop-out in the shadow's own windows, as it happened.
            shadow = self.policy.on_fill(fill, portfolio, now_ns, stop_out)
        except Exception as exc:
            self._error(FILL, exc)
            return None
        if _action_keys(shadow) == _action_keys(live):
            return None
        found = Disagreement(
            ACTIONS,
            FILL,
            fill.symbol,
            now_ns,
            {"actions": _actions(live)},
            {"actions": _actions(shadow)},
            fill.client_order_id,
        )
        self._disagree(found)
        return found

    def close(self) -> None:
        self.policy.close()
