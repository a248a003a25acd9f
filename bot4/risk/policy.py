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

This module holds the class and the order of its steps (facts, windows, pack
facts, the engine, the exact confirmation, the verdict or the risk actions);
its parts, re-exported here where other code imports them from this module:

* :mod:`bot4.risk.build`       — files and packs compiled into the policy in force
* :mod:`bot4.risk.reload`      — hot reload: polling the files, :class:`ReloadOutcome`
* :mod:`bot4.risk.pack_facts`  — the packs' facts, checked when built, asked per order
* :mod:`bot4.risk.firing`      — which rules fire: the engine, quiet ranges, exactness
* :mod:`bot4.risk.verdicts`    — the Approved or Rejected an order gets, ``FAIL_CLOSED``
* :mod:`bot4.risk.held_bands`  — held symbols' price bands (on_tracked_tick), ``Book``
* :mod:`bot4.risk.explanation` — :class:`Explanation`, the trace ``rules eval`` shows
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from bot4.contracts import RiskRules
from bot4.errors import RiskError, RuleFileError
from bot4.model import (
    Decision,
    Fill,
    MarketData,
    Order,
    Portfolio,
    Rejected,
    RiskAction,
    RiskActionKind,
)
from bot4.risk import band as bands
from bot4.risk.breaker import Breaker
from bot4.risk.build import ActivePolicy, build
from bot4.risk.compiler import SEVERITY, CompiledPolicy, Rule, describe_error, render
from bot4.risk.exact import ExactError, exact_decider
from bot4.risk.explanation import Explanation, TraceEntry, explanation_of
from bot4.risk.expr import QuietRange
from bot4.risk.facts import (
    CONTEXT_FACTS,
    FILL,
    MARGIN_FACTS,
    ORDER,
    STAGES,
    TICK,
    context_facts,
    convert,
    fill_facts,
    margin_facts,
    order_facts,
    tick_facts,
    to_fact,
)
from bot4.risk.firing import exactly_fired, fire_rules, is_quiet
from bot4.risk.held_bands import Book, HeldBands
from bot4.risk.message import STRING_TEXT
from bot4.risk.pack_facts import NOTHING_UNKNOWN, PackFacts, decided_without
from bot4.risk.pack_facts import fact_context as _fact_context  # noqa: F401  (tests read it here)
from bot4.risk.reload import ReloadOutcome, RuleFileWatch
from bot4.risk.verdicts import FAIL_CLOSED, rejection
from bot4.risk.verdicts import approved as _approved
from bot4.risk.windows import EVENT_KINDS, ORDERS, STOP_OUTS, EventLog
from bot4.venue_margin import VenueMargin

__all__ = ["FAIL_CLOSED", "Book", "Explanation", "ReloadOutcome", "RiskPolicy", "TraceEntry"]

log = logging.getLogger("bot4.risk")

# Named here too for the tests that read them from this module: the builders of
# a pack's FactContext and of an approval (_fact_context, _approved, each held
# equal to its class's own) and the texts of string facts in engine messages.
_STRING_TEXT = STRING_TEXT


def _checked(name: str, value: object) -> object:
    """A fact value given from outside (a scenario's override), validated; a
    Decimal stays a Decimal so the decision is confirmed on its exact value."""
    converted = to_fact(name, value)
    return value if type(value) is Decimal else converted


# --- the policy -----------------------------------------------------------------------------


class RiskPolicy:
    """The loaded risk policy. Construct with :meth:`load`."""

    def __init__(
        self, active: ActivePolicy, paths: Sequence[Path], packs: Sequence[RiskRules]
    ) -> None:
        self._active = active
        self._paths = tuple(Path(p) for p in paths)
        self._packs = tuple(packs)
        self._rule_files = RuleFileWatch(self._paths, self._packs)
        # The packs asked for their facts on the order path: a collaborator's
        # bound method, so the call costs one attribute, as a method would.
        self._pack_values = PackFacts(self._packs).values
        self._breaker = Breaker()
        self._events = EventLog()
        # Whether an approval counts in the order windows. A shadow policy
        # (bot4.risk.shadow) counts the live policy's approvals instead.
        self.count_approvals = True
        self._breaker.on_reset(lambda: self._events.clear(STOP_OUTS))
        # Price bands of held symbols (bot4.risk.held_bands): on_tracked_tick
        # reads the very dict and calls the bound methods (as _pack_values).
        self._held_bands = HeldBands(self._breaker)
        self._bands: dict[str, bands.Band] = self._held_bands.bands
        self._drop_band = self._held_bands.drop
        self._new_band = self._held_bands.make
        # The tick stage's quiet ranges when it can have bands, else None
        # (whether on_tracked_tick makes any).
        self._band_ranges: tuple[QuietRange, ...] | None = None
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
        return cls(build(paths, packs), paths, packs)

    def spawn(self) -> RiskPolicy:
        """A new policy from the same files, with its own breaker, counters and
        engine sessions (used to run scenarios side by side)."""
        return RiskPolicy(build(self._paths, self._packs), self._paths, self._packs)

    def close(self) -> None:
        self._active.close()

    def _set_horizon(self) -> None:
        for spec in self._active.compiled.windows.values():
            self._events.set_horizon(spec.seconds)
        plan = self._active.compiled.stages[TICK]
        self._band_ranges = (
            plan.quiet
            if TICK in self._active.engines and bands.supported(plan.quiet, plan.windows)
            else None
        )
        # A new policy: no band of the old one stands.
        self._held_bands.reset(self._band_ranges, self._active.compiled.mmr)

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
        return self._active.summary

    # --- hot reload ---

    def reload_if_changed(self) -> ReloadOutcome | None:
        """Recompile if a rule file changed (by identity, mode, times and size,
        confirmed by content hash). Never raises. A file that fails to compile
        or cannot be read is refused whole; the last good policy stays in
        force and the error is returned (and logged) once per distinct broken
        state. A reload that took is logged with its rule count and digest, so
        a person sees that an edit took."""
        try:
            return self._rule_files.poll(self._active, self._install)
        except Exception as exc:  # a net: a reload must never take the session down
            error = RuleFileError("<policy>", None, f"reload failed: {describe_error(exc)}")
            log.error("rule reload refused, keeping the previous policy: %s", error)  # noqa: TRY400
            return ReloadOutcome(reloaded=False, files=self.files, error=error)

    def _install(self, active: ActivePolicy) -> None:
        """Put a policy a reload built in force (the files' watch closes the one
        it replaces); its windows' horizon and bands start from it."""
        self._active = active
        self._set_horizon()

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
        unknown = NOTHING_UNKNOWN
        if compiled.pack_facts:
            pack_failure, unknown = self._pack_values(
                compiled, facts, plan.reads, order, portfolio, market, overrides
            )
        if overrides:
            for name, value in overrides.items():
                facts[name] = _checked(name, value)
        if engine is None:
            raise RiskError("the policy has no rules for orders: no verdict")
        fired = fire_rules(engine, plan, facts, unknown)
        if pack_failure is not None and not decided_without(plan, fired, unknown):
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
            fired = exactly_fired(plan, fired, facts)
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
            decision = rejection(decider, facts, order)
        if trace:
            explanation = explanation_of(ORDER, plan, fired, decider, facts, decision, ())
        return decision, explanation

    # The rules the engine fires for a stage's facts (bot4.risk.firing), also
    # as a method for code holding a policy (the tests).
    _fire = staticmethod(fire_rules)

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
                    and band.holds(book, self._breaker.tripped)  # type: ignore[arg-type]  # see HeldBands.make
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
            self._new_band(symbol, tick, portfolio, book, facts, self.venue_margins)
        return actions

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
        if engine is not None and not (plan.quiet is not None and is_quiet(plan.quiet, facts)):
            # Near a rung the doubles can miss it (a distance of 0.0999...9
            # is sent as 0.1): the actions are the rules that hold exactly.
            fired = exactly_fired(plan, fire_rules(engine, plan, facts), facts)
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
            explanation = explanation_of(stage, plan, fired, decider, facts, None, tuple(actions))
        return actions, explanation

    def on_fill(
        self, fill: Fill, portfolio: Portfolio, now_ns: int, stop_out: bool
    ) -> list[RiskAction]:
        """Count stop-outs (event time) and run the ``fill`` rules, e.g.
        "M stop-outs within a window trips the breaker"."""
        self._held_bands.fill_seen()  # a band tied to the book's cash ends
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
