"""A parsed condition translated to durable-rules, and the vetted subset it keeps to.

This module holds :func:`to_durable` (a condition tree of
:mod:`bot4.risk.expr_tree` -> the engine's test for it, the value under ``m``)
and :func:`vet_condition`, the check every emitted test passes; the compiler
reaches both through :mod:`bot4.risk.expr`, which re-exports them.

Why so small: durable-rules is C that crashes on some inputs (a ``$div`` by
zero raises SIGFPE, joins across facts read out of bounds). The compiler only
ever emits this vetted subset: one fact per rule (no joins), ``$and``/``$or``,
the six comparisons, and ``$add``/``$sub``/``$mul`` over numbers and fields of
the same fact (``$m``). ``vet_condition`` re-checks every emitted condition
against that list as a second line of defence.

Durable-rules needs a plain field on the left of a comparison. ``a op b`` with
an expression on both sides becomes ``_z op (b - a)`` where ``_z`` is a field
that is always 0; for IEEE doubles this is exact, because a correctly rounded
subtraction is zero exactly when its operands are equal and never flips sign.
Durable-rules has no general negation either: every ``not`` is pushed down to
the comparisons first, and constant parts are folded away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from bot4.risk.expr_tree import (
    MAX_MAGNITUDE,
    SWAPPED_SIDES,
    Arith,
    BoolOp,
    Compare,
    Const,
    ExprError,
    Fact,
    Node,
    Not,
    evaluate,
)

__all__ = ["ZERO_FIELD", "Always", "Never", "to_durable", "vet_condition"]

# --- translation to durable-rules ------------------------------------------------------

ZERO_FIELD = "_z"

_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_DURABLE = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte", "!=": "$neq"}
_DURABLE_ARITH = {"+": "$add", "-": "$sub", "*": "$mul"}

Always = {ZERO_FIELD: 0.0}  # every posted fact carries _z = 0
Never = {ZERO_FIELD: 1.0}


def _push_not(node: Node, negate: bool) -> Node:
    """Move every ``not`` down to the comparisons, so the engine sees only
    ``$and``/``$or`` over comparisons (durable-rules has no general negation)."""
    if isinstance(node, Not):
        return _push_not(node.item, not negate)
    if isinstance(node, BoolOp):
        op = node.op if not negate else ("or" if node.op == "and" else "and")
        return BoolOp(op, tuple(_push_not(i, negate) for i in node.items))
    if isinstance(node, Compare):
        return Compare(_NEGATE[node.op], node.left, node.right) if negate else node
    if isinstance(node, Const):
        return Const(not node.value) if negate else node
    raise ExprError("internal: not a condition")


def _fold(node: Node) -> Node:
    """Fold constant comparisons and constant parts of and/or."""
    if isinstance(node, Compare) and isinstance(node.left, Const) and isinstance(node.right, Const):
        return Const(bool(evaluate(node, {})))
    if isinstance(node, BoolOp):
        items: list[Node] = []
        for item in (_fold(i) for i in node.items):
            if isinstance(item, Const):
                if node.op == "and" and item.value is False:
                    return Const(False)
                if node.op == "or" and item.value is True:
                    return Const(True)
                continue  # neutral element
            items.append(item)
        if not items:
            return Const(node.op == "and")
        return items[0] if len(items) == 1 else BoolOp(node.op, tuple(items))
    return node


def _operand(node: Node, key: Callable[[str], str]) -> Any:
    if isinstance(node, Const):
        value = node.value
        return (
            float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value
        )
    if isinstance(node, Fact):
        return {"$m": key(node.name)}
    if isinstance(node, Arith):
        return {
            _DURABLE_ARITH[node.op]: {
                "$l": _operand(node.left, key),
                "$r": _operand(node.right, key),
            }
        }
    raise ExprError("internal: not an operand")


def _test(node: Node, key: Callable[[str], str]) -> dict[str, Any]:
    if isinstance(node, Const):
        return dict(Always if node.value else Never)
    if isinstance(node, BoolOp):
        return {"$" + node.op: [_test(i, key) for i in node.items]}
    if not isinstance(node, Compare):
        raise ExprError("internal: not a condition")
    op, left, right = node.op, node.left, node.right
    if not isinstance(left, Fact) and isinstance(right, Fact):
        op, left, right = SWAPPED_SIDES[op], right, left
    if isinstance(left, Fact):
        field, rhs = key(left.name), _operand(right, key)
    else:
        # Durable-rules wants a field on the left: a op b  <=>  0 op (b - a).
        field, rhs = ZERO_FIELD, _operand(Arith("-", right, left), key)
    if op == "==":
        return {field: rhs}
    return {_DURABLE[op]: {field: rhs}}


def to_durable(node: Node, key: Callable[[str], str]) -> dict[str, Any]:
    """The durable-rules test for one condition (the value under ``m``)."""
    test = _test(_fold(_push_not(node, False)), key)
    vet_condition(test)
    return test


# --- the vetted subset -----------------------------------------------------------------

_FIELD = re.compile(r"^(_z|f[0-9]{1,4})$")


def vet_condition(test: object) -> None:
    """Refuse anything outside the subset this module emits. Called on every
    compiled condition; a failure here is a compiler bug, never sent to C."""
    if not isinstance(test, dict) or len(test) != 1:
        raise ExprError("internal: condition is not a one-key mapping")
    ((k, v),) = test.items()
    if k in ("$and", "$or"):
        if not isinstance(v, list) or not v:
            raise ExprError("internal: empty $and/$or")
        for item in v:
            vet_condition(item)
        return
    if k in ("$lt", "$lte", "$gt", "$gte", "$neq"):
        if not isinstance(v, dict) or len(v) != 1:
            raise ExprError("internal: comparison is not a one-key mapping")
        ((field, rhs),) = v.items()
        _vet_field(field)
        _vet_operand(rhs)
        return
    _vet_field(k)
    _vet_operand(v)


def _vet_field(field: object) -> None:
    if not isinstance(field, str) or not _FIELD.match(field):
        raise ExprError(f"internal: field {field!r} not allowed")


def _vet_operand(value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
            raise ExprError(f"internal: constant {value!r} out of range")
        return
    if isinstance(value, str):
        if len(value) > 100 or not value.isprintable():
            raise ExprError("internal: bad string constant")
        return
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        if k == "$m":
            _vet_field(v)
            return
        if k in ("$add", "$sub", "$mul") and isinstance(v, dict) and set(v) == {"$l", "$r"}:
            _vet_operand(v["$l"])
            _vet_operand(v["$r"])
            return
    raise ExprError(f"internal: operand {value!r} not allowed")
