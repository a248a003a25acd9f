"""Rule files -> a compiled policy (durable-rules rulesets plus what Python
needs around them). Every refusal is a RuleFileError naming file and line.

A rule file::

    description: Position size limit.        # optional, for people
    params:                                  # thresholds shared by the rules below
      max_position_fraction: 0.02
    rules:
      - name: max-position-size              # unique in the whole policy
        description: A position may not exceed 2% of equity.
        on: order                            # order (default) | tick | fill, or a list
        priority: 50                         # lower decides first (default 100)
        params: {}                           # rule-only thresholds (override the file's)
        when: position.notional_after > portfolio.equity * max_position_fraction
        reject:
          reason: "position {position.notional_after:,.2f} above {max_position_fraction:.0%}"
          suggested_size: >
            portfolio.equity * max_position_fraction / order.price - position.qty_along

Outcomes: ``approve: true`` | ``reject: {reason, suggested_size}`` (orders) or
``action: {kind, reason, fraction}`` (ticks and fills; kind is one of
emergency_close, reduce_position, add_margin, trip_breaker). A reason's
placeholders name facts, parameters or ``suggested_size``, with bounded format
specs (:mod:`bot4.risk.reasons`).

Optional top-level sections: ``settings`` (``maintenance_margin_rate``, needed
by the liquidation facts; one file may set it) and ``windows`` (event-time
counters, see :mod:`bot4.risk.windows`), each window becoming a fact
``window.<name>``.

How a decision is made (documented here because it is the policy's meaning):
on an order, every rule for ``order`` is evaluated by the engine; among those
that fire, the one with the lowest ``(priority, file, position in file)``
decides. If none fires there is no verdict and the order is rejected (fail
closed), so a policy states its default explicitly with a last ``approve``
rule. On ticks and fills every firing rule yields its action; per position the
most severe of emergency_close > reduce_position > add_margin is kept. "Fires"
is the exact Decimal reading of the condition: the engine's answer in doubles
is confirmed by :mod:`bot4.risk.exact`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from bot4.errors import RuleFileError
from bot4.model import RiskActionKind
from bot4.risk import expr, reasons
from bot4.risk.compiled import CompiledPolicy, Rule, StagePlan
from bot4.risk.engine import MAX_FIELDS
from bot4.risk.exact import ExactError, compile_condition, compile_first
from bot4.risk.expr import NUMBER, ExprError, Node, Value
from bot4.risk.fact_names import (
    BUILTIN_FACTS,
    FILL,
    LIQUIDATION_FACTS,
    ORDER,
    STAGES,
    TICK,
)
from bot4.risk.reasons import render
from bot4.risk.windows import WindowSpec
from bot4.risk.yamlsrc import YList, YMap, load_yaml
from bot4.suggest import did_you_mean

RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WINDOW_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_RULES = 500
DEFAULT_PRIORITY = 100
SEVERITY = {
    RiskActionKind.EMERGENCY_CLOSE: 3,
    RiskActionKind.REDUCE_POSITION: 2,
    RiskActionKind.ADD_MARGIN: 1,
    RiskActionKind.TRIP_BREAKER: 0,
}
# The keys of a rule file and of a rule, in their canonical order (the one
# `bot4 rules fmt` writes, bot4.risk.fmt).
FILE_KEYS = ("description", "settings", "params", "windows", "rules")
RULE_KEYS = (
    "name",
    "description",
    "on",
    "priority",
    "params",
    "when",
    "approve",
    "reject",
    "action",
)
_FILE_KEYS = set(FILE_KEYS)
_RULE_KEYS = set(RULE_KEYS)
_SETTINGS = {"maintenance_margin_rate"}
# Fact namespaces bot4 itself fills; a pack may not add facts under them.
RESERVED_ROOTS = frozenset(
    {"order", "portfolio", "position", "market", "breaker", "liquidation", "fill", "window", "time"}
)


@attrs.frozen(slots=True)
class _Raw:
    """One rule file after parsing, before names are checked across files."""

    path: str
    data: YMap


def describe_error(exc: BaseException) -> str:
    """An unexpected exception as one line: its type, and its text if any
    (``str(MemoryError())`` is empty)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _err(path: str, line: int | None, message: str) -> RuleFileError:
    return RuleFileError(path, line, message)


def _expr_err(path: str, line: int, exc: ExprError, what: str, source: object) -> RuleFileError:
    # Block scalars start on the line after the key; for a one-line expression
    # the node line is right.
    return _err(path, line + exc.line - 1, f"{what}: {exc.message} in {source!r}")


def _mapping(value: object, path: str, line: int, what: str) -> YMap:
    if not isinstance(value, YMap):
        raise _err(path, line, f"{what} must be a mapping")
    return value


def _unknown_keys(m: YMap, allowed: set[str], path: str, what: str) -> None:
    for key in m:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise _err(
                path,
                m.lines[key],
                f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))}){hint}",
            )


def _params(value: object, path: str, line: int, what: str) -> dict[str, Value]:
    if value is None:
        return {}
    m = _mapping(value, path, line, what)
    out: dict[str, Value] = {}
    for key, v in m.items():
        where = m.lines[key]
        if not expr.PARAM_NAME.match(key) or key in ("true", "false"):
            raise _err(path, where, f"parameter name {key!r} must be lower_case_with_underscores")
        if isinstance(v, bool) or (isinstance(v, str) and len(v) <= 100 and v.isprintable()):
            out[key] = v
        elif isinstance(v, (int, float)):
            try:
                out[key] = expr.check_number(float(v), f"parameter {key}")
            except ExprError as exc:
                raise _err(path, where, exc.message) from None
        else:
            raise _err(
                path, where, f"parameter {key} must be a number, true/false or a short string"
            )
    return out


def read_file(path: Path, text: str | None = None) -> tuple[_Raw, str]:
    """Parse one rule file. Raises RuleFileError naming it, and nothing else."""
    name = str(path)
    try:
        data, text = load_yaml(path, text)
    except RuleFileError:
        raise
    except Exception as exc:  # MemoryError, RecursionError: still a message, not a traceback
        raise _err(name, None, f"cannot read: {describe_error(exc)}") from None
    if not isinstance(data, YMap):
        raise _err(name, 1, "a rule file is a mapping with a 'rules' list")
    _unknown_keys(data, _FILE_KEYS, name, "a rule file")
    if "rules" not in data:
        raise _err(name, data.line, "missing 'rules' (a list of rules)")
    return _Raw(name, data), text


def _stages(value: object, path: str, line: int) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _err(path, line, f"'on' must be one of {', '.join(STAGES)} or a list of them")
    for item in items:
        if item not in STAGES:
            raise _err(path, line, f"'on' names {item!r}; expected one of {', '.join(STAGES)}")
    return frozenset(items)


class Compiler:
    """Compiles a set of rule files against the facts available to them."""

    def __init__(
        self, pack_facts: Mapping[str, str], pack_types: Mapping[str, str] | None = None
    ) -> None:
        self.pack_facts = dict(pack_facts)
        self.pack_types = dict(pack_types or {})
        self._known_facts: list[str] = []

    def fact_kind(self, windows: Mapping[str, WindowSpec]) -> Callable[[str], str | None]:
        def lookup(name: str) -> str | None:
            spec = BUILTIN_FACTS.get(name)
            if spec is not None:
                return spec.kind
            if name.startswith("window.") and name[len("window.") :] in windows:
                return NUMBER
            if name in self.pack_facts:
                # As the pack declares it (RiskRules.fact_types), a number by default.
                return self.pack_types.get(name, NUMBER)
            return None

        return lookup

    def fact_names(self, windows: Mapping[str, WindowSpec]) -> list[str]:
        """Every fact a condition may name (for "did you mean")."""
        return [*BUILTIN_FACTS, *(f"window.{w}" for w in windows), *self.pack_facts]

    def stages_of(self, name: str) -> frozenset[str]:
        spec = BUILTIN_FACTS.get(name)
        if spec is not None:
            return spec.stages
        if name.startswith("window."):
            return frozenset(STAGES)
        return frozenset({ORDER})  # pack facts need an order (FactContext)

    def compile(self, raws: Sequence[_Raw]) -> CompiledPolicy:
        """Raises RuleFileError and nothing else: whatever a rule file holds,
        a surprise (MemoryError, RecursionError, a bug) is reported at the
        file and line being compiled, never as a traceback."""
        self._where: tuple[str, int | None] = (raws[0].path if raws else "<policy>", None)
        try:
            return self._compile(raws)
        except RuleFileError:
            raise
        except Exception as exc:
            raise _err(*self._where, f"cannot compile: {describe_error(exc)}") from None

    def _compile(self, raws: Sequence[_Raw]) -> CompiledPolicy:
        windows: dict[str, WindowSpec] = {}
        mmr: Decimal | None = None
        mmr_where = ""
        for raw in raws:
            path, data = raw.path, raw.data
            self._where = (path, data.line)
            if "settings" in data:
                settings = _mapping(data["settings"], path, data.lines["settings"], "settings")
                _unknown_keys(settings, _SETTINGS, path, "settings")
                if "maintenance_margin_rate" in settings:
                    line = settings.lines["maintenance_margin_rate"]
                    value = settings["maintenance_margin_rate"]
                    if mmr is not None:
                        raise _err(
                            path, line, f"maintenance_margin_rate is already set at {mmr_where}"
                        )
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, (int, float))
                        or not 0 <= value < 1
                    ):
                        raise _err(path, line, "maintenance_margin_rate must be a number in [0, 1)")
                    mmr = Decimal(repr(float(value)))
                    mmr_where = f"{path}:{line}"
            if "windows" in data:
                wmap = _mapping(data["windows"], path, data.lines["windows"], "windows")
                for wname, wdef in wmap.items():
                    line = wmap.lines[wname]
                    self._where = (path, line)
                    if not WINDOW_NAME.match(wname):
                        raise _err(
                            path, line, f"window name {wname!r} must be lower_case_with_underscores"
                        )
                    if wname in windows:
                        first = windows[wname]
                        raise _err(
                            path,
                            line,
                            f"window {wname!r} already defined at {first.path}:{first.line}",
                        )
                    windows[wname] = WindowSpec.parse(wname, wdef, path, line)

        lookup = self.fact_kind(windows)
        self._known_facts = self.fact_names(windows)  # for "did you mean" in errors
        rules: list[Rule] = []
        seen: dict[str, Rule] = {}
        for file_index, raw in enumerate(raws):
            path, data = raw.path, raw.data
            self._where = (path, data.line)
            file_params = _params(
                data.get("params"), path, data.lines.get("params", data.line), "params"
            )
            items = data["rules"]
            if not isinstance(items, YList):
                raise _err(path, data.lines["rules"], "'rules' must be a list")
            for index, item in enumerate(items):
                self._where = (path, items.lines[index])
                rule = self._rule(
                    item, path, items.lines[index], file_params, lookup, (file_index, index)
                )
                if rule.name in seen:
                    raise _err(
                        path,
                        rule.line,
                        f"rule name {rule.name!r} already used at {seen[rule.name].where}",
                    )
                seen[rule.name] = rule
                if mmr is None:
                    for fact in rule.facts:
                        if fact in LIQUIDATION_FACTS:
                            raise _err(
                                path,
                                rule.line,
                                f"rule {rule.name!r} uses {fact}, which needs "
                                "settings: maintenance_margin_rate in one rule file",
                            )
                rules.append(rule)
                if len(rules) > MAX_RULES:
                    raise _err(path, rule.line, f"more than {MAX_RULES} rules")
        rules.sort(key=lambda r: r.rank)
        stages = {
            stage: self._plan(stage, [r for r in rules if stage in r.stages], lookup)
            for stage in STAGES
        }
        return CompiledPolicy(
            files=tuple(raw.path for raw in raws),
            rules=tuple(rules),
            stages=stages,
            windows=windows,
            mmr=mmr,
            pack_facts=dict(self.pack_facts),
            pack_types=dict(self.pack_types),
        )

    def _rule(
        self,
        item: object,
        path: str,
        line: int,
        file_params: Mapping[str, Value],
        lookup: Callable[[str], str | None],
        position: tuple[int, int],
    ) -> Rule:
        m = _mapping(item, path, line, "a rule")
        _unknown_keys(m, _RULE_KEYS, path, "a rule")
        name = m.get("name")
        if not isinstance(name, str) or not RULE_NAME.match(name):
            raise _err(
                path,
                m.lines.get("name", line),
                "a rule needs a name: lower-case letters, digits, - or _",
            )
        label = f"rule {name!r}"
        description = m.get("description")
        if not isinstance(description, str) or not description.strip():
            raise _err(path, m.lines.get("description", line), f"{label} needs a description")
        stages = _stages(m.get("on", ORDER), path, m.lines.get("on", line))
        priority = m.get("priority", DEFAULT_PRIORITY)
        if (
            isinstance(priority, bool)
            or not isinstance(priority, int)
            or not 0 <= priority <= 1_000_000
        ):
            raise _err(
                path,
                m.lines.get("priority", line),
                f"{label}: priority must be an integer 0..1000000",
            )
        params = {
            **file_params,
            **_params(m.get("params"), path, m.lines.get("params", line), f"{label} params"),
        }

        if "when" not in m:
            raise _err(path, line, f"{label} needs a 'when' condition")
        when_line = m.lines["when"]
        source = m["when"]
        try:
            when = expr.parse(source, lookup, params, known_facts=self._known_facts)
        except ExprError as exc:
            raise _expr_err(path, when_line, exc, f"{label} when", source) from None

        outcomes = [k for k in ("approve", "reject", "action") if k in m]
        if len(outcomes) != 1:
            raise _err(path, line, f"{label} needs exactly one outcome: approve, reject or action")
        outcome = outcomes[0]
        out_line = m.lines[outcome]
        body = m[outcome]
        if outcome in ("approve", "reject") and stages != {ORDER}:
            raise _err(path, out_line, f"{label}: {outcome} applies to orders only ('on: order')")
        if outcome == "action" and ORDER in stages:
            raise _err(path, out_line, f"{label}: actions apply to ticks and fills, not orders")

        reason = ""
        suggested: Node | None = None
        action: RiskActionKind | None = None
        fraction = Decimal(1)
        template_names: list[tuple[str, str]] = []
        reason_line = out_line
        if outcome == "approve":
            if body is True:
                reason = "within the policy"
            else:
                body = _mapping(body, path, out_line, f"{label} approve")
                _unknown_keys(body, {"reason"}, path, "approve")
                reason = body.get("reason", "within the policy")
                reason_line = body.lines.get("reason", out_line)
                template_names = reasons.placeholders(reason, path, reason_line, label)
        elif outcome == "reject":
            body = _mapping(body, path, out_line, f"{label} reject")
            _unknown_keys(body, {"reason", "suggested_size"}, path, "reject")
            if "reason" not in body:
                raise _err(path, out_line, f"{label}: reject needs a reason")
            reason = body["reason"]
            reason_line = body.lines["reason"]
            template_names = reasons.placeholders(reason, path, reason_line, label)
            if "suggested_size" in body:
                sline = body.lines["suggested_size"]
                ssrc = body["suggested_size"]
                try:
                    suggested = expr.parse(
                        ssrc,
                        lookup,
                        params,
                        expect=NUMBER,
                        allow_division=True,
                        known_facts=self._known_facts,
                    )
                except ExprError as exc:
                    raise _expr_err(path, sline, exc, f"{label} suggested_size", ssrc) from None
        else:
            body = _mapping(body, path, out_line, f"{label} action")
            _unknown_keys(body, {"kind", "reason", "fraction"}, path, "action")
            kind = body.get("kind")
            kinds = [k.value for k in RiskActionKind]
            if kind not in kinds:
                raise _err(
                    path,
                    body.lines.get("kind", out_line),
                    f"{label}: action kind must be one of {', '.join(kinds)}",
                )
            action = RiskActionKind(kind)
            if "reason" not in body:
                raise _err(path, out_line, f"{label}: action needs a reason")
            reason = body["reason"]
            reason_line = body.lines["reason"]
            template_names = reasons.placeholders(reason, path, reason_line, label)
            if "fraction" in body:
                fline = body.lines["fraction"]
                raw_fraction = body["fraction"]
                if isinstance(raw_fraction, str) and raw_fraction in params:
                    raw_fraction = params[raw_fraction]
                if (
                    isinstance(raw_fraction, bool)
                    or not isinstance(raw_fraction, (int, float))
                    or not 0 < raw_fraction <= 1
                ):
                    raise _err(
                        path,
                        fline,
                        f"{label}: fraction must be a number in (0, 1] or a parameter holding one",
                    )
                fraction = Decimal(repr(float(raw_fraction)))

        facts = expr.facts_of(when) + (expr.facts_of(suggested) if suggested is not None else [])
        facts.extend(
            reasons.check(template_names, reason, path, reason_line, label, params, lookup)
        )
        unique = list(dict.fromkeys(facts))
        for fact in unique:
            available = self.stages_of(fact)
            missing = stages - available
            if missing:
                raise _err(
                    path,
                    when_line,
                    f"{label}: fact {fact} is not available on {', '.join(sorted(missing))} "
                    f"(available on: {', '.join(sorted(available))})",
                )
        try:
            prefix = f"k{position[0]}_{position[1]}_"
            exact = compile_condition(source, params, prefix)
        except ExactError as exc:
            raise _err(path, when_line, f"{label} when: {exc}") from None
        priority_int = int(priority)
        return Rule(
            name=name,
            description=description.strip(),
            path=path,
            line=line,
            stages=stages,
            rank=(priority_int, position[0], position[1]),
            when=when,
            when_source=("true" if source else "false")
            if isinstance(source, bool)
            else str(source),
            outcome=outcome,
            reason=reason,
            suggested=suggested,
            action=action,
            fraction=fraction,
            params=params,
            facts=tuple(unique),
            exact=exact,
        )

    def _plan(
        self, stage: str, rules: list[Rule], lookup: Callable[[str], str | None]
    ) -> StagePlan:
        used: dict[str, None] = {}
        for rule in rules:
            for fact in expr.facts_of(rule.when):
                used.setdefault(fact, None)
        keys = {fact: f"f{i}" for i, fact in enumerate(used)}
        if len(keys) + 3 > MAX_FIELDS:  # + _z, id, sid
            first = rules[0]
            raise _err(
                first.path,
                first.line,
                f"the {stage} rules read {len(keys)} facts; at most {MAX_FIELDS - 3}",
            )
        definition: dict[str, Any] = {}
        by_key: dict[str, Rule] = {}
        for index, rule in enumerate(rules):
            key = f"r{index}"
            self._where = (rule.path, rule.line)
            try:
                test = expr.to_durable(rule.when, keys.__getitem__)
            except ExprError as exc:
                raise _err(rule.path, rule.line, f"rule {rule.name!r}: {exc.message}") from None
            definition[key] = {"all": [{"m": test}]}
            by_key[key] = rule
        fields = tuple((name, f',"{key}":') for name, key in keys.items())
        reads = frozenset(keys).union(*(rule.facts for rule in rules))
        windows = tuple(sorted(n for n in reads if n.startswith("window.")))
        names = tuple(rule.name for rule in rules)
        guards = [g for g in (expr.guard_of(rule.when) for rule in rules) if g is not None]
        quiet = None
        if rules and len(guards) == len(rules):
            # Narrowed at each bound by more than a double can be off: a
            # value next to a bound takes the engine path, where the rules
            # are confirmed exactly in Decimal (bot4.risk.exact).
            quiet = tuple(
                attrs.evolve(q, low=_inward(q.low, 1), high=_inward(q.high, -1))
                for q in expr.quiet_ranges(guards)
            )
            # The ranges must check every field sent to the engine.
            assert {q.fact for q in quiet} == set(keys)
        exact_first = None
        conditions = [r.exact for r in rules if r.exact is not None]
        if stage == ORDER and len(conditions) == len(rules):
            exact_first = compile_first(conditions)
        return StagePlan(
            stage,
            tuple(rules),
            keys,
            by_key,
            definition,
            fields,
            reads,
            windows,
            names,
            quiet,
            exact_first,
            tuple(lookup(name) or "" for name in keys),
        )


# Relative and absolute margin by which the quiet ranges are narrowed: far
# above the 2**-53 relative error of a Decimal's nearest double, far below
# anything a threshold means.
QUIET_MARGIN = 1e-12
QUIET_FLOOR = 1e-300


def _inward(bound: float, direction: int) -> float:
    return bound + direction * max(abs(bound) * QUIET_MARGIN, QUIET_FLOOR)


__all__ = [
    "FILL",
    "ORDER",
    "SEVERITY",
    "TICK",
    "CompiledPolicy",
    "Compiler",
    "Rule",
    "StagePlan",
    "describe_error",
    "read_file",
    "render",
]
