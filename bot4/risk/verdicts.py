"""The decisions the order gate hands back, built once a rule has decided.

:func:`approved` is ``Approved(order=..., rules=...)`` without attrs' frozen
``__init__`` (an approval is built for every approved order);
:func:`rejection` is the rejection a rule gives, with its reason rendered
and, for a size limit, the size that would pass (``suggested_size``).
``FAIL_CLOSED`` names the rule of every rejection that no rule gave (an
error, a broken pack, no verdict). :class:`~bot4.risk.policy.RiskPolicy`
decides which one applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from typing import Any

from bot4.model import Approved, Order, Rejected
from bot4.risk import expr
from bot4.risk.compiler import Rule, render
from bot4.risk.facts import convert

__all__ = ["FAIL_CLOSED", "SIZE_QUANTUM", "approved", "rejection"]

FAIL_CLOSED = "fail-closed"
SIZE_QUANTUM = Decimal("0.00000001")

# Approved's slots set directly: its attrs __init__ (frozen, so through
# object.__setattr__ per field) costs more than the rest of an approval, and
# it has no converter or validator to skip (a test holds the result equal to
# the class's own).
_new = object.__new__
_approved_order = Approved.__dict__["order"].__set__
_approved_rules = Approved.__dict__["rules"].__set__


def approved(order: Order, rules: tuple[str, ...]) -> Approved:
    """``Approved(order=order, rules=rules)``."""
    decision: Approved = _new(Approved)
    _approved_order(decision, order)
    _approved_rules(decision, rules)
    return decision


def _step_below(qty: Decimal) -> Decimal:
    """The largest multiple of SIZE_QUANTUM strictly below ``qty`` (0 if none)."""
    steps = (qty / SIZE_QUANTUM).to_integral_value(rounding=ROUND_CEILING) - 1
    return steps * SIZE_QUANTUM if steps > 0 else Decimal(0)


def rejection(rule: Rule, raw: Mapping[str, object], order: Order) -> Rejected:
    """``order`` rejected by ``rule``, whose facts are in ``raw``."""
    facts = convert(raw, rule.facts)
    values: dict[str, Any] = dict(facts)
    suggested = Decimal(0)
    if rule.suggested is not None:
        value = expr.evaluate(rule.suggested, facts)
        if isinstance(value, float) and value > 0:
            size = Decimal(repr(value))
            if size >= order.qty:
                # Near a limit the doubles can say the rejected size itself
                # fits; the suggestion stays strictly below it (one step of
                # SIZE_QUANTUM), so a size-cut retry never resubmits the same
                # order.
                suggested = _step_below(order.qty)
            else:
                # Round down so the suggestion passes the limit it came from
                # (and stays below the rejected size).
                suggested = size.quantize(SIZE_QUANTUM, rounding=ROUND_DOWN)
            # 0.04000000 reads as 0.04; never as 4E-2 or 1E+2.
            suggested = (
                suggested.normalize()
                if suggested != suggested.to_integral()
                else suggested.quantize(Decimal(1))
            )
    reason = render(rule.reason, {**rule.params, **facts, "suggested_size": suggested})
    return Rejected(
        rule=rule.name, reason=reason, suggested_size=suggested, values=values, order=order
    )
