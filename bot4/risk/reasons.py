"""Reason templates: checked when a rule file compiles, bounded when rendered.

A reason is text with ``{name}`` or ``{name:spec}`` placeholders, each naming
a fact, a parameter or ``suggested_size``; ``spec`` is Python's format-spec
mini-language. It becomes one line of a log, an event and a journal row, so
it is bounded twice:

* at compile time: a spec must parse, its width be at most MAX_FORMAT_WIDTH
  and its precision at most MAX_FORMAT_PRECISION (checked before ``format()``
  ever sees it: ``{x:100000000}`` would make every rejection 100 MB, and a
  larger width raises MemoryError), and the longest text the template can
  render, over every value a fact may take, at most MAX_REASON_CHARS;
* when rendered: the text is cut at MAX_REASON_CHARS all the same.

Every refusal is a RuleFileError at the reason's ``file:line``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from bot4.errors import RuleFileError
from bot4.risk import expr
from bot4.risk.expr import BOOL, NUMBER, STRING, Value
from bot4.risk.facts import describe

PLACEHOLDER = re.compile(r"\{([^{}:]*)(?::([^{}]*))?\}")
_SPEC = re.compile(
    r"^(?:(?P<fill>.)?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?"
    r"(?:\.(?P<precision>\d*))?[bcdeEfFgGnosxX%]?$",
    re.DOTALL,
)
MAX_TEMPLATE_CHARS = 500
MAX_FORMAT_WIDTH = 64
MAX_FORMAT_PRECISION = 20
MAX_REASON_CHARS = 1024

# A value of each kind, to try a spec on (a spec that cannot format it is refused).
_SAMPLE: dict[str, Value] = {NUMBER: 1.5, BOOL: True, STRING: "buy"}
# Values that make the longest text for a kind: the largest magnitude (fixed
# point), the smallest (exponents), many significant digits.
_WORST: dict[str, tuple[object, ...]] = {
    NUMBER: (
        -expr.MAX_MAGNITUDE,
        -(expr.MAX_MAGNITUDE - 0.125),
        -1.2345678901234567e-300,
        -5e-324,
        -0.12345678901234568,
        -123456.78901234567,
    ),
    BOOL: (True, False),
    STRING: ("x" * 100,),  # string facts are at most 100 characters
}
# suggested_size is a Decimal with at most eight places.
_SIZE_WORST = (Decimal("-999999999999999.99999999"), Decimal("0.00000001"))


def placeholders(template: object, path: str, line: int, label: str) -> list[tuple[str, str]]:
    """The ``(name, spec)`` of every placeholder; refuses a template that is
    not a short non-empty string or has an unmatched brace."""
    if not isinstance(template, str) or not template.strip():
        raise RuleFileError(path, line, f"{label}: reason must be a non-empty string")
    if len(template) > MAX_TEMPLATE_CHARS:
        raise RuleFileError(
            path, line, f"{label}: reason longer than {MAX_TEMPLATE_CHARS} characters"
        )
    found = [(m.group(1).strip(), m.group(2) or "") for m in PLACEHOLDER.finditer(template)]
    stripped = PLACEHOLDER.sub("", template)
    if "{" in stripped or "}" in stripped:
        raise RuleFileError(
            path, line, f"{label}: reason has an unmatched {{ or }} (format specs cannot nest)"
        )
    return found


def _check_spec(name: str, spec: str, path: str, line: int, label: str) -> None:
    match = _SPEC.match(spec)
    if match is None:
        raise RuleFileError(
            path, line, f"{label}: reason format {{{name}:{spec}}} is not a format spec"
        )
    for part, limit in (("width", MAX_FORMAT_WIDTH), ("precision", MAX_FORMAT_PRECISION)):
        digits = match.group(part) or ""
        if len(digits) > 6 or int(digits or 0) > limit:
            raise RuleFileError(
                path, line, f"{label}: reason format {{{name}:{spec}}}: {part} above {limit}"
            )


def _longest(samples: Sequence[object], spec: str) -> int:
    """The longest text ``spec`` makes of any sample (no spec: as render shows it)."""
    if not spec:
        return max(len(describe(v)) for v in samples)
    return max(len(format(v, spec)) for v in samples)


def check(
    names: Sequence[tuple[str, str]],
    template: str,
    path: str,
    line: int,
    label: str,
    params: Mapping[str, Value],
    fact_kind: Callable[[str], str | None],
) -> list[str]:
    """Check every placeholder of ``template`` (from :func:`placeholders`) and
    the longest text it can render. Returns the facts it names."""
    facts: list[str] = []
    rendered = len(PLACEHOLDER.sub("", template))
    for name, spec in names:
        _check_spec(name, spec, path, line, label)
        samples: Sequence[object]
        if name == "suggested_size":
            sample: Value = 1.5
            samples = _SIZE_WORST
        elif name in params:
            sample = params[name]
            samples = (sample,)  # a parameter's value is known
        else:
            kind = fact_kind(name)
            if kind is None:
                raise RuleFileError(
                    path,
                    line,
                    f"{label}: reason names {name!r}, which is neither a fact nor a parameter",
                )
            facts.append(name)
            sample = _SAMPLE[kind]
            samples = _WORST[kind]
        try:
            format(sample, spec)
            rendered += _longest(samples, spec)
        except (ValueError, TypeError) as exc:
            raise RuleFileError(
                path, line, f"{label}: reason format {{{name}:{spec}}}: {exc}"
            ) from None
    if rendered > MAX_REASON_CHARS:
        raise RuleFileError(
            path,
            line,
            f"{label}: reason can render to {rendered} characters; at most {MAX_REASON_CHARS}",
        )
    return facts


# A template split at its placeholders, once: ((literal before, name, spec),
# ...) and the literal after the last. Templates are the rules' own, so few;
# the bound only keeps a caller with endless templates from growing it.
_PARTS: dict[str, tuple[tuple[tuple[str, str, str], ...], str]] = {}
_PARTS_KEPT = 1024


def _parts(template: str) -> tuple[tuple[tuple[str, str, str], ...], str]:
    parts = _PARTS.get(template)
    if parts is None:
        pieces = []
        end = 0
        for match in PLACEHOLDER.finditer(template):
            name, spec = match.group(1).strip(), match.group(2) or ""
            pieces.append((template[end : match.start()], name, spec))
            end = match.end()
        parts = (tuple(pieces), template[end:])
        if len(_PARTS) >= _PARTS_KEPT:
            _PARTS.clear()
        _PARTS[template] = parts
    return parts


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a reason template. Names and specs were checked at compile time; a
    value that is somehow missing shows as ``?`` rather than failing the
    decision, and the text is never longer than MAX_REASON_CHARS. (Each
    placeholder is replaced as ``PLACEHOLDER.sub`` would, from the template's
    parts worked out once: a rejection renders its reason on the decision
    path.)"""
    pieces, tail = _parts(template)
    out: list[str] = []
    for literal, name, spec in pieces:
        out.append(literal)
        if name not in values:
            out.append("?")
            continue
        value = values[name]
        if not spec:
            out.append(describe(value))
            continue
        try:
            out.append(format(value, spec))
        except (ValueError, TypeError):
            out.append(describe(value))
    out.append(tail)
    text = "".join(out)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "\u2026"
    return text
