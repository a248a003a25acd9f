"""The session service that joins a session to the shared state in Redis.

``default_services()`` adds it when ``BOT4_REDIS_URL`` is set (and
``default_packs()`` the ``shared`` facts pack). At session start it:

* adds :class:`~bot4.shared.budget.SharedBudgetCheck` to the gate (every new
  order reserves its notional in the shared budget or is refused);
* subscribes to the bus to settle and release reservations: ``fill.#``
  (settle: reservation -> filled exposure, the position's notional as this
  process's book says), ``order.update`` (an order no longer open releases
  what is left), ``risk.rejected`` (a reservation made by this gate for an
  order a later check refused), ``risk.approved``/``order.placed`` (an
  approved order the exchange never took is released by the reconciler);
  ``risk.action`` with ``trip_breaker`` trips the shared breaker;
* runs in the session's nursery: the heartbeat (lease refresh, sweep of dead
  processes' reservations, reconcile, facts refresh), the breaker listener
  (trip/reset the local breaker, ``kernel.halt()`` on kill), the writer that
  applies settle/release operations in order, and the stream bridge.

Fail closed: while Redis is unreachable new orders are refused by the gate
check with a reason naming Redis; the kernel still monitors positions and
places reduce-only exits. Settle/release operations wait in order in the
writer's queue, so nothing is lost; when Redis answers again, the heartbeat
restores this process's reservations and positions if Redis lost them
(restart without persistence, expired lease), and the breaker state is read
again (a local trip made meanwhile is pushed to Redis).

At the session's end the bridge is flushed and the process withdraws its
reservations and figures from the budget.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs
import trio

from bot4.bus import Backpressure, Event
from bot4.contracts import RiskRules
from bot4.errors import ExchangeRefused
from bot4.model import (
    ZERO,
    Approved,
    Fill,
    OrderState,
    Rejected,
    RiskAction,
    RiskActionKind,
)
from bot4.session_config import SessionConfig
from bot4.session_services import SessionContext, SessionService
from bot4.shared.breaker import BreakerListener, SharedBreaker, trio_forwarder
from bot4.shared.bridge import DEFAULT_MAXLEN, DEFAULT_PATTERNS, StreamBridge
from bot4.shared.budget import DEFAULT_LEASE, BudgetLimits, SharedBudget, SharedBudgetCheck
from bot4.shared.connection import ENV_URL, RedisConfig, SharedConnection, SharedUnavailable
from bot4.shared.facts import SharedFacts

log = logging.getLogger("bot4.shared")

KILL_PREFIX = "bot4 kill: "
SHARED_PREFIX = "shared breaker: "
# An approved order the exchange has not acknowledged after this long is
# looked up; if the exchange does not know it, its reservation is released.
UNPLACED_GRACE = 5.0


def bridge_patterns(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """BOT4_REDIS_BRIDGE: ``off``, or a comma list of bus patterns (default:
    decisions, orders, fills and kernel events; ``#`` = everything)."""
    env = os.environ if environ is None else environ
    raw = env.get("BOT4_REDIS_BRIDGE", "").strip()
    if not raw:
        return DEFAULT_PATTERNS
    if raw.lower() in ("off", "none", "0", "no"):
        return ()
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def shared_packs(environ: Mapping[str, str] | None = None) -> list[RiskRules]:
    """The ``shared`` facts pack when BOT4_REDIS_URL is set, else nothing."""
    env = os.environ if environ is None else environ
    return [SharedFacts()] if env.get(ENV_URL, "").strip() else []


def shared_services(
    config: SessionConfig, environ: Mapping[str, str] | None = None
) -> list[SessionService]:
    """The Redis service when BOT4_REDIS_URL is set, else nothing."""
    redis_config = RedisConfig.from_env(environ)
    if redis_config is None:
        return []
    env = os.environ if environ is None else environ
    maxlen = int(env.get("BOT4_REDIS_STREAM_MAXLEN", "") or DEFAULT_MAXLEN)
    return [
        SharedService(
            redis_config,
            BudgetLimits.from_env(env),
            bridge=bridge_patterns(env),
            maxlen=maxlen,
        )
    ]


@attrs.frozen
class _Op:
    """One change for Redis, applied in order by the writer."""

    kind: str  # "settle" | "release" | "trip"
    order_id: str = ""
    symbol: str = ""
    filled: Decimal = ZERO
    price: Decimal = ZERO
    reason: str = ""


class SharedService:
    """One session's link to the shared state. Awaited once as a session
    service; everything else runs in the session's nursery."""

    def __init__(
        self,
        config: RedisConfig,
        limits: BudgetLimits | None = None,
        *,
        lease: float = DEFAULT_LEASE,
        refresh: float = 0.5,
        retry: float = 0.5,
        bridge: Sequence[str] = DEFAULT_PATTERNS,
        maxlen: int = DEFAULT_MAXLEN,
    ) -> None:
        self.config = config
        self.limits = limits or BudgetLimits()
        self.lease = lease
        self.refresh = refresh
        self.retry = retry
        self.bridge_patterns = tuple(bridge)
        self.maxlen = maxlen
        self.conn: SharedConnection | None = None
        self.budget: SharedBudget | None = None
        self.breaker: SharedBreaker | None = None
        self.bridge: StreamBridge | None = None
        self.pack: SharedFacts | None = None
        self.ctx: SessionContext | None = None
        self.up = False  # Redis answered the last call
        self._ops_send, self._ops_recv = trio.open_memory_channel[_Op](math.inf)
        self._unplaced: dict[str, tuple[str, float]] = {}  # order id -> (symbol, approved at)

    async def __call__(self, ctx: SessionContext, nursery: trio.Nursery) -> None:
        self.ctx = ctx
        conn = self.conn = SharedConnection(self.config)
        # Unreachable at the start is a setting to fix (a wrong URL, no server):
        # one line and exit 2. An outage later is survived (orders are refused
        # until Redis answers again).
        try:
            await conn.call(lambda client: client.ping())
        except SharedUnavailable as exc:
            conn.close()
            raise SharedUnavailable(f"{ENV_URL}: {exc}") from None
        self.budget = SharedBudget(conn, self.limits, lease=self.lease)
        self.breaker = SharedBreaker(conn)
        packs = getattr(ctx.policy, "packs", ())
        self.pack = next((p for p in packs if isinstance(p, SharedFacts)), None)
        ctx.gate.checks = (*ctx.gate.checks, SharedBudgetCheck(self.budget, retry_after=self.retry))
        bus = ctx.bus
        for pattern, handler in (
            ("fill.#", self._on_fill),
            ("order.update", self._on_update),
            ("order.placed", self._on_placed),
            ("risk.rejected", self._on_rejected),
            ("risk.approved", self._on_approved),
            ("risk.action", self._on_action),
        ):
            bus.subscribe(
                pattern, handler, policy=Backpressure.BLOCK, name=f"redis-shared:{pattern}"
            )
        if self.bridge_patterns:
            self.bridge = StreamBridge(conn, patterns=self.bridge_patterns, maxlen=self.maxlen)
            self.bridge.attach(bus)
        # Before the first tick: a late starter must see a tripped breaker
        # or a kill at once, and have its lease (a failure here is not fatal:
        # orders are refused until Redis answers).
        await self._beat(force=True)
        await self._apply_breaker(None)
        nursery.start_soon(self._main, name="redis-shared")

    # -- bus handlers (plain functions: they only queue work) ----------------

    def _queue(self, op: _Op) -> None:
        self._ops_send.send_nowait(op)

    def _on_fill(self, event: Event) -> None:
        fill = event.payload
        if isinstance(fill, Fill):
            self._unplaced.pop(fill.client_order_id, None)
            self._queue(_Op("settle", fill.client_order_id, fill.symbol, fill.notional, fill.price))

    def _on_update(self, event: Event) -> None:
        state = event.payload
        if isinstance(state, OrderState):
            cid = state.order.client_order_id
            self._unplaced.pop(cid, None)
            if not state.status.is_open:
                self._queue(_Op("release", cid))

    def _on_placed(self, event: Event) -> None:
        state = event.payload
        if isinstance(state, OrderState):
            self._unplaced.pop(state.order.client_order_id, None)
            if not state.status.is_open:
                self._queue(_Op("release", state.order.client_order_id))

    def _on_rejected(self, event: Event) -> None:
        decision = event.payload
        if isinstance(decision, Rejected) and decision.order is not None:
            self._queue(_Op("release", decision.order.client_order_id))

    def _on_approved(self, event: Event) -> None:
        decision = event.payload
        if isinstance(decision, Approved) and not decision.order.reduce_only:
            self._unplaced[decision.order.client_order_id] = (
                decision.order.symbol,
                time.monotonic(),
            )

    def _on_action(self, event: Event) -> None:
        action = event.payload
        if isinstance(action, RiskAction) and action.kind is RiskActionKind.TRIP_BREAKER:
            self._queue(_Op("trip", reason=action.reason))

    # -- background ----------------------------------------------------------

    async def _main(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._listen)
                if self.bridge is not None:
                    nursery.start_soon(self.bridge.run)
        finally:
            with trio.CancelScope(shield=True):
                await self._shutdown()

    async def _shutdown(self) -> None:
        assert self.conn is not None
        assert self.budget is not None
        with trio.move_on_after(3):
            if self.bridge is not None:
                self.bridge.detach()
                try:
                    await self.bridge.flush()
                except SharedUnavailable as exc:
                    log.warning("bus events not mirrored at exit: %s", exc)
            try:
                await self._thread(self.budget.withdraw_sync)
            except SharedUnavailable as exc:
                log.warning("could not withdraw from the shared budget: %s", exc)
        self.conn.close()

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.conn is not None
        return await trio.to_thread.run_sync(fn, *args, limiter=self.conn.limiter)

    def _down(self, exc: SharedUnavailable) -> None:
        if self.up:
            log.error("shared risk state unavailable: %s", exc)
        self.up = False
        if self.pack is not None:
            self.pack.unavailable(str(exc))

    async def _writer(self) -> None:
        async for op in self._ops_recv:
            while True:
                try:
                    await self._apply(op)
                    break
                except SharedUnavailable as exc:
                    self._down(exc)
                    await trio.sleep(self.retry)

    async def _apply(self, op: _Op) -> None:
        assert self.budget is not None
        assert self.breaker is not None
        assert self.ctx is not None
        if op.kind == "settle":
            # The position as the book has it now (set, not added: applying a
            # late operation still leaves the right figure).
            position = self.ctx.tracker.position(op.symbol)
            notional = abs(position.qty) * op.price if position is not None else ZERO
            await self._thread(self.budget.settle_sync, op.order_id, op.symbol, op.filled, notional)
        elif op.kind == "release":
            await self._thread(self.budget.release_sync, op.order_id)
        elif op.kind == "trip":
            state = await self._thread(self.breaker.state_sync)
            if not state.tripped:
                await self._thread(self.breaker.change_sync, "trip", op.reason, self.config.process)

    async def _beat(self, *, force: bool = False) -> None:
        """Refresh the lease (restore if Redis lost us), sweep, read figures."""
        assert self.budget is not None
        assert self.ctx is not None
        budget, tracker = self.budget, self.ctx.tracker
        was_up = self.up
        try:
            snapshot = tracker.snapshot()
            present = await self._thread(budget.heartbeat_sync, snapshot.equity)
            if not present:
                positions = {
                    s: abs(p.qty) * snapshot.mark(s) for s, p in snapshot.positions.items()
                }
                restored = await self._thread(budget.restore_sync, snapshot.equity, positions)
                if restored and not force:
                    log.warning("restored %d reservations Redis had lost", restored)
            await self._thread(budget.sweep_sync)
            figures = await self._thread(budget.figures_sync)
        except SharedUnavailable as exc:
            self._down(exc)
            return
        self.up = True
        if self.pack is not None:
            self.pack.update(figures)
        if not was_up and not force:
            log.warning("shared risk state reachable again")
            await self._apply_breaker(None)

    async def _heartbeat(self) -> None:
        assert self.budget is not None
        beat_every = self.lease / 3
        next_beat = trio.current_time() + beat_every
        while True:
            await trio.sleep(self.refresh)
            if trio.current_time() >= next_beat or not self.up:
                next_beat = trio.current_time() + beat_every
                await self._beat()
                await self._reconcile()
            else:
                try:
                    figures = await self._thread(self.budget.figures_sync)
                except SharedUnavailable as exc:
                    self._down(exc)
                    continue
                if self.pack is not None:
                    self.pack.update(figures)

    async def _reconcile(self) -> None:
        """Release reservations of approved orders the exchange never took."""
        assert self.ctx is not None
        now = time.monotonic()
        for cid, (symbol, since) in list(self._unplaced.items()):
            if now - since < UNPLACED_GRACE:
                continue
            try:
                state = await self.ctx.exchange.fetch_order(symbol, cid)
            except ExchangeRefused:
                state = None  # unknown to the exchange: never placed
            except Exception:  # the exchange may be down; try again later
                continue
            self._unplaced.pop(cid, None)
            if state is None or not state.status.is_open:
                self._queue(_Op("release", cid))

    async def _listen(self) -> None:
        send, recv = trio.open_memory_channel[tuple[str, dict[str, Any]]](math.inf)
        listener = BreakerListener(
            self.config, trio_forwarder(send, trio.lowlevel.current_trio_token())
        )
        listener.start()
        try:
            async with recv:
                async for kind, message in recv:
                    if kind == "lost":
                        log.error("breaker listener: %s", message.get("error", ""))
                        continue
                    action = message.get("action") if kind == "message" else None
                    try:
                        await self._apply_breaker(action if isinstance(action, str) else None)
                    except SharedUnavailable as exc:
                        self._down(exc)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(listener.stop)
                send.close()

    async def _apply_breaker(self, action: str | None) -> None:
        """Make the local breaker and kill switch follow the shared state."""
        assert self.breaker is not None
        assert self.ctx is not None
        try:
            state = await self._thread(self.breaker.state_sync)
        except SharedUnavailable as exc:
            self._down(exc)
            return
        ctx = self.ctx
        local = ctx.policy.breaker
        kernel = ctx.kernel
        if action == "reset":
            if local.tripped:
                local.reset()
            if kernel.halted is not None and kernel.halted.startswith(KILL_PREFIX):
                kernel.halted = None
            await ctx.bus.publish("shared.breaker", {"action": "reset", "state": "armed"})
            return
        if state.tripped and not local.tripped:
            local.trip(SHARED_PREFIX + state.reason, time.time_ns())
            await ctx.bus.publish("shared.breaker", {"action": "trip", "reason": state.reason})
        elif not state.tripped and local.tripped:
            # Tripped here while Redis was away (or the trip is still queued).
            self._queue(_Op("trip", reason=local.reason))
        if state.killed:
            if kernel.halted is None:
                await kernel.halt(KILL_PREFIX + (state.kill_reason or "no reason given"))
            try:
                await self._thread(self.breaker.ack_kill_sync, self.config.process)
            except SharedUnavailable as exc:
                self._down(exc)
