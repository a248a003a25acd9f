"""Which rules of a stage fire for a set of facts: the engine, and the tests around it.

:func:`fire_rules` sends the facts to the stage's durable-rules session and
returns the rules that matched, ranked; it skips the engine when
:func:`is_quiet` shows that none can (every rule ``fact op constant``, every
fact inside the range where none holds: the common case on the ticks of a
held symbol). The engine compares doubles, so a rule at a limit can be missed
or matched by one rounding: :func:`exactly_fired` gives the rules whose
condition holds exactly in Decimal (:mod:`bot4.risk.exact`), which is what
risk actions and traces use. :class:`~bot4.risk.policy.RiskPolicy` calls
these on every order and every held tick, so they are plain functions with
the work inline.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from bot4.errors import RiskError
from bot4.risk import expr
from bot4.risk.compiler import Rule, StagePlan
from bot4.risk.engine import EngineRuleset
from bot4.risk.exact import ExactError, holds
from bot4.risk.message import generic_body

__all__ = ["exactly_fired", "fire_rules", "is_quiet"]


def is_quiet(ranges: tuple[expr.QuietRange, ...], facts: Mapping[str, object]) -> bool:
    """True when no rule of a guarded stage can fire: every rule is ``fact op
    constant`` and each fact is inside the range where none holds. The engine
    is then skipped (on the ticks of a held symbol the common case is a ladder
    far from any rung). Each value is converted as :func:`fire_rules` would
    send it, the ranges lie within the range fire_rules accepts, and the
    stage's fields are exactly the ranges' facts, so the answer is the
    engine's. Anything else gives False: the engine path then decides, and
    refuses a bad value with its error."""
    for r in ranges:
        value = facts.get(r.fact)
        kind = type(value)
        if kind is not Decimal and kind is not float and kind is not int:
            return False
        number = float(value)  # type: ignore[arg-type]
        if not (r.above(number, r.low) and r.below(number, r.high)):
            return False
    return True


def fire_rules(
    engine: EngineRuleset,
    plan: StagePlan,
    facts: Mapping[str, object],
    unknown: frozenset[str] = frozenset(),
) -> list[Rule]:
    """The rules of ``plan`` the engine fires for ``facts``, by rank; the
    facts in ``unknown`` (a pack failed to give them) are left out."""
    quiet = plan.quiet
    if quiet is not None and not unknown and is_quiet(quiet, facts):
        return []
    # Every value is validated and converted on its way into the message
    # (bot4.risk.message): NaN, infinities and huge numbers never reach C.
    # Unknown facts are left out; a rule reading one cannot match.
    body = generic_body(plan.fields, facts, unknown) if unknown else plan.encode(facts)
    keys = engine.fire(body)
    fired = []
    for key in keys:
        rule = plan.by_key.get(key)
        if rule is None:
            raise RiskError(f"engine fired unknown rule {key!r}")
        fired.append(rule)
    if len(fired) > 1:
        fired.sort(key=lambda r: r.rank)
    return fired


def exactly_fired(plan: StagePlan, fired: list[Rule], facts: Mapping[str, object]) -> list[Rule]:
    """The rules whose condition holds exactly (as the decision was made):
    a tick's or a fill's actions, an order's trace. A rule that cannot be
    evaluated exactly keeps the engine's answer (``fired``)."""
    out = []
    for rule in plan.rules:
        try:
            held = holds(rule.exact, facts)
        except ExactError:
            held = rule in fired
        if held:
            out.append(rule)
    return out
