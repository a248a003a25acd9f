"""The kernel: one trio task that turns exchange events into decisions.

Data flow, for every event the exchange streams (ticks, fills, order updates)::

    exchange.stream ──► portfolio marks ──► risk monitor (ladder, breaker) ──► risk actions
                   └──► strategies ──► signals ──► RiskGate ──► exchange.place_order
                                                       └──► rejected (rule, reason, numbers)

The decision path runs in this one task, in event order, so a session is
deterministic: replaying its input events reproduces every decision and fill.
Every step is also published on the event bus (``market.<SYMBOL>``,
``signal.<strategy>``, ``risk.approved``, ``risk.rejected``, ``risk.action``,
``order.placed``, ``order.update``, ``fill.<SYMBOL>``, ``kernel.error``) for the
observers: recorder, journal, metrics, dashboards. Observers never decide.

The loop over the stream and the tick path live in :mod:`bot4.kernel_loop`
(a tick that asks nothing is plain calls, no coroutine); fills, order
updates, signals, orders and risk actions here. What the kernel needs of
its collaborators (policy, book, journal hooks) and the counters it keeps
(:class:`~bot4.kernel_types.KernelStats`) are in :mod:`bot4.kernel_types`.

Fail closed: no order reaches the exchange without an Approved from the gate;
a strategy that raises is reported and skipped; a risk component that raises
or hangs rejects the order.

Protective orders (:mod:`bot4.protection`): every position keeps its entry's
stop loss and take profit, as exits the exchange attaches
(``Capability.ATTACHED_EXITS``), as reduce-only stop orders the kernel keeps
sized to the position (``Capability.STOP_ORDERS``), or, for an exchange with
neither, as levels the kernel holds itself and checks on every tick. A
protective stop that cannot be placed closes the position (fail closed).
Either way a stop's fill is a stop-out for the breaker rules.

Risk state across restarts: with ``risk_journal`` set (the journal service
sets it), the kernel journals its ladder latches and calls ``checkpoint()``
after a breaker trip, a stop-out and a ladder rung, so what a restart
restores (:mod:`bot4.journal.riskstate`) includes them even when the process
dies in the same tick.

Stopping: :meth:`Kernel.request_stop` (a signal, from ``bot4 run``) ends the
run between two events: the event being handled is finished, none is taken
after it, so no order is left half-way (intent journaled, never sent). Only a
wait is cut short: for the next event, or for the real-time pacer (the tick
is then handled at once). An error the stream raises on purpose (a
:class:`bot4.errors.Bot4Error`: a bad data row, a venue that gave up) ends
the run the same way, kept in :attr:`Kernel.stop_error`; the session then
ends normally (summary, journal, recording) and reports it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bot4.bus import Bus
from bot4.contracts import Exchange, MarketInfo, RiskRules, Strategy
from bot4.errors import Bot4Error, ExchangeFailed, ExchangeRefused
from bot4.gate import RiskGate
from bot4.kernel_loop import SHADOW_TOPIC, EventLoop
from bot4.kernel_types import KernelStats, Policy, RiskJournal, Tracker, WriteAhead
from bot4.margin_desk import MarginDesk
from bot4.model import (
    ZERO,
    Approved,
    Decision,
    Fill,
    MarketData,
    Order,
    OrderState,
    OrderType,
    Portfolio,
    Rejected,
    RiskAction,
    RiskActionKind,
    Side,
    Signal,
)
from bot4.protection import Protector, closing_order
from bot4.secrets import redact

if TYPE_CHECKING:
    from bot4.risk.shadow import ShadowPolicy

# How often (in ticks) the kernel looks at the wall clock to decide whether to
# poll the rule files for edits; reading the clock every tick costs more.
_RELOAD_POLL_SECONDS = 1.0
_RETRIES = 3
# The liquidation ladder escalates: a rung acts once per position, and only a
# more severe rung acts after it (halving "again" on every tick would empty the
# position in a few ticks although its liquidation price has not moved).
_LADDER = {
    RiskActionKind.ADD_MARGIN: 1,
    RiskActionKind.REDUCE_POSITION: 2,
    RiskActionKind.EMERGENCY_CLOSE: 3,
}
# The risk-state key of a symbol's ladder latch ({"rung": n, "side": "buy"}).
LADDER_KEY = "ladder."


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _ns(event: MarketData | Fill) -> int:
    if isinstance(event, MarketData):
        return event.ts_ns  # a slot the loader fills (the tick path reads it directly)
    # Exact integer arithmetic in C (timedelta // timedelta is an int): about
    # half the cost of going through a float timestamp, and no float at all.
    return (event.timestamp - _EPOCH) // _MICROSECOND * 1000


class Kernel:
    """Runs one session against one exchange. Use :meth:`run` inside trio."""

    def __init__(
        self,
        *,
        exchange: Exchange,
        strategies: Sequence[Strategy],
        gate: RiskGate,
        policy: Policy,
        tracker: Tracker,
        bus: Bus,
        packs: Sequence[RiskRules] = (),
        session_id: str = "s1",
        on_tick: Callable[[MarketData], Awaitable[None]] | None = None,
        journal: WriteAhead | None = None,
        resize_rejected: bool = True,
        reload_every: float = _RELOAD_POLL_SECONDS,
    ) -> None:
        self.exchange = exchange
        self.strategies = tuple(strategies)
        self.gate = gate
        self.policy = policy
        self.tracker = tracker
        self.bus = bus
        self.packs = tuple(packs)
        self.session_id = session_id
        self.stats = KernelStats()
        self._on_tick = on_tick
        self.journal = journal
        self.risk_journal: RiskJournal | None = None
        self.resize_rejected = resize_rejected  # try the policy's suggested size once
        self.reload_every = reload_every  # seconds between polls of the rule files
        self.halted: str | None = None  # set by halt(): the kill switch
        # Called with (rule, outcome, seconds) for every gate decision (the
        # metrics' latency histogram); rule is "" for an approval.
        self.decision_observer: Callable[[str, str, float], None] | None = None
        # A candidate policy asked beside the live one, never deciding
        # (bot4.risk.shadow; ``bot4 run --shadow-rules``). Its questions wait
        # in ``_shadow_orders`` until the live order is placed or refused.
        self.shadow: ShadowPolicy | None = None
        self._shadow_orders: list[tuple[Order, Portfolio, MarketData | None, int, Decision]] = []
        self._markets: dict[str, MarketInfo] = {}
        self._last: dict[str, MarketData] = {}
        # Topic strings bound once per symbol: no f-string per tick.
        self._market_topics: dict[str, str] = {}
        # The event loop and the tick path (bot4.kernel_loop).
        self._loop = EventLoop(self)
        self._next_id = 0
        self._open_stops: set[str] = set()  # open stop-loss orders, wherever placed
        self.protection = Protector(self)
        # Leverage and margin mode before entries, ADD_MARGIN (bot4.margin_desk).
        self.margin = MarginDesk(self)
        # Called with the protection line when the session starts (bot4 run
        # prints it); the mode depends on the connected exchange.
        self.announce: Callable[[str], None] | None = None
        self._ladder: dict[str, tuple[int, Side]] = {}  # symbol -> (rung acted on, position side)
        # Orders this kernel placed that are still open: a fill needs its
        # order's leverage and stop loss for the position. Bounded by open orders.
        self._placed: dict[str, Order] = {}
        self._now_ns = 0
        self._reload_checked = time.monotonic()
        # Awaited with every successful hot reload (the session records it,
        # with the new rule text, so that a replay reloads at the same tick).
        self.on_reload: Callable[[object], Awaitable[None]] | None = None
        self.stop_reason: str | None = None  # set by request_stop()
        self.stop_error: Bot4Error | None = None  # the stream's error that ended the run
        # Cancelled by request_stop() only while the kernel waits (for the
        # next event, or for the pacer), never while it handles an event.
        self._run_scope: trio.CancelScope | None = None
        self._waiting = False
        self._pacing: trio.CancelScope | None = None

    # -- the loop ----------------------------------------------------------

    async def run(self, symbols: Sequence[str]) -> KernelStats:
        await self.exchange.connect()
        try:
            self._markets = dict(await self.exchange.fetch_markets())
            self.margin.start()
            line = await self.protection.start()
            if self.announce is not None:
                self.announce(line)
            # The venue's trading rules, for a replay that answers from the recording.
            markets = {symbol: attrs.asdict(info) for symbol, info in self._markets.items()}
            await self.bus.publish("exchange.markets", markets, ts=0)
            with trio.CancelScope() as self._run_scope:
                await self._loop.run(symbols)
        finally:
            self._run_scope = None
            self.margin.settle(self.stats)
            with trio.CancelScope(shield=True):
                await self.exchange.close()
        return self.stats

    def last_tick(self, symbol: str) -> MarketData | None:
        """The last tick of ``symbol`` the kernel took (None: none yet)."""
        return self._last.get(symbol)

    @property
    def now_ns(self) -> int:
        """The event time of the event being handled (ns since the epoch)."""
        return self._now_ns

    def stop_requested(self) -> bool:
        """A stop was requested (or an input error ended the run). A call, not
        a property: the flag changes under the loop, from another task."""
        return self.stop_reason is not None

    def request_stop(self, reason: str) -> None:
        """End the run after the event being handled (synchronous: callable
        from ``TrioToken.run_sync_soon``, as a signal handler does)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._pacing is not None:
            self._pacing.cancel()
        elif self._waiting and self._run_scope is not None:
            self._run_scope.cancel()

    async def _fill(self, fill: Fill) -> None:
        self.stats.fills += 1
        if fill.liquidity == "liquidation":
            self.stats.liquidations += 1
        now = _ns(fill)
        placed = self._placed.get(fill.client_order_id)
        if placed is not None and not placed.reduce_only:
            self.tracker.apply(fill, leverage=placed.leverage, stop_loss=placed.stop_loss)
        else:
            self.tracker.apply(fill)
        self.margin.filled(fill.symbol)
        latch = self._ladder.get(fill.symbol)
        if latch is not None:
            position = self.tracker.position(fill.symbol)
            if position is None or position.side is not latch[1]:
                del self._ladder[fill.symbol]  # flat or flipped: a new position, a new ladder
                if self.risk_journal is not None:
                    self.risk_journal.note(LADDER_KEY + fill.symbol, None, now, fill.symbol)
        await self.bus.publish(
            f"fill.{fill.symbol}", fill, ts=now, correlation_id=fill.client_order_id
        )
        stop_out = fill.client_order_id in self._open_stops or self.protection.is_stop_out(
            fill.client_order_id
        )
        snapshot = self.tracker.snapshot()
        actions = await self._monitor(lambda: self.policy.on_fill(fill, snapshot, now, stop_out))
        if self.shadow is not None:
            found = self.shadow.fill(fill, snapshot, now, stop_out, actions)
            if found is not None:
                await self.bus.publish(
                    SHADOW_TOPIC, found.as_dict(), ts=now, correlation_id=fill.client_order_id
                )
        if stop_out and self.risk_journal is not None:
            await self.risk_journal.checkpoint()  # the stop-out counts after a crash
        await self._consult(lambda s: s.on_fill(fill), "on a fill")
        await self.protection.after_fill(fill.symbol)

    async def _monitor(self, check: Callable[[], list[RiskAction]]) -> list[RiskAction]:
        """Run the policy's monitoring and act on what it asks for; return
        the actions. A monitor that raises leaves the book unwatched: stop
        opening risk."""
        try:
            actions = check()
        except Exception as exc:  # a blind risk monitor: stop opening risk
            await self._monitor_failed(exc)
            return []
        for action in actions:
            await self._act(action)
        return actions

    async def _monitor_failed(self, exc: Exception) -> None:
        await self._error("risk monitor failed", exc)
        await self.halt(f"risk monitor failed: {type(exc).__name__}: {exc}")

    async def _consult(
        self, ask: Callable[[Strategy], Awaitable[Sequence[Signal]]], what: str
    ) -> None:
        """Ask every strategy for signals; one that raises is reported and skipped."""
        for strategy in self.strategies:
            try:
                signals = await ask(strategy)
            except Exception as exc:  # a plugin error must not stop the session
                self.stats.strategy_errors += 1
                await self._error(f"strategy {strategy.name} failed {what}", exc)
                continue
            for signal in signals:
                await self._signal(signal)

    async def _order_update(self, state: OrderState) -> None:
        await self.bus.publish(
            "order.update", state, ts=self._now_ns, correlation_id=state.order.client_order_id
        )
        cid = state.order.client_order_id
        if state.order.type is OrderType.STOP_LOSS and state.status.is_open:
            self._open_stops.add(cid)
        if not state.status.is_open:
            self._open_stops.discard(cid)
            self._placed.pop(cid, None)
            self.protection.on_order_closed(state)

    # -- signals and orders --------------------------------------------------

    def _client_id(self, tag: str) -> str:
        self._next_id += 1
        return f"{self.session_id}-{tag}-{self._next_id}"

    def resume(self, last_id: int, open_orders: Sequence[Order] = ()) -> None:
        """After a restart (:mod:`bot4.journal.recovery`): number new client
        order ids past ``last_id``, the highest one used before, so that no id
        is ever reused; and know the still-open orders, whose later fills
        need their leverage and stop loss."""
        self._next_id = max(self._next_id, last_id)
        for order in open_orders:
            self._placed[order.client_order_id] = order
            if order.type is OrderType.STOP_LOSS:
                self._open_stops.add(order.client_order_id)
        self.protection.resume(open_orders)

    def restore_risk_state(self, state: Mapping[str, Any]) -> tuple[int, list[str]]:
        """After a restart: the ladder latches journaled under ``ladder.<SYMBOL>``
        (``state`` maps keys to values), each kept only while the position it
        was set for is still open on the same side. Call after the fills are
        replayed into the tracker. Returns how many were restored and the
        keys that no longer hold (the position closed or flipped while the
        bot was down), for the journal to clear: a later position on the
        same side must not inherit them."""
        restored = 0
        stale: list[str] = []
        for key, value in state.items():
            if not key.startswith(LADDER_KEY) or not isinstance(value, Mapping):
                continue
            symbol = key[len(LADDER_KEY) :]
            rung, side = value.get("rung"), value.get("side")
            position = self.tracker.position(symbol)
            if position is None or position.side is None or position.side.value != side:
                stale.append(key)
                continue
            current = self._ladder.get(symbol)
            if isinstance(rung, int) and (current is None or rung > current[0]):
                self._ladder[symbol] = (rung, position.side)
                restored += 1
        return restored, stale

    async def _signal(self, signal: Signal) -> None:
        self.stats.signals += 1
        await self.bus.publish(f"signal.{signal.strategy}", signal, ts=self._now_ns)
        qty = self._round_qty(signal.symbol, signal.size)
        cid = self._client_id("e")
        if qty <= 0:
            await self._rejected_signal(signal, cid)
            return
        order = Order(
            client_order_id=cid,
            symbol=signal.symbol,
            side=signal.side,
            type=OrderType.MARKET,
            qty=qty,
            stop_loss=signal.stop_loss,
            take_profit=signal.take_profit,
            leverage=signal.leverage,
            strategy=signal.strategy,
            correlation_id=cid,
        )
        state = await self._submit(order, resize=self.resize_rejected)
        if state is not None:
            await self.protection.on_entry(order)

    async def _rejected_signal(self, signal: Signal, cid: str) -> None:
        market = self._markets[signal.symbol]
        self.stats.rejected += 1
        self.stats.rejections_by_rule["min-qty"] += 1
        decision = Rejected(
            rule="min-qty",
            reason=f"size {signal.size} rounds below the market minimum {market.min_qty}",
            values={"size": str(signal.size), "min_qty": str(market.min_qty)},
        )
        await self.bus.publish("risk.rejected", decision, ts=self._now_ns, correlation_id=cid)

    async def _submit(self, order: Order, *, resize: bool = False) -> OrderState | None:
        """Gate, then place. Returns the exchange's state, or None if refused.
        A shadow policy is asked after that: never before the order is out."""
        state = await self._submit_live(order, resize=resize)
        if self._shadow_orders:
            await self._ask_shadow()
        return state

    async def _ask_shadow(self) -> None:
        shadow = self.shadow
        asked, self._shadow_orders = self._shadow_orders, []
        if shadow is None:
            return
        ruled = set(self.policy_rule_names())
        for order, portfolio, market, now, live in asked:
            if isinstance(live, Approved):
                shadow.live_approved(order.symbol, now)
            elif live.rule not in ruled:
                continue  # refused by the gate itself (a shared budget): no rule to compare
            found = shadow.order(order, portfolio, market, now, live)
            if found is not None:
                await self.bus.publish(
                    SHADOW_TOPIC, found.as_dict(), ts=now, correlation_id=order.correlation_id
                )

    def policy_rule_names(self) -> tuple[str, ...]:
        names = getattr(self.policy, "rule_names", ())
        return tuple(names) if isinstance(names, tuple | list) else ()

    async def _submit_live(self, order: Order, *, resize: bool = False) -> OrderState | None:
        if self.halted is not None and not order.reduce_only:
            halted = Rejected(rule="kill-switch", reason=f"trading halted: {self.halted}")
            await self._rejected(order, halted)
            return None
        decision = await self._decide(order)
        if isinstance(decision, Rejected) and resize and decision.suggested_size > 0:
            # The policy said how large an order would pass: try that once
            # ("size cut"), rounded down to the market's lot. Only a strictly
            # smaller order is tried (the same size would be refused again),
            # and it goes through the whole gate again.
            smaller = self._round_qty(order.symbol, decision.suggested_size)
            if ZERO < smaller < order.qty:
                await self._rejected(order, decision)
                order = attrs.evolve(order, qty=smaller, client_order_id=self._client_id("r"))
                self.stats.resized += 1
                decision = await self._decide(order)
        if not isinstance(decision, Approved):
            await self._rejected(order, decision)
            return None
        refused = await self.margin.before_entry(order)
        if refused is not None:
            await self._rejected(order, refused)
            return None
        self.stats.approved += 1
        await self.bus.publish(
            "risk.approved", decision, ts=self._now_ns, correlation_id=order.correlation_id
        )
        return await self._place(order)

    async def _decide(self, order: Order) -> Decision:
        if self.shadow is not None:
            snapshot, market = self.tracker.snapshot(), self._last.get(order.symbol)
            decision = await self._decide_live(order)
            self._shadow_orders.append((order, snapshot, market, self._now_ns, decision))
            return decision
        return await self._decide_live(order)

    async def _decide_live(self, order: Order) -> Decision:
        observer = self.decision_observer
        if observer is None:
            return await self.gate.check(
                order, self.tracker.snapshot(), self._last.get(order.symbol), self._now_ns
            )
        # Timed only when someone listens: two clock reads per decision.
        started = time.perf_counter_ns()
        decision = await self.gate.check(
            order, self.tracker.snapshot(), self._last.get(order.symbol), self._now_ns
        )
        elapsed = (time.perf_counter_ns() - started) / 1e9
        if isinstance(decision, Approved):
            observer("", "approved", elapsed)
        else:
            observer(decision.rule, "rejected", elapsed)
        return decision

    async def _rejected(self, order: Order, decision: Rejected) -> None:
        self.stats.rejected += 1
        self.stats.rejections_by_rule[decision.rule] += 1
        if decision.order is None:
            decision = attrs.evolve(decision, order=order)
        await self.bus.publish(
            "risk.rejected", decision, ts=self._now_ns, correlation_id=order.correlation_id
        )

    async def _place(self, order: Order) -> OrderState | None:
        # Known before the call: a market order's fill may come back from the
        # stream right after, and the fill needs this order's leverage. The
        # entry goes when the order's final state arrives.
        self._placed[order.client_order_id] = order
        if self.journal is not None:
            try:
                await self.journal.write_ahead(order)
            except Exception as exc:  # no durable intent, no order: fail closed
                self._placed.pop(order.client_order_id, None)
                await self._error(f"journal refused intent {order.client_order_id}", exc)
                await self._rejected(
                    order, Rejected(rule="journal", reason=f"journal unavailable: {exc}")
                )
                return None
        for attempt in range(_RETRIES):
            try:
                state = await self.exchange.place_order(order)
            except ExchangeRefused as exc:
                self._placed.pop(order.client_order_id, None)
                self.stats.exchange_refusals += 1
                await self._error(f"exchange refused {order.client_order_id}", exc)
                return None
            except ExchangeFailed as exc:
                # The same client order id makes the retry idempotent.
                if attempt == _RETRIES - 1:
                    # Unknown outcome: keep the entry, a late fill still needs it.
                    await self._error(
                        f"giving up on {order.client_order_id} after {_RETRIES} tries", exc
                    )
                    return None
                await trio.sleep(0.2 * 2**attempt)
                continue
            await self.bus.publish(
                "order.placed", state, ts=self._now_ns, correlation_id=order.correlation_id
            )
            return state
        return None

    def _round_qty(self, symbol: str, qty: Decimal) -> Decimal:
        market = self._markets.get(symbol)
        if market is None or market.qty_increment <= 0:
            return qty
        rounded = (qty / market.qty_increment).to_integral_value(
            rounding=ROUND_DOWN
        ) * market.qty_increment
        return rounded if rounded >= market.min_qty else ZERO

    # -- risk actions ------------------------------------------------------------

    async def _act(self, action: RiskAction) -> None:
        rung = _LADDER.get(action.kind)
        if rung is not None and action.symbol is not None:
            position = self.tracker.position(action.symbol)
            if position is None or position.side is None:
                return
            latch = self._ladder.get(action.symbol)
            if latch is not None and latch[0] >= rung:
                return
            self._ladder[action.symbol] = (rung, position.side)
            if self.risk_journal is not None:
                # Committed before the rung acts: a restart does not act on it again.
                self.risk_journal.note(
                    LADDER_KEY + action.symbol,
                    {"rung": rung, "side": position.side.value},
                    self._now_ns,
                    action.symbol,
                )
                await self.risk_journal.checkpoint()
        self.stats.actions[action.kind.value] += 1
        await self.bus.publish("risk.action", action, ts=self._now_ns)
        if action.kind is RiskActionKind.TRIP_BREAKER:
            self.stats.breaker_trips += 1
            if self.risk_journal is not None:
                await self.risk_journal.checkpoint()  # the trip survives a crash from here on
            return
        if action.kind is RiskActionKind.ADD_MARGIN:
            # Carried out by an exchange that claims MARGIN (else published
            # only); with no free margin it becomes the next rung.
            escalated = await self.margin.add_margin(action)
            if escalated is not None:
                await self._act(escalated)
            return
        if action.symbol is None:
            return
        position = self.tracker.position(action.symbol)
        if position is None or position.qty == 0:
            return
        fraction = ZERO + 1 if action.kind is RiskActionKind.EMERGENCY_CLOSE else action.fraction
        qty = self._round_qty(action.symbol, abs(position.qty) * fraction)
        if qty <= 0:
            return
        if action.kind is RiskActionKind.EMERGENCY_CLOSE:
            await self.protection.cancel(action.symbol)
        order = closing_order(self._client_id("x"), action.symbol, position.qty, qty)
        await self._submit(order)

    # -- kill switch -------------------------------------------------------------

    async def halt(self, reason: str) -> int:
        """Stop trading: refuse every new order that is not reduce-only and
        cancel every open order. Safe to call from another task (a Redis kill
        switch listener). Returns the number of orders cancelled."""
        first = self.halted is None
        self.halted = reason
        if first:
            await self.bus.publish("kernel.halted", reason, ts=self._now_ns)
        cancelled = 0
        for state in await self.exchange.fetch_open_orders():
            try:
                await self.exchange.cancel_order(state.order.symbol, state.order.client_order_id)
                cancelled += 1
            except ExchangeRefused:
                pass  # filled or cancelled meanwhile
            except ExchangeFailed as exc:
                await self._error(f"halt could not cancel {state.order.client_order_id}", exc)
        return cancelled

    # -- housekeeping -----------------------------------------------------------

    async def _maybe_reload(self) -> object | None:
        """Poll the rule files; return the outcome of a reload that took. A
        refused reload (a file that does not compile or cannot be read) leaves
        the last good policy in force and is reported on ``kernel.error`` and
        counted (``bot4_rule_reloads_total{result}``); it never ends the
        session, even when the policy's reload raises."""
        now = time.monotonic()
        if now - self._reload_checked < self.reload_every:
            return None
        self._reload_checked = now
        try:
            outcome = self.policy.reload_if_changed()
        except Exception as exc:  # the policy in force stays; the session goes on
            self.stats.reload_failures += 1
            await self._error("rule reload failed, keeping the previous policy", exc)
            return None
        if outcome is None:
            return None
        error = getattr(outcome, "error", None)
        if error is None:
            self.stats.reloads += 1
            return outcome
        self.stats.reload_failures += 1
        await self.bus.publish(
            "kernel.error",
            redact(f"rule reload refused, keeping the previous policy: {error}"),
            ts=self._now_ns,
        )
        return None

    async def _error(self, what: str, exc: BaseException) -> None:
        await self.bus.publish(
            "kernel.error", redact(f"{what}: {type(exc).__name__}: {exc}"), ts=self._now_ns
        )
