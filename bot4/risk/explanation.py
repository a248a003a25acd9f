"""What ``bot4 rules eval`` shows of one evaluation: the outcome and its trace.

An :class:`Explanation` is the outcome of one stage (an order's decision, or a
tick's or a fill's risk actions), the rule that decided, one
:class:`TraceEntry` per rule of the stage, fired or not, with the values it
read, and every fact. :func:`explanation_of` builds one from what
:class:`~bot4.risk.policy.RiskPolicy` worked out on its traced path (the
trading path builds none). Scenario tests, coverage and shadow policies read
them.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from bot4.model import Decision, RiskAction
from bot4.risk.compiler import Rule, StagePlan
from bot4.risk.expr import Value
from bot4.risk.facts import convert_all

__all__ = ["Explanation", "TraceEntry", "explanation_of"]


@attrs.frozen(slots=True)
class TraceEntry:
    rule: str
    where: str
    outcome: str
    fired: bool
    decided: bool
    condition: str
    values: Mapping[str, Value]


@attrs.frozen(slots=True)
class Explanation:
    """Everything ``bot4 rules eval`` prints: the outcome, the rule that
    decided, every rule evaluated (fired or not) and all facts."""

    stage: str
    decision: Decision | None
    actions: tuple[RiskAction, ...]
    decided_by: str | None
    trace: tuple[TraceEntry, ...]
    facts: Mapping[str, Value]


def explanation_of(
    stage: str,
    plan: StagePlan,
    fired: list[Rule],
    decider: Rule | None,
    raw: Mapping[str, object],
    decision: Decision | None,
    actions: tuple[RiskAction, ...],
) -> Explanation:
    """The trace of one evaluation of ``stage``: ``fired`` are the rules that
    held, ``decider`` the one that decided (if any), ``raw`` the facts as the
    rules saw them."""
    facts = convert_all(raw)
    fired_names = {r.name for r in fired}
    entries = tuple(
        TraceEntry(
            rule=r.name,
            where=r.where,
            outcome=r.action.value if r.action is not None else r.outcome,
            fired=r.name in fired_names,
            decided=decider is not None and r.name == decider.name,
            condition=r.when_source,
            values={n: facts[n] for n in r.facts if n in facts},
        )
        for r in plan.rules
    )
    return Explanation(
        stage=stage,
        decision=decision,
        actions=actions,
        decided_by=decider.name if decider is not None else None,
        trace=entries,
        facts=dict(facts),
    )
