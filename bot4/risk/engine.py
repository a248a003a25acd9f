"""A guarded handle on one durable-rules ruleset.

We drive the C extension ``durable_rules_engine`` directly instead of
``durable.engine.Host``: ``Host()`` starts two ``threading.Timer`` loops that
dispatch actions off the caller's thread, and its action plumbing costs more
than our whole decision. Here nothing runs unless the caller calls, on the
caller's thread, and no timer is ever started.

How a decision is evaluated: the facts of one decision are asserted as one
durable-rules *fact* (not an event: an event is consumed by the first rule
that matches it, a fact is seen by every rule), every rule action it caused
is collected, then the fact is retracted. Each rule in the compiled ruleset
tests that single fact, so there are no joins. Only one session (sid "0")
is ever used, so the engine's fixed table of 1,024 sessions, which
``delete_state`` does not free, can never fill. Each asserted fact carries a
fresh ``id`` so that a fact left behind by a failed retraction can never make
a later identical decision "already observed".

Any error from the C code (they come back as ``error code: N``) is translated
into a RiskError naming the code, and the ruleset is rebuilt so no half-done
state survives into the next decision.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any

import durable_rules_engine as _dre  # C extension without stubs: see pyproject mypy overrides

from bot4.errors import RiskError

# From durable-rules src/rules/rules.h, so that "error code: 302" becomes words.
ERROR_CODES = {
    101: "out of memory",
    102: "unexpected type",
    103: "identifier too long",
    104: "unexpected value",
    105: "unexpected name",
    106: "too many rules",
    107: "too many exists clauses",
    108: "too many join nodes",
    109: "rule without qualifier",
    111: "invalid handle",
    112: "handle table full",
    113: "expression too large",
    201: "cannot parse value",
    202: "cannot parse string",
    203: "cannot parse number",
    204: "cannot parse object",
    205: "cannot parse array",
    302: "too many properties in one message",
    303: "stack too deep",
    304: "too many messages in one frame",
    305: "message not found",
    309: "session not found",
    310: "no action available",
    311: "property not found",
    312: "operation not supported",
}

# Durable-rules fails on messages with more than ~255 properties; stay well
# below so a pack with many facts is refused at compile time, not at trading.
MAX_FIELDS = 200
# Decisions produce at most one action per rule; more means the engine is
# confused, and we stop instead of looping.
_MAX_ACTIONS = 10_000

_CODE = re.compile(r"error code: (\d+)")


def number(x: float) -> str:
    """A float as JSON the engine parses exactly. Measured: its parser refuses
    an exponent without a fraction ("1e-05", error 204) but reads "1.0e-05";
    with that fix every double round-trips (adjacent doubles stay distinct)."""
    text = repr(float(x))
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            text = f"{mantissa}.0e{exponent}"
    elif text in ("nan", "inf", "-inf"):
        raise RiskError(f"{text} cannot be sent to the engine")
    return text


def to_json(value: Any) -> str:
    """JSON for the engine: like json.dumps, with numbers written by
    :func:`number` (bools stay true/false, ints are sent as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise RiskError(f"cannot send a {type(value).__name__} to the engine")


_SID = "0"


def describe_engine_error(exc: BaseException) -> str:
    text = str(exc)
    match = _CODE.search(text)
    if match:
        code = int(match.group(1))
        return f"durable-rules error {code} ({ERROR_CODES.get(code, 'unknown')})"
    return f"durable-rules error: {text or type(exc).__name__}"


class EngineRuleset:
    """One compiled ruleset living in the C engine."""

    _counter = 0

    def __init__(self, label: str, definition: Mapping[str, Any]) -> None:
        # Ruleset names are global inside the C library; make each unique.
        EngineRuleset._counter += 1
        self.name = f"bot4_{label}_{EngineRuleset._counter}"
        self._json = to_json(definition)
        self._handle: int | None = None
        self._seq = 0
        self._create()

    def _create(self) -> None:
        try:
            self._handle = _dre.create_ruleset(self.name, self._json)
        except _dre.error as exc:
            raise RiskError(f"cannot create ruleset: {describe_engine_error(exc)}") from None

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            # Nothing more can be done for a handle the engine refuses to delete.
            with contextlib.suppress(_dre.error):
                _dre.delete_ruleset(handle)

    def fire(self, body: str) -> list[str]:
        """Assert one fact whose JSON text, without its closing brace, is
        ``body`` (built by the caller from pre-encoded field names: cheaper
        than json.dumps on the hot path). Returns the names of the rules that
        matched, in the engine's order. Raises RiskError on any failure."""
        if self._handle is None:
            self._create()
        handle = self._handle
        assert handle is not None
        self._seq += 1
        message = f'{body},"id":{self._seq},"sid":"{_SID}"}}'
        try:
            return self._run(handle, message)
        except _dre.error as exc:
            self._rebuild()
            raise RiskError(describe_engine_error(exc)) from None
        except RiskError:
            self._rebuild()
            raise

    def fire_fields(self, fields: dict[str, Any]) -> list[str]:
        """:meth:`fire` for a plain mapping of fields (tests, fuzzing)."""
        text = to_json(fields)
        return self.fire(text[:-1]) if len(text) > 2 else self.fire('{"_z":0.0')

    @staticmethod
    def _run(handle: int, message: str) -> list[str]:
        fired: list[str] = []
        code, state = _dre.assert_fact(handle, message)
        if code == 0:
            result = _dre.start_action_for_state(handle, state)
            while result:
                text = result[1] if isinstance(result, tuple) else result
                # The message is {"<rule>": {...}}; only the rule name is needed.
                end = text.find('"', 2)
                if not text.startswith('{"') or end < 0:
                    raise RiskError("engine returned an unreadable action")
                fired.append(text[2:end])
                if len(fired) > _MAX_ACTIONS:
                    raise RiskError("engine produced more actions than rules")
                result = _dre.complete_and_start_action(handle, state)
        elif code != 1:  # 1: no rule matched, a normal outcome
            raise RiskError(f"engine refused the facts: {ERROR_CODES.get(code, code)}")
        _dre.retract_fact(handle, message)
        return fired

    def _rebuild(self) -> None:
        """Throw the session away: the only sure way to drop pending actions
        or a fact that could not be retracted."""
        self.close()
        try:
            self._create()
        except RiskError:
            self._handle = None  # retried on the next decision


def check_fields(count: int, what: str) -> None:
    if count > MAX_FIELDS:
        raise RiskError(f"{what} uses {count} facts; the engine takes at most {MAX_FIELDS}")
