"""Conditions evaluated exactly in Decimal: the confirmation of every risk decision.

Why this exists: the engine compares binary64 doubles. A Decimal fact becomes
the nearest double, so within about 1e-16 relative of a limit it can land on
the limit itself and pass a strict comparison it fails exactly (a
correlation of 0.70000000000000001 is sent as 0.7, and ``0.7 > 0.7`` is
false); a product such as ``portfolio.equity * max_position_fraction`` is
rounded again, and 0.02 is not a double at all. Rounding each fact towards
the side that rejects cannot fix this: it does nothing for the rounding of
the arithmetic and the parameters, and one fact (equity, price) is read by
several rules on different sides of their comparisons.

So every order decision of the engine is confirmed here before it stands:
the stage's rules are evaluated again, in rank order, exactly, on the Decimal
facts, and the first rule that holds decides (see :func:`exact_decider`); in
the common case that is the rule the engine named. An approval that cannot
be confirmed (:class:`ExactError`) is refused; a rejection that cannot be
confirmed stands as the engine gave it. On ticks and fills (the ladder, the
breaker) the actions are the rules whose condition holds exactly
(:func:`holds`, rule by rule; where one cannot be told, the engine's answer).

Exact means: facts are the Decimal values bot4 computed (in
:data:`bot4.risk.facts.FACT_CONTEXT`); packs' floats and window counts are
taken at their exact binary value; thresholds are the shortest decimal that
reads back as their double (what the rule file says, unless it gives more
than 17 digits); a literal in a condition is read from its text; comparisons
of Decimals, ints and floats are exact in Python; ``+ - *`` run in a
:data:`EXACT_DIGITS`-digit context that traps Inexact (a result needing more
digits raises, and the order is refused, fail closed); division, only by a
constant, is correctly rounded to :data:`DIVISION_DIGITS` digits.

The conditions of a stage are compiled once per policy into one Python
function (the trees are walked at load time, never per decision) that
returns the index of the first rule holding, so the confirmation costs a few
dictionary reads and Decimal operations per rule ranked up to the decider.
The generated code only ever holds fact names (checked against
:data:`bot4.risk.expr.FACT_NAME`, written with ``repr``), operators, and
references to pre-built constants; nothing of the rule file's text is pasted
into it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping, Sequence
from decimal import (
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    getcontext,
    setcontext,
)
from typing import Any, TypeVar

import attrs

from bot4.errors import RiskError
from bot4.risk import expr

EXACT_DIGITS = 2000
DIVISION_DIGITS = 100

# Products of facts below 1e15 with a few dozen digits each stay far below
# EXACT_DIGITS; Inexact is trapped so an exactness failure is never silent.
_EXACT = Context(prec=EXACT_DIGITS, Emax=999_999, Emin=-999_999)
_EXACT.traps[Inexact] = True
_EXACT.traps[InvalidOperation] = True
_EXACT.traps[DivisionByZero] = True
_EXACT.traps[Overflow] = True
_DIVIDE = Context(prec=DIVISION_DIGITS, Emax=999_999, Emin=-999_999)

Check = Callable[[Mapping[str, object]], bool]
R = TypeVar("R")
T = TypeVar("T")


class ExactError(RiskError):
    """A condition cannot be evaluated exactly (a missing or non-numeric fact,
    an operation outside exact range). The decision fails closed."""


def to_decimal(value: object) -> Decimal:
    """A numeric fact as a Decimal, exactly (a float at its binary value)."""
    if isinstance(value, Decimal) and value.__class__ is Decimal:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ExactError(f"not a number: {value!r}")
    result = Decimal(value)
    if not result.is_finite():
        raise ExactError(f"not a finite number: {value!r}")
    return result


def _param(value: expr.Value) -> object:
    if isinstance(value, (bool, str)):
        return value
    return Decimal(repr(float(value)))


class _Codegen:
    """Python source for one condition, over ``f`` (the facts)."""

    def __init__(
        self,
        source: str,
        params: Mapping[str, expr.Value],
        prefix: str,
    ) -> None:
        self.source = source
        self.params = params
        self.prefix = prefix
        self.consts: dict[str, object] = {}

    def const(self, value: object) -> str:
        name = f"{self.prefix}{len(self.consts)}"
        self.consts[name] = value
        return name

    def dotted(self, node: ast.AST) -> str:
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise ExactError("not a fact name")
        parts.append(node.id)
        name = ".".join(reversed(parts))
        if not expr.FACT_NAME.match(name):
            raise ExactError(f"not a fact name: {name!r}")
        return name

    def boolean(self, node: ast.AST) -> str:
        """An expression in a true/false position."""
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + op.join(self.boolean(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return f"(not {self.boolean(node.operand)})"
        if isinstance(node, ast.Compare):
            left = self.value(node.left)
            parts = []
            for cmp_op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.value(comparator)
                parts.append(f"({left} {_OPS[type(cmp_op)]} {right})")
                left = right
            return "(" + " and ".join(parts) + ")"
        if isinstance(node, ast.Attribute):  # a bare boolean fact means "is true"
            return f"(f[{self.dotted(node)!r}] is True)"
        if isinstance(node, ast.Name):
            if node.id in ("true", "True"):
                return "True"
            if node.id in ("false", "False"):
                return "False"
            return f"({self.const(_param(self.params[node.id]))} is True)"
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return repr(node.value)
        raise ExactError(f"unsupported condition ({type(node).__name__})")

    def value(self, node: ast.AST) -> str:
        """An operand of a comparison: a number, a string or a boolean."""
        if isinstance(node, ast.Attribute):
            # As given: Python compares Decimals, ints and floats exactly.
            return f"f[{self.dotted(node)!r}]"
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        ):
            return self.boolean(node)
        return self.number(node)

    def number(self, node: ast.AST) -> str:
        if isinstance(node, ast.Attribute):
            # Arithmetic needs Decimals: a float fact (a pack's, a window
            # count) becomes one at its exact binary value.
            return f"(_v if (_v := f[{self.dotted(node)!r}]).__class__ is not FL else N(_v))"
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return repr(value)
            if isinstance(value, str):
                return self.const(value)
            if isinstance(value, (int, float)):
                text = ast.get_source_segment(self.source, node)
                try:
                    exact = Decimal(text) if text is not None else Decimal(repr(value))
                except InvalidOperation:  # e.g. 1_000 (Python allows, Decimal does not)
                    exact = Decimal(repr(value))
                return self.const(exact)
            raise ExactError(f"unsupported literal {value!r}")
        if isinstance(node, ast.Name):
            if node.id in ("true", "True", "false", "False"):
                return str(node.id in ("true", "True"))
            return self.const(_param(self.params[node.id]))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return f"(-{self.number(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return self.number(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = self.number(node.left), self.number(node.right)
            if isinstance(node.op, ast.Add):
                return f"({left} + {right})"
            if isinstance(node.op, ast.Sub):
                return f"({left} - {right})"
            if isinstance(node.op, ast.Mult):
                return f"({left} * {right})"
            if isinstance(node.op, ast.Div):
                return f"Q({left}, {right})"
        raise ExactError(f"unsupported expression ({type(node).__name__})")


_OPS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}

_NAMESPACE: dict[str, Any] = {
    "__builtins__": {},
    "N": to_decimal,
    "FL": float,
    "Q": _DIVIDE.divide,
}


@attrs.frozen(slots=True)
class ExactCondition:
    """One condition as Python source over ``f`` (the facts) and the
    constants it names; ``check`` evaluates it alone (traces)."""

    body: str
    consts: Mapping[str, object]
    check: Check = attrs.field(eq=False, repr=False)


def compile_condition(
    source: object, params: Mapping[str, expr.Value], prefix: str = "k"
) -> ExactCondition:
    """The condition ``source`` (already accepted by :func:`bot4.risk.expr.parse`
    with the same ``params``), evaluated exactly. Its
    constants are named ``<prefix><n>``: a prefix unique to the rule lets the
    conditions of a stage share one function (:func:`compile_first`)."""
    if isinstance(source, bool):
        body, consts = repr(source), {}
    elif isinstance(source, str):
        text = source.strip()
        gen = _Codegen(text, params, prefix)
        body, consts = gen.boolean(ast.parse(text, mode="eval").body), gen.consts
    else:
        raise ExactError(f"a condition is text, not {type(source).__name__}")
    check: Check = _generate(f"def check(f):\n    return {body}\n", consts)["check"]
    return ExactCondition(body, consts, check)


def _generate(code: str, consts: Mapping[str, object]) -> dict[str, Any]:
    namespace = {**_NAMESPACE, **consts}
    # Generated from the checked tree only (see the module docstring).
    exec(compile(code, "<exact condition>", "exec"), namespace)
    return namespace


First = Callable[[Mapping[str, object]], int]


def compile_first(conditions: Sequence[ExactCondition]) -> First:
    """One function for a stage: the index of the first condition holding, -1
    when none does."""
    lines = ["def first(f):"]
    consts: dict[str, object] = {}
    for index, condition in enumerate(conditions):
        if set(condition.consts) & set(consts):
            raise ExactError("internal: two conditions share a constant name")
        consts.update(condition.consts)
        lines.append(f"    if {condition.body}:\n        return {index}")
    lines.append("    return -1\n")
    first: First = _generate("\n".join(lines), consts)["first"]
    return first


def _run(function: Callable[[Mapping[str, object]], T], facts: Mapping[str, object]) -> T:
    saved = getcontext()
    setcontext(_EXACT)
    try:
        return function(facts)
    except KeyError as exc:
        raise ExactError(f"fact {exc.args[0]} has no value here") from None
    except (ArithmeticError, TypeError) as exc:
        raise ExactError(f"cannot compare exactly: {type(exc).__name__}: {exc}") from None
    finally:
        setcontext(saved)


def holds(condition: ExactCondition | None, facts: Mapping[str, object]) -> bool:
    """Whether one condition holds exactly. ExactError when it cannot be told
    (a fact missing, a value outside exact range)."""
    if condition is None:
        raise ExactError("the rule has no exact form")
    return _run(condition.check, facts) is True


def exact_decider(rules: Sequence[R], first: First | None, facts: Mapping[str, object]) -> R | None:
    """The rule that decides exactly: the first of ``rules`` (ranked, the
    stage's rules that ``first`` was compiled from) whose condition holds in
    Decimal. None: no rule holds."""
    if first is None:
        raise ExactError("the stage has no exact form")
    index = _run(first, facts)
    return rules[index] if index >= 0 else None
