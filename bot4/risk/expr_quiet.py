"""Guards and quiet ranges: where a stage's rules provably cannot fire.

This module holds :class:`Guard` (a condition of the form ``fact op bound``),
:func:`guard_of` (a condition tree of :mod:`bot4.risk.expr_tree` as a guard,
or None) and :func:`quiet_ranges`, which turns a stage's guards into one
:class:`QuietRange` per fact: the values for which none of them holds.  When
every rule of a stage is a guard, the compiler keeps the ranges (narrowed
inward by more than a double can be off) on the stage's plan; the policy then
skips the engine for facts inside them (:mod:`bot4.risk.firing`), and the
price bands are worked out from them (:mod:`bot4.risk.band`).
:mod:`bot4.risk.expr` re-exports all of it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from bot4.risk.expr_tree import MAX_MAGNITUDE, NUMBER, SWAPPED_SIDES, Compare, Const, Fact, Node

__all__ = ["Guard", "QuietRange", "guard_of", "quiet_ranges"]

# --- guards: conditions simple enough to pre-check in Python ---------------------------

_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@attrs.frozen(slots=True)
class Guard:
    """A condition of the form ``fact op bound`` (op one of < <= > >=, the
    fact a number, the bound a constant)."""

    fact: str
    op: str
    bound: float


@attrs.frozen(slots=True)
class QuietRange:
    """Where a fact keeps every guard on it false: ``above(value, low) and
    below(value, high)``, also within +/-MAX_MAGNITUDE (NaN is never inside).
    ``value`` is the fact as the engine receives it, a double written so that
    the engine reads it back exactly (a test holds the engine's comparisons to
    Python's on the doubles next to every bound), so inside the range the
    engine fires none of the guarded rules."""

    fact: str
    low: float
    above: Callable[[float, float], bool] = attrs.field(eq=False)
    high: float
    below: Callable[[float, float], bool] = attrs.field(eq=False)


def guard_of(node: Node) -> Guard | None:
    """The condition as a :class:`Guard`, or None when it is anything else."""
    if not isinstance(node, Compare) or node.op not in _ORDERING:
        return None
    op, left, right = node.op, node.left, node.right
    if isinstance(left, Const) and isinstance(right, Fact):
        op, left, right = SWAPPED_SIDES[op], right, left
    if not (isinstance(left, Fact) and left.kind == NUMBER and isinstance(right, Const)):
        return None
    if isinstance(right.value, bool) or not isinstance(right.value, float):
        return None
    return Guard(left.name, op, right.value)


def quiet_ranges(guards: Sequence[Guard]) -> tuple[QuietRange, ...]:
    """One range per fact, in first-use order: the values for which none of
    ``guards`` holds. ``x < b`` needs ``x >= b``; ``x <= b`` needs ``x > b``;
    ``x > b`` needs ``x <= b``; ``x >= b`` needs ``x < b``. Of two lower (or
    upper) limits the tighter wins, and at an equal bound the strict one."""
    # fact -> [low, low is strict, high, high is strict]
    limits: dict[str, list[Any]] = {}
    for g in guards:
        lim = limits.setdefault(g.fact, [-MAX_MAGNITUDE, False, MAX_MAGNITUDE, False])
        if g.op in ("<", "<="):
            strict = g.op == "<="
            if g.bound > lim[0] or (g.bound == lim[0] and strict):
                lim[0], lim[1] = g.bound, strict
        else:
            strict = g.op == ">="
            if g.bound < lim[2] or (g.bound == lim[2] and strict):
                lim[2], lim[3] = g.bound, strict
    return tuple(
        QuietRange(
            fact,
            low,
            operator.gt if low_strict else operator.ge,
            high,
            operator.lt if high_strict else operator.le,
        )
        for fact, (low, low_strict, high, high_strict) in limits.items()
    )
