"""The condition language of rule files, and its translation to durable-rules.

A condition is one Python-like expression over named facts and parameters::

    position.notional_after > portfolio.equity * max_fraction
    not order.has_stop_loss
    order.side == "buy" and order.stop_loss >= order.price

Dotted names are facts (``order.qty``), bare names are the rule's parameters
(thresholds as data), literals are numbers, ``true``/``false`` and strings.
Operators: ``and or not``, ``< <= > >= == !=`` (chains allowed), ``+ - *``,
and ``/`` only by a non-zero constant (compiled as a multiplication by its
reciprocal). Anything else is refused with the file and line.

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

The same tree is evaluated in Python (``evaluate``) for suggested sizes and as
an independent check in the fuzz tests; it mirrors the engine's arithmetic
(doubles, division as multiplication by the reciprocal).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from bot4.suggest import did_you_mean

# Facts and constants are bounded in magnitude and a condition may hold only a
# few multiplications, so no intermediate value can overflow to infinity (and
# then to NaN, which durable-rules silently matches against nothing).
MAX_MAGNITUDE = 1e15
MAX_MULTIPLICATIONS = 8
MAX_NODES = 64
MAX_SOURCE = 2000

ZERO_FIELD = "_z"
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

_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_NEGATE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_DURABLE = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte", "!=": "$neq"}
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}
_DURABLE_ARITH = {"+": "$add", "-": "$sub", "*": "$mul"}


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


# --- parsing -----------------------------------------------------------------------


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
        op, left, right = _FLIP[op], right, left
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


# --- translation to durable-rules ------------------------------------------------------

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
        op, left, right = _FLIP[op], right, left
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
