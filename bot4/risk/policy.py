"""RiskPolicy: the kernel's pre-trade gate and position monitor.

It never raises from the trading path. Anything that goes wrong while
deciding an order (a bad fact, a pack that raises, an engine error, no rule
deciding) becomes ``Rejected(rule="fail-closed")`` with the reason and the
rule files involved, and is logged. On ticks and fills a failure trips the
breaker, for the same reason: when the policy cannot see, it stops trading.

Reducing orders: the default policy approves ``order.reducing`` orders first
(reduce-only, or against the open position and no larger than it), so an
emergency close goes through even when the breaker is tripped or a rate limit
is hit; entry rules (size, stop loss, liquidation distance) make no sense for
an order that only shrinks exposure. This lives in ``rules/00-exits.yaml``,
not in code, so a person can see and change it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Protocol

import attrs

from bot4.contracts import FactContext, RiskRules
from bot4.errors import RiskError, RuleFileError
from bot4.model import (
    Approved,
    Decision,
    Fill,
    MarketData,
    Order,
    Portfolio,
    Position,
    Rejected,
    RiskAction,
    RiskActionKind,
)
from bot4.risk import band as bands
from bot4.risk import expr, sources
from bot4.risk.breaker import Breaker
from bot4.risk.compiler import (
    RESERVED_ROOTS,
    SEVERITY,
    CompiledPolicy,
    Compiler,
    Rule,
    StagePlan,
    describe_error,
    read_file,
    render,
)
from bot4.risk.engine import EngineRuleset
from bot4.risk.exact import ExactError, exact_decider, holds
from bot4.risk.expr import MAX_MAGNITUDE, Value
from bot4.risk.facts import (
    CONTEXT_FACTS,
    FILL,
    MARGIN_FACTS,
    ORDER,
    STAGES,
    TICK,
    context_facts,
    convert,
    convert_all,
    fill_facts,
    margin_facts,
    order_facts,
    tick_facts,
    to_fact,
)
from bot4.risk.message import STRING_TEXT, generic_body
from bot4.risk.windows import EVENT_KINDS, ORDERS, STOP_OUTS, EventLog
from bot4.venue_margin import VenueMargin

log = logging.getLogger("bot4.risk")

FAIL_CLOSED = "fail-closed"
SIZE_QUANTUM = Decimal("0.00000001")


class Book(Protocol):
    """What :meth:`RiskPolicy.on_tracked_tick` reads of a
    :class:`~bot4.portfolio.PortfolioTracker`."""

    def position(self, symbol: str) -> Position | None: ...

    def snapshot(self) -> Portfolio: ...


@attrs.frozen(slots=True)
class ReloadOutcome:
    """What a reload did. ``error`` is set when the new files were refused
    (the previous policy stays in force)."""

    reloaded: bool
    files: tuple[str, ...]
    error: RuleFileError | None = None
    rules: int = 0  # of the policy now in force, when reloaded
    digest: str = ""  # sha256 of the policy now in force, when reloaded

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str:
        """One line for a person: what is in force now."""
        if self.error is not None:
            return f"rule reload refused, keeping the previous policy: {self.error}"
        return f"policy reloaded: {self.rules} rules, sha256 {self.digest[:16]}"


@attrs.frozen(slots=True)
class TraceEntry:
    rule: str
    where: str
    outcome: str
    fired: bool
    decided: bool
    condition: str
    values: Mapping[str, Value]


@attrs.frozen(slots=True)
class Explanation:
    """Everything ``bot4 rules eval`` prints: the outcome, the rule that
    decided, every rule evaluated (fired or not) and all facts."""

    stage: str
    decision: Decision | None
    actions: tuple[RiskAction, ...]
    decided_by: str | None
    trace: tuple[TraceEntry, ...]
    facts: Mapping[str, Value]


# --- rule sources ------------------------------------------------------------------------
# Finding and reading the files is bot4.risk.sources: an entry that is not a
# readable rule file is an error naming it, never skipped.


def _pack_facts(packs: Sequence[RiskRules]) -> dict[str, str]:
    owners: dict[str, str] = {}
    for pack in packs:
        try:
            names = pack.fact_names()
        except Exception as exc:
            raise RuleFileError(
                f"risk pack {pack.name!r}", None, f"fact_names() failed: {exc}"
            ) from None
        for name in names:
            where = f"risk pack {pack.name!r}"
            if not isinstance(name, str) or not expr.FACT_NAME.match(name):
                raise RuleFileError(
                    where,
                    None,
                    f"fact name {name!r} is not lower-case dotted (e.g. correlation.max)",
                )
            if name.split(".", 1)[0] in RESERVED_ROOTS:
                raise RuleFileError(
                    where, None, f"fact {name!r} is in a namespace bot4 fills itself"
                )
            if name in owners:
                raise RuleFileError(
                    where, None, f"fact {name!r} is also provided by risk pack {owners[name]!r}"
                )
            owners[name] = pack.name
    return owners


_KINDS = ("number", "bool", "string")


def _pack_types(packs: Sequence[RiskRules], owners: Mapping[str, str]) -> dict[str, str]:
    """The type each pack declares for its facts (``RiskRules.fact_types``)."""
    kinds: dict[str, str] = {}
    for pack in packs:
        where = f"risk pack {pack.name!r}"
        declare = getattr(pack, "fact_types", None)
        try:
            declared = declare() if declare is not None else {}
        except Exception as exc:
            raise RuleFileError(where, None, f"fact_types() failed: {exc}") from None
        if not isinstance(declared, Mapping):
            raise RuleFileError(where, None, "fact_types() must return a mapping")
        for name, kind in declared.items():
            if owners.get(name) != pack.name:
                raise RuleFileError(
                    where, None, f"fact_types() names {name!r}, which is not one of its facts"
                )
            if kind not in _KINDS:
                raise RuleFileError(
                    where, None, f"fact {name!r}: type {kind!r} is not one of {', '.join(_KINDS)}"
                )
            kinds[name] = kind
    return kinds


@attrs.frozen(slots=True)
class _Active:
    """One loaded policy: compiled rules, live engines, and what it was built from."""

    compiled: CompiledPolicy
    engines: Mapping[str, EngineRuleset]
    signature: tuple[Any, ...]
    digest: str

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def _build(paths: Sequence[Path], packs: Sequence[RiskRules]) -> _Active:
    """Compile a policy. Whatever the files hold, the only exception is a
    RuleFileError (the compiler turns its own surprises into ``file:line``
    ones; this is the net under it), so a hot reload can keep the last good
    policy."""
    try:
        return _build_unguarded(paths, packs)
    except RuleFileError:
        raise
    except Exception as exc:  # MemoryError, RecursionError, a bug: never a traceback
        where = ", ".join(str(p) for p in paths) or "<policy>"
        message = f"cannot compile the policy: {describe_error(exc)}"
        raise RuleFileError(where, None, message) from None


def _build_unguarded(paths: Sequence[Path], packs: Sequence[RiskRules]) -> _Active:
    signature = sources.fingerprint(paths, packs)
    files = sources.rule_files(paths, packs)
    raws = []
    digest = hashlib.sha256()
    for f in files:
        raw, text = read_file(f)
        raws.append(raw)
        digest.update(str(f).encode() + b"\0" + text.encode() + b"\0")
    owners = _pack_facts(packs)
    compiled = Compiler(owners, _pack_types(packs, owners)).compile(raws)
    engines: dict[str, EngineRuleset] = {}
    try:
        for stage, plan in compiled.stages.items():
            if plan.rules:
                engines[stage] = EngineRuleset(stage, plan.definition)
    except Exception as exc:
        for engine in engines.values():
            engine.close()
        raise RuleFileError(
            ", ".join(compiled.files), None, f"the engine refused the compiled rules: {exc}"
        ) from None
    return _Active(compiled, engines, signature, digest.hexdigest())


def _quiet(ranges: tuple[expr.QuietRange, ...], facts: Mapping[str, object]) -> bool:
    """True when no rule of a guarded stage can fire: every rule is ``fact op
    constant`` and each fact is inside the range where none holds. The engine
    is then skipped (on the ticks of a held symbol the common case is a ladder
    far from any rung). Each value is converted as :meth:`RiskPolicy._fire`
    would send it, the ranges lie within the range _fire accepts, and the
    stage's fields are exactly the ranges' facts, so the answer is the
    engine's. Anything else gives False: the engine path then decides, and
    refuses a bad value with its error."""
    for r in ranges:
        value = facts.get(r.fact)
        kind = type(value)
        if kind is not Decimal and kind is not float and kind is not int:
            return False
        number = float(value)  # type: ignore[arg-type]
        if not (r.above(number, r.low) and r.below(number, r.high)):
            return False
    return True


def _exactly_fired(plan: StagePlan, fired: list[Rule], facts: Mapping[str, object]) -> list[Rule]:
    """For a trace: the rules whose condition holds exactly (as the decision
    was made); a rule that cannot be evaluated exactly keeps the engine's answer."""
    out = []
    for rule in plan.rules:
        try:
            held = holds(rule.exact, facts)
        except ExactError:
            held = rule in fired
        if held:
            out.append(rule)
    return out


def _step_below(qty: Decimal) -> Decimal:
    """The largest multiple of SIZE_QUANTUM strictly below ``qty`` (0 if none)."""
    steps = (qty / SIZE_QUANTUM).to_integral_value(rounding=ROUND_CEILING) - 1
    return steps * SIZE_QUANTUM if steps > 0 else Decimal(0)


def _checked(name: str, value: object) -> object:
    """A fact value given from outside (a scenario's override), validated; a
    Decimal stays a Decimal so the decision is confirmed on its exact value."""
    converted = to_fact(name, value)
    return value if type(value) is Decimal else converted


_NOTHING_UNKNOWN: frozenset[str] = frozenset()

# FactContext's and Approved's slots set directly: their attrs __init__
# (frozen, so through object.__setattr__ per field) costs more than a pack's
# whole answer, and neither has a converter or validator to skip (a test
# holds each equal to the class's own).
_context_new = object.__new__
_context_order = FactContext.__dict__["order"].__set__
_context_portfolio = FactContext.__dict__["portfolio"].__set__
_context_market = FactContext.__dict__["market"].__set__


_approved_order = Approved.__dict__["order"].__set__
_approved_rules = Approved.__dict__["rules"].__set__


def _approved(order: Order, rules: tuple[str, ...]) -> Approved:
    """``Approved(order=order, rules=rules)``."""
    decision: Approved = _context_new(Approved)
    _approved_order(decision, order)
    _approved_rules(decision, rules)
    return decision


def _fact_context(order: Order, portfolio: Portfolio, market: MarketData | None) -> FactContext:
    """``FactContext(order=order, portfolio=portfolio, market=market)``."""
    ctx: FactContext = _context_new(FactContext)
    _context_order(ctx, order)
    _context_portfolio(ctx, portfolio)
    _context_market(ctx, market)
    return ctx


# A string fact value -> its text in an engine message (bot4.risk.message).
_STRING_TEXT = STRING_TEXT
# The most ticks a symbol waits before another band is worked out after
# bands that answered nothing (see RiskPolicy._drop_band).
_BAND_BACKOFF_MAX = 64


# --- the policy -----------------------------------------------------------------------------


class RiskPolicy:
    """The loaded risk policy. Construct with :meth:`load`."""

    def __init__(self, active: _Active, paths: Sequence[Path], packs: Sequence[RiskRules]) -> None:
        self._active = active
        self._paths = tuple(Path(p) for p in paths)
        self._packs = tuple(packs)
        self._failed_signature: tuple[Any, ...] | None = None
        # (compiled policy, facts needed, [(pack, [(needed fact it gives, type)])])
        self._wanted: (
            tuple[CompiledPolicy, frozenset[str], list[tuple[RiskRules, list[tuple[str, str]]]]]
            | None
        ) = None
        self._breaker = Breaker()
        self._events = EventLog()
        # Whether an approval counts in the order windows. A shadow policy
        # (bot4.risk.shadow) counts the live policy's approvals instead.
        self.count_approvals = True
        self._breaker.on_reset(lambda: self._events.clear(STOP_OUTS))
        # Price bands of held symbols (bot4.risk.band): symbol -> band, and
        # symbol -> [ticks to wait before working out another, back-off].
        self._bands: dict[str, bands.Band] = {}
        self._band_wait: dict[str, list[int]] = {}
        self._band_ranges: tuple[expr.QuietRange, ...] | None = None
        # The venue's view of each held position's margin (bot4.venue_margin),
        # kept by the kernel's margin desk (bot4.margin_desk), which shares its
        # mapping here; empty (the formula throughout) for a policy used alone.
        self.venue_margins: Mapping[str, VenueMargin] = {}
        # A subclass with its own on_market_data has it called on every tick
        # (on_tracked_tick); asked once here, not per tick.
        self._own_monitor = type(self).on_market_data is not RiskPolicy.on_market_data
        self._set_horizon()

    @classmethod
    def load(cls, paths: Sequence[Path], packs: Sequence[RiskRules] = ()) -> RiskPolicy:
        """Compile rule files (files, or directories: every ``*.yaml`` directly
        inside, sorted) plus each pack's ``rule_files()``. Raises RuleFileError."""
        return cls(_build(paths, packs), paths, packs)

    def spawn(self) -> RiskPolicy:
        """A new policy from the same files, with its own breaker, counters and
        engine sessions (used to run scenarios side by side)."""
        return RiskPolicy(_build(self._paths, self._packs), self._paths, self._packs)

    def close(self) -> None:
        self._active.close()

    def _set_horizon(self) -> None:
        for spec in self._active.compiled.windows.values():
            self._events.set_horizon(spec.seconds)
        # A new policy: no band of the old one stands.
        self._bands.clear()
        self._band_wait.clear()
        plan = self._active.compiled.stages[TICK]
        self._band_ranges = (
            plan.quiet
            if TICK in self._active.engines and bands.supported(plan.quiet, plan.windows)
            else None
        )

    # --- properties ---

    @property
    def breaker(self) -> Breaker:
        return self._breaker

    @property
    def compiled(self) -> CompiledPolicy:
        return self._active.compiled

    @property
    def files(self) -> tuple[str, ...]:
        return self._active.compiled.files

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self._active.compiled.rules)

    @property
    def packs(self) -> tuple[RiskRules, ...]:
        return self._packs

    @property
    def digest(self) -> str:
        """sha256 over every compiled file's name and text."""
        return self._active.digest

    @property
    def summary(self) -> str:
        """``N rules, sha256 <first 16 hex digits>``, as reloads report it."""
        return f"{len(self.rule_names)} rules, sha256 {self.digest[:16]}"

    # --- hot reload ---

    def reload_if_changed(self) -> ReloadOutcome | None:
        """Recompile if a rule file changed (by identity, mode, times and size,
        confirmed by content hash). Never raises. A file that fails to compile
        or cannot be read is refused whole; the last good policy stays in
        force and the error is returned (and logged) once per distinct broken
        state. A reload that took is logged with its rule count and digest, so
        a person sees that an edit took."""
        try:
            return self._reload()
        except Exception as exc:  # a net: a reload must never take the session down
            error = RuleFileError("<policy>", None, f"reload failed: {describe_error(exc)}")
            log.error("rule reload refused, keeping the previous policy: %s", error)  # noqa: TRY400
            return ReloadOutcome(reloaded=False, files=self.files, error=error)

    def _reload(self) -> ReloadOutcome | None:
        signature = sources.fingerprint(self._paths, self._packs)
        if signature == self._active.signature or signature == self._failed_signature:
            return None
        try:
            fresh = _build(self._paths, self._packs)
        except RuleFileError as exc:
            self._failed_signature = signature
            # A refused file is an expected outcome, not a crash: no traceback.
            log.error("rule reload refused, keeping the previous policy: %s", exc)  # noqa: TRY400
            return ReloadOutcome(reloaded=False, files=self.files, error=exc)
        recovered = self._failed_signature is not None
        self._failed_signature = None
        if fresh.digest == self._active.digest:
            fresh.close()
            self._active = attrs.evolve(self._active, signature=signature)
            self._set_horizon()  # the same rules, but start the bands afresh
            if recovered:
                log.warning(
                    "rule files readable again; the policy in force is unchanged: %s",
                    self.summary,
                )
            return None
        old, self._active = self._active, fresh
        old.close()
        self._set_horizon()
        outcome = ReloadOutcome(
            reloaded=True,
            files=fresh.compiled.files,
            rules=len(self.rule_names),
            digest=self.digest,
        )
        # A warning, not info: a changed policy in a live session is what the
        # person running it must see (bot4 run shows warnings and errors).
        log.warning("%s (%s)", outcome.message, ", ".join(outcome.files))
        return outcome

    # --- orders ---

    def check_order(
        self, order: Order, portfolio: Portfolio, market: MarketData | None, now_ns: int
    ) -> Decision:
        """Approve or reject one order. Never raises."""
        try:
            decision, _ = self._order(order, portfolio, market, now_ns, None, trace=False)
        except Exception as exc:  # fail closed: whatever went wrong, the order is refused
            return self._fail_closed(order, exc)
        return decision

    def _fail_closed(self, order: Order | None, exc: BaseException) -> Rejected:
        files = ", ".join(self._active.compiled.files)
        reason = (
            f"{exc} (rule files: {files})"
            if isinstance(exc, RiskError)
            else (f"internal error {type(exc).__name__}: {exc} (rule files: {files})")
        )
        log.error("order rejected, fail closed: %s", reason)
        return Rejected(rule=FAIL_CLOSED, reason=reason, suggested_size=Decimal(0), order=order)

    def _window_facts(
        self, facts: dict[str, object], names: tuple[str, ...], symbol: str, now_ns: int
    ) -> None:
        windows = self._active.compiled.windows
        for name in names:
            facts[name] = float(self._events.count(windows[name[7:]], symbol, now_ns))

    def _order(
        self,
        order: Order,
        portfolio: Portfolio,
        market: MarketData | None,
        now_ns: int,
        overrides: Mapping[str, object] | None,
        trace: bool,
    ) -> tuple[Decision, Explanation | None]:
        active = self._active
        compiled = active.compiled
        plan = compiled.stages[ORDER]
        engine = active.engines.get(ORDER)
        margin_wanted = plan.margin_reads
        facts: dict[str, object] = order_facts(
            order,
            portfolio,
            market,
            self._breaker.tripped,
            compiled.mmr,
            self.venue_margins.get(order.symbol) if margin_wanted else None,
            margin_wanted,
        )
        wanted = plan.context_reads
        if wanted:
            context_facts(wanted, facts, portfolio, now_ns, order.symbol)
        if plan.windows:
            self._window_facts(facts, plan.windows, order.symbol, now_ns)
        pack_failure: str | None = None
        unknown = _NOTHING_UNKNOWN
        if compiled.pack_facts:
            pack_failure, unknown = self._pack_values(
                facts, plan.reads, order, portfolio, market, overrides
            )
        if overrides:
            for name, value in overrides.items():
                facts[name] = _checked(name, value)
        if engine is None:
            raise RiskError("the policy has no rules for orders: no verdict")
        fired = self._fire(engine, plan, facts, unknown)
        if pack_failure is not None and not self._decided_without(plan, fired, unknown):
            log.error("order rejected, fail closed: %s", pack_failure)
            return Rejected(rule=FAIL_CLOSED, reason=pack_failure, order=order), None
        explanation = None
        decider: Rule | None = fired[0] if fired else None
        if decider is not None:
            # The engine compared doubles, which can miss a limit by one
            # rounding: the decision is confirmed exactly in Decimal
            # (bot4.risk.exact). An approval that cannot be confirmed is
            # refused (fail closed); a rejection stands as the engine gave it.
            engine_decider = decider
            try:
                decider = exact_decider(plan.rules, plan.exact_first, facts)
            except ExactError:
                if engine_decider.outcome == "approve":
                    raise
            if decider is not engine_decider:
                log.info(
                    "order %s: decided exactly by %s, not %s as in doubles (a fact at a limit)",
                    order.client_order_id,
                    decider.name if decider is not None else "no rule",
                    engine_decider.name,
                )
        if trace:
            fired = _exactly_fired(plan, fired, facts)
        decision: Decision
        if decider is None:
            decision = Rejected(
                rule=FAIL_CLOSED,
                reason="no rule approved or rejected the order: no verdict "
                f"(rule files: {', '.join(compiled.files)})",
                order=order,
            )
            log.error("order rejected, fail closed: %s", decision.reason)
        elif decider.outcome == "approve":
            if compiled.counts_orders and self.count_approvals:
                self._events.record(ORDERS, order.symbol, now_ns)
            decision = _approved(order, plan.rule_names)
        else:
            decision = self._reject(decider, facts, order)
        if trace:
            explanation = self._explain(ORDER, plan, fired, decider, facts, decision, ())
        return decision, explanation

    def _pack_values(
        self,
        facts: dict[str, object],
        needed: frozenset[str],
        order: Order,
        portfolio: Portfolio,
        market: MarketData | None,
        overrides: Mapping[str, object] | None,
    ) -> tuple[str | None, frozenset[str]]:
        """Ask each pack for the facts the rules read. Returns the first
        failure (naming the pack) and the facts left unknown by failures."""
        compiled = self._active.compiled
        cache = self._wanted
        if cache is None or cache[0] is not compiled or cache[1] is not needed:
            # Which of the needed facts each pack gives, and their declared
            # types: fixed for one compiled policy, so worked out once rather
            # than on every order.
            owners = compiled.pack_facts
            kinds = compiled.pack_types
            cache = self._wanted = (
                compiled,
                needed,
                [
                    (
                        pack,
                        [(n, kinds.get(n, "number")) for n in needed if owners.get(n) == pack.name],
                    )
                    for pack in self._packs
                ],
            )
        ctx = _fact_context(order, portfolio, market)
        failure: str | None = None
        unknown: set[str] = set()
        for pack, wanted in cache[2]:
            if not wanted or (overrides and all(n in overrides for n, _ in wanted)):
                continue
            problem = None
            try:
                values = pack.facts(ctx)
            except Exception as exc:  # third-party code on the trading path
                problem = (
                    f"risk pack {pack.name!r} failed to give facts: {type(exc).__name__}: {exc}"
                )
                values = {}
            for name, kind in wanted:
                if problem is None:
                    if kind == "number" and type(values) is dict:
                        # The common case inline: a float (or int, Decimal)
                        # within range, as _pack_value would take it; anything
                        # else goes through _pack_value and its errors.
                        raw = values.get(name)
                        raw_type = type(raw)
                        if raw_type is float or raw_type is Decimal or raw_type is int:
                            number = float(raw)  # type: ignore[arg-type]
                            if -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE:  # refuses NaN
                                facts[name] = raw if raw_type is Decimal else number
                                continue
                    problem = self._pack_value(pack.name, name, values, facts, kind)
                if problem is not None:
                    unknown.update(n for n, _ in wanted)
                    failure = failure or problem
                    break
        return failure, frozenset(unknown) if unknown else _NOTHING_UNKNOWN

    @staticmethod
    def _pack_value(
        pack: str, name: str, values: object, facts: dict[str, object], kind: str = "number"
    ) -> str | None:
        if not isinstance(values, Mapping) or name not in values:
            return f"risk pack {pack!r} did not give fact {name}"
        try:
            value = to_fact(name, values[name])
        except RiskError as exc:
            return f"risk pack {pack!r}: {exc}"
        if kind == "bool" or kind == "string":
            # A declared yes/no or text fact: exactly that type, else the order is refused.
            if not isinstance(value, bool if kind == "bool" else str) or (
                kind == "string" and isinstance(value, bool)
            ):
                return f"risk pack {pack!r}: fact {name} must be a {kind}, got {values[name]!r}"
            facts[name] = value
            return None
        if not isinstance(value, float):
            return f"risk pack {pack!r}: fact {name} must be a number"
        # A Decimal is kept as given (checked finite and in range above): the
        # exact confirmation of the decision compares it, not its double.
        raw = values[name]
        facts[name] = raw if type(raw) is Decimal else value
        return None

    @staticmethod
    def _decided_without(plan: StagePlan, fired: list[Rule], unknown: frozenset[str]) -> bool:
        """With some pack facts unknown, a decision still stands when neither
        the deciding rule nor any rule ranked before it reads them: those
        rules' outcome did not depend on the missing facts. This is what lets
        an exit (``order.reducing``, ranked first) through while a pack is
        broken; every other order is rejected naming the pack."""
        if not fired:
            return False
        decider = fired[0]
        for rule in plan.rules:
            if rule.rank > decider.rank:
                return True
            if unknown.intersection(expr.facts_of(rule.when)):
                return False
        return True

    def _fire(
        self,
        engine: EngineRuleset,
        plan: StagePlan,
        facts: Mapping[str, object],
        unknown: frozenset[str] = frozenset(),
    ) -> list[Rule]:
        quiet = plan.quiet
        if quiet is not None and not unknown and _quiet(quiet, facts):
            return []
        # Every value is validated and converted on its way into the message
        # (bot4.risk.message): NaN, infinities and huge numbers never reach C.
        # Unknown facts are left out; a rule reading one cannot match.
        body = generic_body(plan.fields, facts, unknown) if unknown else plan.encode(facts)
        keys = engine.fire(body)
        fired = []
        for key in keys:
            rule = plan.by_key.get(key)
            if rule is None:
                raise RiskError(f"engine fired unknown rule {key!r}")
            fired.append(rule)
        if len(fired) > 1:
            fired.sort(key=lambda r: r.rank)
        return fired

    def _reject(self, rule: Rule, raw: Mapping[str, object], order: Order) -> Rejected:
        facts = convert(raw, rule.facts)
        values: dict[str, Any] = dict(facts)
        suggested = Decimal(0)
        if rule.suggested is not None:
            value = expr.evaluate(rule.suggested, facts)
            if isinstance(value, float) and value > 0:
                size = Decimal(repr(value))
                if size >= order.qty:
                    # Near a limit the doubles can say the rejected size itself
                    # fits; the suggestion stays strictly below it (one step of
                    # SIZE_QUANTUM), so a size-cut retry never resubmits the same
                    # order.
                    suggested = _step_below(order.qty)
                else:
                    # Round down so the suggestion passes the limit it came from
                    # (and stays below the rejected size).
                    suggested = size.quantize(SIZE_QUANTUM, rounding=ROUND_DOWN)
                # 0.04000000 reads as 0.04; never as 4E-2 or 1E+2.
                suggested = (
                    suggested.normalize()
                    if suggested != suggested.to_integral()
                    else suggested.quantize(Decimal(1))
                )
        reason = render(rule.reason, {**rule.params, **facts, "suggested_size": suggested})
        return Rejected(
            rule=rule.name, reason=reason, suggested_size=suggested, values=values, order=order
        )

    def _explain(
        self,
        stage: str,
        plan: StagePlan,
        fired: list[Rule],
        decider: Rule | None,
        raw: Mapping[str, object],
        decision: Decision | None,
        actions: tuple[RiskAction, ...],
    ) -> Explanation:
        facts = convert_all(raw)
        fired_names = {r.name for r in fired}
        entries = tuple(
            TraceEntry(
                rule=r.name,
                where=r.where,
                outcome=r.action.value if r.action is not None else r.outcome,
                fired=r.name in fired_names,
                decided=decider is not None and r.name == decider.name,
                condition=r.when_source,
                values={n: facts[n] for n in r.facts if n in facts},
            )
            for r in plan.rules
        )
        return Explanation(
            stage=stage,
            decision=decision,
            actions=actions,
            decided_by=decider.name if decider is not None else None,
            trace=entries,
            facts=dict(facts),
        )

    # --- monitoring ---

    def on_market_data(
        self, tick: MarketData, portfolio: Portfolio, now_ns: int
    ) -> list[RiskAction]:
        """Liquidation ladder and drawdown for the open position in
        ``tick.symbol``. Returns at once when there is none: only a held
        symbol's price moves equity or a liquidation distance. Risk packs are
        fed ticks by the kernel (``RiskRules.on_market_data``), not here, so a
        pack never sees a tick twice."""
        position = portfolio.positions.get(tick.symbol)
        if position is None or position.qty == 0 or TICK not in self._active.engines:
            return []
        try:
            actions, _ = self._tick(tick, portfolio, now_ns, None, trace=False)
        except Exception as exc:  # monitoring blind: trip the breaker
            return self._monitor_failed("tick", tick.symbol, exc, now_ns)
        return actions

    def on_tracked_tick(self, tick: MarketData, book: Book, now_ns: int) -> list[RiskAction]:
        """:meth:`on_market_data` for a caller that keeps the book in a
        :class:`~bot4.portfolio.PortfolioTracker` (the kernel) and reports
        every fill through :meth:`on_fill`. The Portfolio snapshot, rebuilt
        whenever a mark moves, is only asked for when the tick's symbol is
        held: otherwise there is nothing to watch and the answer is ``[]``, as
        from :meth:`on_market_data`. A tick of a held symbol priced inside
        the symbol's band (:mod:`bot4.risk.band`: the prices at which no tick
        rule can fire, worked out from the last tick that asked the engine)
        is answered ``[]`` at once; any other asks the engine. A subclass
        that overrides :meth:`on_market_data` has it called on every tick,
        as before."""
        if self._own_monitor:
            return self.on_market_data(tick, book.snapshot(), now_ns)
        symbol = tick.symbol
        position = book.position(symbol)
        if position is None:
            return []
        band = self._bands.get(symbol)
        if band is not None:
            try:
                inside = (
                    band.position is position
                    and band.low <= tick.last <= band.high
                    and band.venue is self.venue_margins.get(symbol)
                    and band.holds(book, self._breaker.tripped)  # type: ignore[arg-type]  # see _new_band
                )
            except Exception:  # a book that cannot say: ask the engine
                inside = False
            if inside:
                band.hits += 1
                return []
            self._drop_band(symbol, band)
        portfolio = book.snapshot()
        # on_market_data's steps (a subclass overriding it took the branch
        # above), keeping the facts: a new band starts from them.
        held = portfolio.positions.get(symbol)
        if held is None or held.qty == 0 or TICK not in self._active.engines:
            return []
        try:
            facts = self._tick_facts(tick, portfolio, now_ns)
            actions, _ = self._monitor(TICK, facts, symbol, now_ns, None, False)
        except Exception as exc:  # monitoring blind: trip the breaker
            return self._monitor_failed("tick", symbol, exc, now_ns)
        if not actions and self._band_ranges is not None:
            self._new_band(symbol, tick, portfolio, book, facts)
        return actions

    def _drop_band(self, symbol: str, band: bands.Band) -> None:
        del self._bands[symbol]
        wait = self._band_wait.setdefault(symbol, [0, 1])
        # A band that answered no tick was work for nothing (the price keeps
        # leaving it, or the book keeps changing under it): wait longer
        # before the next one. The answers are the engine's either way.
        wait[1] = 1 if band.hits else min(wait[1] * 2, _BAND_BACKOFF_MAX)
        wait[0] = wait[1] - 1

    def _new_band(
        self,
        symbol: str,
        tick: MarketData,
        portfolio: Portfolio,
        book: Book,
        facts: Mapping[str, object] | None = None,
    ) -> None:
        wait = self._band_wait.get(symbol)
        if wait is not None and wait[0] > 0:
            wait[0] -= 1
            return
        ranges = self._band_ranges
        position = portfolio.positions.get(symbol)
        if ranges is None or position is None:
            return
        try:
            band = bands.compute(
                symbol,
                tick,
                position,
                portfolio,
                # A Book without cash, peak_equity or mark_price raises in
                # compute (caught below: no band), so a band only exists for
                # a book that has them, and holds() may read them.
                book,  # type: ignore[arg-type]
                self._breaker.tripped,
                self._active.compiled.mmr,
                ranges,
                _quiet,
                self.venue_margins.get(symbol),
                facts,
            )
        except Exception:  # no band (fail safe): the engine answers every tick
            band = None
        if band is None:
            wait = self._band_wait.setdefault(symbol, [0, 1])
            wait[1] = min(wait[1] * 2, _BAND_BACKOFF_MAX)
            wait[0] = wait[1] - 1
            return
        self._bands[symbol] = band

    def _monitor_failed(
        self, stage: str, symbol: str, exc: BaseException, now_ns: int
    ) -> list[RiskAction]:
        files = ", ".join(self._active.compiled.files)
        reason = f"risk monitoring failed on a {stage} for {symbol}: {exc} (rule files: {files})"
        log.error("%s", reason)
        if self._breaker.trip(reason, now_ns):
            return [
                RiskAction(
                    kind=RiskActionKind.TRIP_BREAKER, symbol=None, rule=FAIL_CLOSED, reason=reason
                )
            ]
        return []

    def _tick(
        self,
        tick: MarketData,
        portfolio: Portfolio,
        now_ns: int,
        overrides: Mapping[str, object] | None,
        trace: bool,
    ) -> tuple[list[RiskAction], Explanation | None]:
        facts = self._tick_facts(tick, portfolio, now_ns)
        return self._monitor(TICK, facts, tick.symbol, now_ns, overrides, trace)

    def _tick_facts(self, tick: MarketData, portfolio: Portfolio, now_ns: int) -> dict[str, object]:
        """The tick stage's facts for a held symbol, before windows, packs or
        overrides (which _monitor adds)."""
        active = self._active
        position = portfolio.positions[tick.symbol]
        mmr = active.compiled.mmr
        venue = self.venue_margins.get(tick.symbol)
        facts = tick_facts(tick, position, portfolio, self._breaker.tripped, mmr, venue)
        reads = active.compiled.stages[TICK].reads
        wanted = reads & CONTEXT_FACTS
        if wanted:
            context_facts(wanted, facts, portfolio, now_ns, tick.symbol)
        margin_wanted = reads & MARGIN_FACTS
        if margin_wanted:
            margin_facts(
                margin_wanted, facts, position, tick, portfolio.mark(tick.symbol), mmr, venue
            )
        return facts

    def _monitor(
        self,
        stage: str,
        facts: dict[str, object],
        symbol: str,
        now_ns: int,
        overrides: Mapping[str, object] | None,
        trace: bool,
    ) -> tuple[list[RiskAction], Explanation | None]:
        active = self._active
        plan = active.compiled.stages[stage]
        if plan.windows:
            self._window_facts(facts, plan.windows, symbol, now_ns)
        if overrides:
            for name, value in overrides.items():
                facts[name] = to_fact(name, value)
        engine = active.engines.get(stage)
        fired: list[Rule] = []
        if engine is not None and not (plan.quiet is not None and _quiet(plan.quiet, facts)):
            # Near a rung the doubles can miss it (a distance of 0.0999...9
            # is sent as 0.1): the actions are the rules that hold exactly.
            fired = _exactly_fired(plan, self._fire(engine, plan, facts), facts)
        actions: list[RiskAction] = []
        worst: RiskAction | None = None
        for rule in fired:
            assert rule.action is not None
            values = convert(facts, rule.facts)
            reason = render(rule.reason, {**rule.params, **values})
            if rule.action is RiskActionKind.TRIP_BREAKER:
                if self._breaker.trip(f"{rule.name}: {reason}", now_ns):
                    actions.append(
                        RiskAction(
                            kind=rule.action,
                            symbol=None,
                            rule=rule.name,
                            reason=reason,
                            fraction=rule.fraction,
                            values=values,
                        )
                    )
                continue
            action = RiskAction(
                kind=rule.action,
                symbol=symbol,
                rule=rule.name,
                reason=reason,
                fraction=rule.fraction,
                values=values,
            )
            if worst is None or SEVERITY[action.kind] > SEVERITY[worst.kind]:
                worst = action
        if worst is not None:
            actions.insert(0, worst)
        explanation = None
        if trace:
            decider = None
            if worst is not None:
                decider = next(r for r in fired if r.name == worst.rule)
            explanation = self._explain(stage, plan, fired, decider, facts, None, tuple(actions))
        return actions, explanation

    def on_fill(
        self, fill: Fill, portfolio: Portfolio, now_ns: int, stop_out: bool
    ) -> list[RiskAction]:
        """Count stop-outs (event time) and run the ``fill`` rules, e.g.
        "M stop-outs within a window trips the breaker"."""
        # A fill moves cash and a position: a band tied to the book's cash and
        # positions ends; one on the equity or the symbol alone checks what
        # a fill changes (the equity, its own position) on every tick.
        for symbol in [s for s, b in self._bands.items() if b.book == "book"]:
            del self._bands[symbol]
        try:
            actions, _ = self._fill(fill, portfolio, now_ns, stop_out, None, trace=False)
        except Exception as exc:  # monitoring blind: trip the breaker
            return self._monitor_failed("fill", fill.symbol, exc, now_ns)
        return actions

    def _fill(
        self,
        fill: Fill,
        portfolio: Portfolio,
        now_ns: int,
        stop_out: bool,
        overrides: Mapping[str, object] | None,
        trace: bool,
    ) -> tuple[list[RiskAction], Explanation | None]:
        if stop_out:
            self._events.record(STOP_OUTS, fill.symbol, now_ns)
        facts = fill_facts(fill, portfolio, self._breaker.tripped, stop_out)
        plan = self._active.compiled.stages.get(FILL)
        wanted = plan.reads & CONTEXT_FACTS if plan is not None else frozenset()
        if wanted:
            context_facts(wanted, facts, portfolio, now_ns, fill.symbol)
        return self._monitor(FILL, facts, fill.symbol, now_ns, overrides, trace)

    # --- explanations ---

    def explain(
        self,
        stage: str,
        *,
        portfolio: Portfolio,
        now_ns: int,
        order: Order | None = None,
        market: MarketData | None = None,
        fill: Fill | None = None,
        stop_out: bool = False,
        overrides: Mapping[str, object] | None = None,
    ) -> Explanation:
        """Evaluate like the trading path and return the full trace. Unlike the
        trading path this raises (RiskError) so a caller can show the error."""
        if stage == ORDER:
            if order is None:
                raise RiskError("an order scenario needs an order")
            decision, explanation = self._order(
                order, portfolio, market, now_ns, overrides, trace=True
            )
            if explanation is None:  # a pack refused before the engine ran
                return Explanation(ORDER, decision, (), FAIL_CLOSED, (), {})
            return explanation
        if stage == TICK:
            if market is None:
                raise RiskError("a tick scenario needs market data")
            position = portfolio.positions.get(market.symbol)
            if position is None or position.qty == 0:
                return Explanation(TICK, None, (), None, (), {})
            _, explanation = self._tick(market, portfolio, now_ns, overrides, trace=True)
            assert explanation is not None
            return explanation
        if stage == FILL:
            if fill is None:
                raise RiskError("a fill scenario needs a fill")
            _, explanation = self._fill(fill, portfolio, now_ns, stop_out, overrides, trace=True)
            assert explanation is not None
            return explanation
        raise RiskError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")

    def record_order(self, symbol: str, now_ns: int) -> None:
        """Count an order approved elsewhere (scenario history replay)."""
        self._events.record(ORDERS, symbol, now_ns)

    # --- state across restarts (bot4.journal.riskstate) ---

    def watch_windows(self, observer: Callable[[str, str, int], None] | None) -> None:
        """Tell ``observer(kind, symbol, now_ns)`` of every event the windows
        count, and ``observer(kind, "", -1)`` when they forget a kind (a
        breaker reset forgets the stop-outs)."""
        self._events.observer = observer

    @property
    def window_kinds(self) -> tuple[str, ...]:
        """The kinds of events the windows count."""
        return EVENT_KINDS

    @property
    def window_horizon_ns(self) -> int:
        """How far back (event time) the longest window looks."""
        return self._events.horizon_ns

    def restore_window_events(self, kind: str, events: Iterable[tuple[str, int]]) -> int:
        """Count journaled ``(symbol, event time)`` events of ``kind`` again
        after a restart; returns how many."""
        return self._events.restore(kind, events)
