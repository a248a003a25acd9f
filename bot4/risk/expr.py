"""The condition language of rule files: parsing a condition into its tree.

A condition is one Python-like expression over named facts and parameters::

    position.notional_after > portfolio.equity * max_fraction
    not order.has_stop_loss
    order.side == "buy" and order.stop_loss >= order.price

Dotted names are facts (``order.qty``), bare names are the rule's parameters
(thresholds as data), literals are numbers, ``true``/``false`` and strings.
Operators: ``and or not``, ``< <= > >= == !=`` (chains allowed), ``+ - *``,
and ``/`` only by a non-zero constant (compiled as a multiplication by its
reciprocal). Anything else is refused with the file and line.

This module holds :func:`parse` (source text, read with Python's :mod:`ast`
and vetted node by node, -> a tree) and :func:`check_number`, and re-exports
the names of the modules the language is built from, so
``from bot4.risk.expr import ...`` (or ``expr.X``) stays the one import for
all of them:

* :mod:`bot4.risk.expr_tree`: the bounds, kinds and :class:`ExprError`, the
  node types, the walkers (``facts_of``, ``params_of``) and :func:`evaluate`,
  the tree evaluated in Python with the engine's arithmetic;
* :mod:`bot4.risk.expr_durable`: :func:`to_durable`, the translation to
  durable-rules, and :func:`vet_condition`, the check of the small vetted
  subset it emits (why so small: durable-rules is C that crashes on some
  inputs);
* :mod:`bot4.risk.expr_quiet`: guards (``fact op constant``) and the quiet
  ranges where none of a stage's guards holds, which skip the engine and make
  the price bands.

:mod:`bot4.risk.expr_tree` imports nothing of bot4's, and the other two import
only it, never this module, so there is no cycle.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Iterable, Mapping

from bot4.risk.expr_durable import ZERO_FIELD, Always, Never, to_durable, vet_condition
from bot4.risk.expr_quiet import Guard, QuietRange, guard_of, quiet_ranges
from bot4.risk.expr_tree import (
    BOOL,
    FACT_NAME,
    MAX_MAGNITUDE,
    MAX_MULTIPLICATIONS,
    MAX_NODES,
    MAX_SOURCE,
    NUMBER,
    PARAM_NAME,
    STRING,
    Arith,
    BoolOp,
    Compare,
    Const,
    Div,
    ExprError,
    Fact,
    Node,
    Not,
    Value,
    evaluate,
    facts_of,
    kind,
    params_of,
)
from bot4.suggest import did_you_mean

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
    "ZERO_FIELD",
    "Always",
    "Arith",
    "BoolOp",
    "Compare",
    "Const",
    "Div",
    "ExprError",
    "Fact",
    "Guard",
    "Never",
    "Node",
    "Not",
    "QuietRange",
    "Value",
    "check_number",
    "evaluate",
    "facts_of",
    "guard_of",
    "kind",
    "params_of",
    "parse",
    "quiet_ranges",
    "to_durable",
    "vet_condition",
]

# --- parsing -----------------------------------------------------------------------

_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def check_number(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ExprError(f"{what} must be a finite number, not {value!r}")
    if abs(value) > MAX_MAGNITUDE:
        raise ExprError(f"{what} {value!r} is larger than {MAX_MAGNITUDE:g} in magnitude")
    return float(value)


class _Parser:
    def __init__(
        self,
        fact_kind: Callable[[str], str | None],
        params: Mapping[str, Value],
        allow_division: bool,
        known_facts: Iterable[str] = (),
    ) -> None:
        self.fact_kind = fact_kind
        self.known_facts = known_facts  # for "did you mean" only
        self.params = params
        self.allow_division = allow_division
        self.count = 0

    def fail(self, node: ast.AST, message: str) -> ExprError:
        return ExprError(message, getattr(node, "lineno", 1))

    def dotted(self, node: ast.AST) -> str | None:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name):
            parts.append(node.id)
            return ".".join(reversed(parts))
        return None

    def parse(self, node: ast.AST) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.fail(node, f"expression has more than {MAX_NODES} parts; split the rule")
        if isinstance(node, ast.BoolOp):
            op = "and" if isinstance(node.op, ast.And) else "or"
            items = tuple(self.boolean(v) for v in node.values)
            return BoolOp(op, items)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return Not(self.boolean(node.operand))
            if isinstance(node.op, ast.USub):
                inner = self.number(node.operand)
                if isinstance(inner, Const):
                    return Const(-float(inner.value), inner.name)
                return Arith("-", Const(0.0), inner)
            if isinstance(node.op, ast.UAdd):
                return self.number(node.operand)
            raise self.fail(node, "unsupported operator (use and, or, not, + - * /)")
        if isinstance(node, ast.Compare):
            left = self.parse(node.left)
            parts: list[Node] = []
            for cmp_op, comparator in zip(node.ops, node.comparators, strict=True):
                symbol = _CMP.get(type(cmp_op))
                if symbol is None:
                    raise self.fail(node, "unsupported comparison (use < <= > >= == !=)")
                right = self.parse(comparator)
                parts.append(self.comparison(node, symbol, left, right))
                left = right
            return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Div):
                left = self.number(node.left)
                right = self.number(node.right)
                if self.allow_division:
                    return Div(left, right)
                if not isinstance(right, Const):
                    raise self.fail(
                        node,
                        "division by a fact is not allowed in a condition (durable-rules "
                        "crashes on a zero divisor); multiply the other side instead",
                    )
                if float(right.value) == 0.0:
                    raise self.fail(node, "division by zero")
                return self.arith(node, "*", left, Const(1.0 / float(right.value), right.name))
            symbol = _ARITH.get(type(node.op))
            if symbol is None:
                raise self.fail(node, "unsupported arithmetic (use + - * and / by a constant)")
            return self.arith(node, symbol, self.number(node.left), self.number(node.right))
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return Const(value)
            if isinstance(value, (int, float)):
                try:
                    return Const(check_number(float(value), "number"))
                except ExprError as exc:
                    raise self.fail(node, exc.message) from None
            if isinstance(value, str):
                if len(value) > 100 or not value.isprintable():
                    raise self.fail(node, "strings must be short and printable")
                return Const(value)
            raise self.fail(node, f"unsupported literal {value!r}")
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return Const(True)
            if node.id in ("false", "False"):
                return Const(False)
            if node.id not in self.params:
                known = ", ".join(sorted(self.params)) or "none"
                hint = did_you_mean(node.id, self.params)
                raise self.fail(node, f"unknown parameter {node.id!r} (parameters: {known}){hint}")
            value = self.params[node.id]
            return Const(value, node.id)
        if isinstance(node, ast.Attribute):
            name = self.dotted(node)
            if name is None or not FACT_NAME.match(name):
                raise self.fail(
                    node, "a fact is written as lower-case dotted names, e.g. order.qty"
                )
            fact_kind = self.fact_kind(name)
            if fact_kind is None:
                hint = did_you_mean(name, self.known_facts)
                raise self.fail(
                    node,
                    f"unknown fact {name!r} (not a bot4 fact, and no loaded risk pack "
                    f"provides it){hint}",
                )
            return Fact(name, fact_kind)
        raise self.fail(node, f"unsupported syntax ({type(node).__name__})")

    def boolean(self, node: ast.AST) -> Node:
        parsed = self.parse(node)
        if kind(parsed) != BOOL:
            raise self.fail(node, "expected a true/false condition here, not a number or string")
        if isinstance(parsed, Fact):
            return Compare("==", parsed, Const(True))  # a bare boolean fact means "is true"
        return parsed

    def number(self, node: ast.AST) -> Node:
        parsed = self.parse(node)
        if kind(parsed) != NUMBER:
            raise self.fail(node, "arithmetic needs numbers")
        return parsed

    def arith(self, node: ast.AST, op: str, left: Node, right: Node) -> Node:
        if isinstance(left, Const) and isinstance(right, Const):
            a, b = float(left.value), float(right.value)
            value = a + b if op == "+" else a - b if op == "-" else a * b
            try:
                return Const(check_number(value, "constant expression"))
            except ExprError as exc:
                raise self.fail(node, exc.message) from None
        return Arith(op, left, right)

    def comparison(self, node: ast.AST, op: str, left: Node, right: Node) -> Node:
        lk, rk = kind(left), kind(right)
        if lk != rk:
            raise self.fail(node, f"cannot compare a {lk} with a {rk}")
        if lk != NUMBER:
            if op not in ("==", "!="):
                raise self.fail(node, f"a {lk} can only be compared with == or !=")
            if not (isinstance(left, Const) or isinstance(right, Const)):
                raise self.fail(node, f"compare a {lk} fact with a literal, not with another fact")
            if isinstance(left, (Compare, BoolOp, Not)) or isinstance(
                right, (Compare, BoolOp, Not)
            ):
                raise self.fail(node, "compare facts, not conditions")
        return Compare(op, left, right)


def parse(
    source: object,
    fact_kind: Callable[[str], str | None],
    params: Mapping[str, Value],
    *,
    expect: str = BOOL,
    allow_division: bool = False,
    known_facts: Iterable[str] = (),
) -> Node:
    """Parse one expression. ``source`` may be a string, a bool (``when: true``)
    or a number (``suggested_size: 0``)."""
    if isinstance(source, bool):
        tree: Node = Const(source)
    elif isinstance(source, (int, float)):
        tree = Const(check_number(float(source), "number"))
    elif isinstance(source, str):
        if len(source) > MAX_SOURCE:
            raise ExprError(f"expression longer than {MAX_SOURCE} characters")
        if "\x00" in source:
            raise ExprError("expression contains a NUL character")
        try:
            module = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise ExprError(f"syntax error: {exc.msg}", exc.lineno or 1) from None
        except (ValueError, RecursionError, MemoryError):
            raise ExprError("expression cannot be parsed") from None
        parser = _Parser(fact_kind, params, allow_division, known_facts)
        try:
            tree = parser.parse(module.body)
        except RecursionError:
            raise ExprError("expression nested too deeply") from None
    else:
        raise ExprError(f"expected an expression, got {type(source).__name__}")
    if expect == BOOL and kind(tree) != BOOL:
        if isinstance(tree, Fact):
            raise ExprError(f"{tree.name} is a {tree.kind}; a condition must be true/false")
        raise ExprError("a condition must be true/false (compare something)")
    if expect == NUMBER and kind(tree) != NUMBER:
        raise ExprError("expected a number")
    if isinstance(tree, Fact) and tree.kind == BOOL:
        return Compare("==", tree, Const(True))
    _count_multiplications(tree)
    return tree


def _count_multiplications(tree: Node) -> None:
    count = 0

    def walk(n: Node) -> None:
        nonlocal count
        if isinstance(n, Arith):
            count += n.op == "*"
            walk(n.left)
            walk(n.right)
        elif isinstance(n, (Div, Compare)):
            count += isinstance(n, Div)
            walk(n.left)
            walk(n.right)
        elif isinstance(n, BoolOp):
            for item in n.items:
                walk(item)
        elif isinstance(n, Not):
            walk(n.item)

    walk(tree)
    if count > MAX_MULTIPLICATIONS:
        raise ExprError(
            f"more than {MAX_MULTIPLICATIONS} multiplications in one expression "
            "(intermediate values could overflow)"
        )
