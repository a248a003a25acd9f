"""The engine message of one evaluation: each fact's JSON text, and per stage
a generated encoder that writes them all.

Every value on its way into the message is validated here: a number must be
finite and within +/-:data:`~bot4.risk.expr.MAX_MAGNITUDE` (NaN fails both
comparisons, so it is refused too), a string short and printable, anything
else is refused by :func:`bot4.risk.facts.to_fact` with its error naming the
fact. NaN, infinities and huge numbers never reach the C engine.

:func:`field_text` is the one definition of a fact's text. It takes any
value and is what a stage falls back to. :func:`compile_encoder` builds, per
:class:`~bot4.risk.compiled.StagePlan`, one Python function that reads the
plan's fields in message order with the type each is declared as (a number,
a yes/no, a string) tested first, and puts the texts into the plan's
precompiled layout: no per-field loop, no list of texts. Any value not of
its field's declared type, and any value that fails a check, goes through
:func:`field_text`, so the message and the error are the same as the
generic path's (a test compares them on random facts).

Why a per-field memo of the last value: a float conversion and its ``repr``
cost a few hundred nanoseconds a number, and many facts are the very same
object decision after decision (the book's figures between two marks come
from one cached snapshot, an order's leverage is the shared ``ONE``). Each
number field keeps ``(value, text)`` of the last value it encoded, keyed by
identity; only exact ``Decimal``, ``float`` and ``int`` objects are kept
(immutable, so the text of the same object cannot change), and the pair is
one tuple so a reader never sees a value with another value's text. A value
that fails validation is never kept.

The generated code holds only fact names (checked against
:data:`bot4.risk.expr.FACT_NAME` and written with ``repr``), field indices
and references to the helpers below; nothing of a rule file's text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from bot4.errors import RiskError
from bot4.risk.engine import number as engine_number
from bot4.risk.expr import BOOL, FACT_NAME, MAX_MAGNITUDE, NUMBER, STRING
from bot4.risk.facts import encode

# A string fact value -> its text in an engine message. String facts take a
# handful of values (order.side, order.symbol); their JSON text (validation,
# json.dumps) costs more than a number's, so it is kept, boundedly.
STRING_TEXT: dict[str, str] = {}
STRING_TEXT_KEPT = 256

Encoder = Callable[[Mapping[str, object]], str]


def field_text(name: str, value: object) -> str:
    """The JSON text of fact ``name`` in an engine message. Raises RiskError
    naming the fact for a value that cannot be sent."""
    kind = type(value)
    if kind is Decimal or kind is float or kind is int:
        number = float(value)  # type: ignore[arg-type]
        if not -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE:  # also refuses NaN
            raise RiskError(f"fact {name} = {value} is not a finite number within range")
        text = repr(number)
        # The engine refuses an exponent without a fraction ("1e-05"):
        # engine.number writes it as it parses it.
        return engine_number(number) if "e" in text else text
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str) and kind is str:
        cached = STRING_TEXT.get(value)
        if cached is not None:
            return cached
        text = encode(name, value)  # validates; raises RiskError naming the fact
        if len(STRING_TEXT) >= STRING_TEXT_KEPT:
            STRING_TEXT.clear()
        STRING_TEXT[value] = text
        return text
    return encode(name, value)  # validates; raises RiskError naming the fact


def generic_body(
    fields: Sequence[tuple[str, str]],
    facts: Mapping[str, object],
    unknown: frozenset[str] = frozenset(),
) -> str:
    """The message body (without its closing brace) field by field, leaving
    out the fields of ``unknown`` facts (a rule reading one cannot match)."""
    parts = ['{"_z":0.0']
    for name, prefix in fields:
        if name in unknown:
            continue
        try:
            value = facts[name]
        except KeyError:
            raise RiskError(f"fact {name} has no value here") from None
        parts.append(prefix + field_text(name, value))
    return "".join(parts)


class _Unset:
    """The memo's value before a field has encoded anything (never a fact)."""


def compile_encoder(
    fields: Sequence[tuple[str, str]], kinds: Sequence[str], layout: str
) -> Encoder:
    """One function ``facts -> body`` giving what :func:`generic_body` gives
    with nothing unknown. ``kinds`` is each field's declared type (NUMBER,
    BOOL or STRING; anything else: no fast path), ``layout`` the message
    with a ``%s`` per field."""
    if len(kinds) != len(fields):
        raise ValueError("one kind per field")
    unset = _Unset()
    memo: list[tuple[object, str]] = [(unset, "")] * len(fields)
    lines = ["def encode(f):", "    m = M", "    try:"]
    for index, ((name, _), kind) in enumerate(zip(fields, kinds, strict=True)):
        if not FACT_NAME.match(name):
            raise ValueError(f"not a fact name: {name!r}")
        key, out = repr(name), f"s{index}"
        lines.append(f"        v = f[{key}]")
        if kind == NUMBER:
            lines += [
                f"        c = m[{index}]",
                "        if v is c[0]:",
                f"            {out} = c[1]",
                "        else:",
                "            t = v.__class__",
                "            if t is D or t is FL or t is I:",
                "                x = FL(v)",
                "                if -MAX <= x <= MAX:",
                f"                    {out} = repr(x)",
                f"                    if 'e' in {out}:",
                f"                        {out} = NUM(x)",
                f"                    m[{index}] = (v, {out})",
                "                else:",
                f"                    {out} = T({key}, v)  # raises, naming the fact",
                "            else:",
                f"                {out} = T({key}, v)",
            ]
        elif kind == BOOL:
            lines += [
                "        if v is True:",
                f"            {out} = 'true'",
                "        elif v is False:",
                f"            {out} = 'false'",
                "        else:",
                f"            {out} = T({key}, v)",
            ]
        elif kind == STRING:
            lines += [
                f"        {out} = ST.get(v) if v.__class__ is str else None",
                f"        if {out} is None:",
                f"            {out} = T({key}, v)",
            ]
        else:
            lines.append(f"        {out} = T({key}, v)")
    if not fields:
        lines.append("        pass")
    lines += [
        "    except KeyError as exc:",
        "        raise RE(f'fact {exc.args[0]} has no value here') from None",
    ]
    texts = "".join(f"s{i}, " for i in range(len(fields)))
    lines.append(f"    return L % ({texts})")
    namespace: dict[str, object] = {
        "__builtins__": {},
        "repr": repr,
        "M": memo,
        "D": Decimal,
        "FL": float,
        "I": int,
        "MAX": MAX_MAGNITUDE,
        "NUM": engine_number,
        "T": field_text,
        "ST": STRING_TEXT,
        "RE": RiskError,
        "KeyError": KeyError,
        "str": str,
        "L": layout,
    }
    # Generated from the plan's checked fact names only (see the module docstring).
    exec(compile("\n".join(lines) + "\n", "<engine message encoder>", "exec"), namespace)
    encoder: Encoder = namespace["encode"]  # type: ignore[assignment]
    return encoder
