"""The condition language's tree, its bounds and kinds, and its meaning in Python.

This module holds what every stage of the language shares (see
:mod:`bot4.risk.expr`, which parses into it and re-exports all of it):

* the bounds (``MAX_MAGNITUDE`` and the size limits) and what names look like
  (``FACT_NAME``, ``PARAM_NAME``);
* the kinds of value (``NUMBER``, ``BOOL``, ``STRING``; ``Value``) and
  :class:`ExprError`, the one error of the language;
* the node types (``Const``, ``Fact``, ``Arith``, ``Div``, ``Compare``,
  ``BoolOp``, ``Not``; their union ``Node``), :func:`kind`, and the walkers
  :func:`facts_of` and :func:`params_of`;
* :func:`evaluate`, the tree evaluated in Python with the engine's arithmetic
  (doubles, division as multiplication by the reciprocal), for suggested
  sizes, constant folding and as an independent check in the fuzz tests.

It imports nothing of bot4's, so the parser (:mod:`bot4.risk.expr`), the
translation to durable-rules (:mod:`bot4.risk.expr_durable`) and the quiet
ranges (:mod:`bot4.risk.expr_quiet`) all build on it without a cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

__all__ = [
    "BOOL",
    "FACT_NAME",
    "MAX_MAGNITUDE",
    "MAX_MULTIPLICATIONS",
    "MAX_NODES",
    "MAX_SOURCE",
    "NUMBER",
    "PARAM_NAME",
    "STRING",
    "SWAPPED_SIDES",
    "Arith",
    "BoolOp",
    "Compare",
    "Const",
    "Div",
    "ExprError",
    "Fact",
    "Node",
    "Not",
    "Value",
    "evaluate",
    "facts_of",
    "kind",
    "params_of",
]

# Facts and constants are bounded in magnitude and a condition may hold only a
# few multiplications, so no intermediate value can overflow to infinity (and
# then to NaN, which durable-rules silently matches against nothing).
MAX_MAGNITUDE = 1e15
MAX_MULTIPLICATIONS = 8
MAX_NODES = 64
MAX_SOURCE = 2000

FACT_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
PARAM_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

NUMBER = "number"
BOOL = "bool"
STRING = "string"

Value = float | bool | str


class ExprError(Exception):
    """A condition is not in the language. ``line`` is relative to the
    expression text (1 = its first line)."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


# --- the tree -------------------------------------------------------------------


@attrs.frozen(slots=True)
class Const:
    value: Value
    name: str = ""  # the parameter it came from, for messages and traces

    @property
    def kind(self) -> str:
        return _kind_of(self.value)


@attrs.frozen(slots=True)
class Fact:
    name: str
    kind: str


@attrs.frozen(slots=True)
class Arith:
    op: str  # "+", "-", "*"
    left: Node
    right: Node


@attrs.frozen(slots=True)
class Div:
    """Division; only in Python-evaluated expressions (suggested sizes)."""

    left: Node
    right: Node


@attrs.frozen(slots=True)
class Compare:
    op: str  # "<", "<=", ">", ">=", "==", "!="
    left: Node
    right: Node


@attrs.frozen(slots=True)
class BoolOp:
    op: str  # "and", "or"
    items: tuple[Node, ...]


@attrs.frozen(slots=True)
class Not:
    item: Node


Node = Const | Fact | Arith | Div | Compare | BoolOp | Not

# The comparison that holds with its two sides swapped (a < b  <=>  b > a):
# the translation and the guards both turn "constant op fact" into "fact op constant".
SWAPPED_SIDES = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _kind_of(value: object) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, (int, float)):
        return NUMBER
    return STRING


def kind(node: Node) -> str:
    if isinstance(node, Const):
        return node.kind
    if isinstance(node, Fact):
        return node.kind
    if isinstance(node, (Arith, Div)):
        return NUMBER
    return BOOL


def _names(node: Node, pick: Callable[[Node], str | None]) -> list[str]:
    """The names ``pick`` finds in the tree, in order of appearance, without repeats."""
    seen: dict[str, None] = {}

    def walk(n: Node) -> None:
        name = pick(n)
        if name:
            seen.setdefault(name, None)
        elif isinstance(n, (Arith, Div, Compare)):
            walk(n.left)
            walk(n.right)
        elif isinstance(n, BoolOp):
            for item in n.items:
                walk(item)
        elif isinstance(n, Not):
            walk(n.item)

    walk(node)
    return list(seen)


def facts_of(node: Node) -> list[str]:
    """Fact names in the order they appear, without repeats."""
    return _names(node, lambda n: n.name if isinstance(n, Fact) else None)


def params_of(node: Node) -> list[str]:
    """Named thresholds (params) in the order they appear, without repeats."""
    return _names(node, lambda n: n.name if isinstance(n, Const) else None)


# --- evaluation in Python -----------------------------------------------------------


def evaluate(node: Node, facts: Mapping[str, Value]) -> Value | None:
    """Evaluate with the engine's arithmetic. ``None`` means undefined (a
    division by zero in a suggested-size expression)."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Fact):
        return facts[node.name]
    if isinstance(node, Arith):
        a, b = evaluate(node.left, facts), evaluate(node.right, facts)
        if a is None or b is None:
            return None
        fa, fb = float(a), float(b)
        return fa + fb if node.op == "+" else fa - fb if node.op == "-" else fa * fb
    if isinstance(node, Div):
        a, b = evaluate(node.left, facts), evaluate(node.right, facts)
        if a is None or b is None or float(b) == 0.0:
            return None
        return float(a) / float(b)
    if isinstance(node, Compare):
        a, b = evaluate(node.left, facts), evaluate(node.right, facts)
        if a is None or b is None:
            return False
        if isinstance(a, str) or isinstance(b, str) or node.op in ("==", "!="):
            equal = a == b
            return equal if node.op == "==" else not equal
        fa, fb = float(a), float(b)
        op = node.op
        return (
            fa < fb if op == "<" else fa <= fb if op == "<=" else fa > fb if op == ">" else fa >= fb
        )
    if isinstance(node, BoolOp):
        if node.op == "and":
            return all(evaluate(i, facts) is True for i in node.items)
        return any(evaluate(i, facts) is True for i in node.items)
    return evaluate(node.item, facts) is not True
