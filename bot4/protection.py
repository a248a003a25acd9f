"""Protective exits: no position without a stop, whatever the exchange can do.

The kernel (:mod:`bot4.kernel`) hands every entry, fill, tick and order
update to one :class:`Protector`, which keeps the entry signal's stop loss
and take profit in force for the position in one of three modes, chosen from
the exchange's capabilities when the session starts and said in one line then
(:meth:`Protector.describe`):

* **exchange-attached exits** (``Capability.ATTACHED_EXITS``): the venue turns
  an entry's ``stop_loss``/``take_profit`` into reduce-only exits and keeps
  them sized to the position (the paper exchange). The kernel sends nothing more.
* **exchange stop orders** (``Capability.STOP_ORDERS``): after every fill the
  kernel keeps one reduce-only ``STOP_LOSS`` order covering the whole position
  (and a ``TAKE_PROFIT`` order when the venue claims
  ``TAKE_PROFIT_ORDERS``; otherwise the take profit is kernel-held, as below)
  and cancels them when the position is flat.
* **kernel-held stops** (neither): the kernel never sends the exchange a stop
  or take-profit order (it would be refused). It keeps the levels itself and
  checks them on every tick of the symbol, at the price the closing order
  would execute at: a long's stop triggers when the **bid** is at or below it,
  its take profit when the bid is at or above; a short's against the **ask**.
  Triggered, it sends one reduce-only market order for the whole position.

In every mode the fill of a stop (an exchange stop order, or the kernel's
close of a held stop) is a stop-out for the breaker rules.

**Fail closed.** A protective stop that the exchange refuses or that fails
(``ExchangeRefused``, ``ExchangeFailed`` after the retries, or a rejection by
the gate) leaves the position unprotected, so the kernel closes it at once
with a reduce-only market order (a ``risk.action`` ``emergency_close``, rule
``protection``). If that close fails too, new entries halt
(``kernel.halted``; open orders are left alone, other positions keep their
stops) and the close is tried again on later ticks, with a growing pause. A
take-profit order refused falls back to a kernel-held take profit; a
protective order that the venue cancels behind the kernel's back (a kill
switch, an operator) falls back to kernel-held levels. Each such event is
reported on ``kernel.error`` and counted (``KernelStats.protection_failures``,
the summary's ``protection_failures``).

**Journaled.** Whenever the levels kept for a symbol change, the kernel
publishes ``kernel.protection`` (symbol, side, stop_loss, take_profit; the
levels are None once the position is flat). The journal keeps the latest per
symbol and recovery hands them back (:meth:`Protector.restore`), so a
restarted session keeps watching a held stop, and links the exchange's open
protective orders to their position again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import attrs

from bot4.contracts import Capability
from bot4.errors import ExchangeFailed, ExchangeRefused
from bot4.model import (
    MarketData,
    Order,
    OrderState,
    OrderType,
    Position,
    RiskAction,
    RiskActionKind,
    Side,
)
from bot4.secrets import redact

if TYPE_CHECKING:  # the kernel owns the protector; no import at run time
    from bot4.kernel import Kernel

__all__ = ["TOPIC", "Levels", "ProtectionMode", "Protector", "mode_for"]

TOPIC = "kernel.protection"
RULE = "protection"
# A failed close is tried again on a later tick, after this pause (in market
# time, so a replay is deterministic), doubling up to the ceiling.
_RETRY_NS = 1_000_000_000
_RETRY_MAX_NS = 60_000_000_000


class ProtectionMode(enum.Enum):
    ATTACHED = "exchange-attached exits"
    EXCHANGE = "exchange stop orders"
    KERNEL = "kernel-held stops"


def mode_for(capabilities: Iterable[Capability]) -> ProtectionMode:
    caps = frozenset(capabilities)
    if Capability.ATTACHED_EXITS in caps:
        return ProtectionMode.ATTACHED
    if Capability.STOP_ORDERS in caps:
        return ProtectionMode.EXCHANGE
    return ProtectionMode.KERNEL


@attrs.define
class Levels:
    """What protects one symbol's position."""

    side: Side  # the side of the entry: BUY protects a long
    stop_loss: Decimal | None
    take_profit: Decimal | None
    stop_id: str | None = None  # the exchange's protective orders (exchange mode)
    take_id: str | None = None
    hold_stop: bool = False  # the kernel watches this level on every tick
    hold_take: bool = False
    closing: str | None = None  # the kernel's close in flight
    retry_ns: int = 0  # a failed close is tried again from this time on
    pause_ns: int = _RETRY_NS


def closing_order(cid: str, symbol: str, position_qty: Decimal, qty: Decimal) -> Order:
    """The kernel's own reduce-only market order taking ``qty`` off a position
    of signed size ``position_qty`` (a held stop, a fail-closed close, a
    ladder rung)."""
    return Order(
        cid,
        symbol,
        Side.SELL if position_qty > 0 else Side.BUY,
        OrderType.MARKET,
        qty,
        reduce_only=True,
        strategy="kernel",
        correlation_id=cid,
    )


class Protector:
    """The kernel's protective exits (see the module docstring)."""

    def __init__(self, kernel: Kernel) -> None:
        self.k = kernel
        self.mode = mode_for(kernel.exchange.capabilities)
        self.levels: dict[str, Levels] = {}
        self._orders: dict[str, str] = {}  # open protective order id -> symbol
        self._stop_closes: dict[str, str] = {}  # closes of a held stop (stop-outs) -> symbol
        self._resumed: list[Order] = []  # open protective orders after a restart
        # Levels of an entry against the position, taken when the position
        # is on the entry's side (a flip); symbol -> levels.
        self._pending: dict[str, Levels] = {}

    # -- session start ----------------------------------------------------------

    def _caps(self) -> frozenset[Capability]:
        return frozenset(self.k.exchange.capabilities)

    def describe(self) -> str:
        """One line for the session start: which protection is in force."""
        name = self.k.exchange.name
        if self.mode is ProtectionMode.ATTACHED:
            return f"protection: exchange-attached exits ({name})"
        if self.mode is ProtectionMode.EXCHANGE:
            take = (
                "take-profits as exchange orders"
                if Capability.TAKE_PROFIT_ORDERS in self._caps()
                else "take-profits kernel-held, checked on every tick"
            )
            return f"protection: exchange stop orders ({name}); {take}"
        return (
            f"protection: kernel-held stops ({name} has no stop orders): checked on every "
            "tick, a long against the bid, a short against the ask"
        )

    async def start(self) -> str:
        """Called when the exchange is connected (its capabilities may depend on
        what it found there): fix the mode, protect what a restart handed back."""
        self.mode = mode_for(self._caps())
        self.k.stats.protection = self.mode.value
        if self.mode is ProtectionMode.ATTACHED:
            self.levels.clear()  # the venue keeps the exits
        for symbol in list(self.levels):
            await self._keep(symbol)
        return self.describe()

    # -- what the kernel tells us ------------------------------------------------

    def is_stop_out(self, client_order_id: str) -> bool:
        return client_order_id in self._stop_closes

    async def on_entry(self, order: Order) -> None:
        """An entry was accepted: its levels protect the position from now on.
        A level the new entry leaves out keeps the one in force."""
        if self.mode is ProtectionMode.ATTACHED:
            return
        if order.stop_loss is None and order.take_profit is None:
            return
        position = self.k.tracker.position(order.symbol)
        if position is not None and position.qty != 0 and _long(position) != _buys(order):
            # Against the position (a reduction, or a flip): the position keeps
            # its levels until it is on this entry's side.
            self._pending[order.symbol] = Levels(order.side, order.stop_loss, order.take_profit)
            return
        self._pending.pop(order.symbol, None)
        levels = self.levels.get(order.symbol)
        if levels is None or levels.side is not order.side:
            if levels is not None:
                await self.cancel(order.symbol)
            levels = Levels(order.side, order.stop_loss, order.take_profit)
            self.levels[order.symbol] = levels
        else:
            levels.stop_loss = order.stop_loss or levels.stop_loss
            levels.take_profit = order.take_profit or levels.take_profit
        await self._publish(order.symbol)

    async def after_fill(self, symbol: str) -> None:
        """A fill changed the position: keep its protection sized to it."""
        if self.mode is ProtectionMode.ATTACHED:
            return
        position = self.k.tracker.position(symbol)
        if position is None or position.qty == 0:
            await self.cancel(symbol)
            for cid in [c for c, s in self._stop_closes.items() if s == symbol]:
                del self._stop_closes[cid]
            if self.levels.pop(symbol, None) is not None:
                await self._publish(symbol)
            return
        pending = self._pending.get(symbol)
        if pending is not None and _long(position) == (pending.side is Side.BUY):
            await self.cancel(symbol)  # flipped: the flipping entry's levels now
            self.levels[symbol] = self._pending.pop(symbol)
            await self._publish(symbol)
        await self._keep(symbol)

    async def on_tick(self, tick: MarketData) -> None:
        levels = self.levels.get(tick.symbol)
        if levels is not None and (levels.hold_stop or levels.hold_take):
            await self._watch(tick.symbol, levels, tick)

    def on_order_closed(self, state: OrderState) -> None:
        """An order reached a final state: forget it; a protective order gone
        while its position is open leaves its level to the kernel."""
        cid = state.order.client_order_id
        symbol = self._orders.pop(cid, None)
        levels = self.levels.get(state.order.symbol)
        if levels is None:
            return
        if levels.closing == cid:
            levels.closing = None
        if symbol is None:
            return
        filled = state.filled_qty > 0
        if levels.stop_id == cid:
            levels.stop_id = None
            levels.hold_stop = levels.hold_stop or not filled
        if levels.take_id == cid:
            levels.take_id = None
            levels.hold_take = levels.hold_take or not filled

    def resume(self, open_orders: Iterable[Order]) -> None:
        """After a restart: the still-open protective orders this kernel placed."""
        self._resumed = [
            o
            for o in open_orders
            if o.reduce_only
            and o.strategy == "kernel"
            and o.type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT)
        ]

    def restore(self, saved: Mapping[str, Mapping[str, Any]]) -> int:
        """Recovery hands back the journaled levels of the open positions
        (symbol -> side, stop_loss, take_profit); returns how many were taken."""
        taken = 0
        for symbol, record in saved.items():
            position = self.k.tracker.position(symbol)
            side = _side(record.get("side"))
            if position is None or position.qty == 0 or side is None:
                continue
            if (position.qty > 0) != (side is Side.BUY):
                continue  # levels of an older position on the other side
            stop, take = _dec(record.get("stop_loss")), _dec(record.get("take_profit"))
            if stop is None and take is None:
                continue
            levels = Levels(side, stop, take)
            for order in self._resumed:
                if order.symbol != symbol:
                    continue
                self._orders[order.client_order_id] = symbol
                if order.type is OrderType.STOP_LOSS:
                    levels.stop_id = order.client_order_id
                else:
                    levels.take_id = order.client_order_id
            self.levels[symbol] = levels
            taken += 1
        return taken

    # -- keeping the protection ---------------------------------------------------

    async def _keep(self, symbol: str) -> None:
        levels = self.levels.get(symbol)
        position = self.k.tracker.position(symbol)
        if levels is None or position is None or position.qty == 0:
            return
        if _long(position) != (levels.side is Side.BUY):
            return  # levels of the other side never act on this position
        if self.mode is ProtectionMode.KERNEL:
            levels.hold_stop = levels.stop_loss is not None
            levels.hold_take = levels.take_profit is not None
        elif self.mode is ProtectionMode.EXCHANGE:
            await self._place_orders(symbol, levels, position)
        last = self.k._last.get(symbol)
        if last is not None and (levels.hold_stop or levels.hold_take):
            await self._watch(symbol, levels, last)  # crossed already: act now

    async def _place_orders(self, symbol: str, levels: Levels, position: Position) -> None:
        """Exchange mode: one reduce-only stop (and take profit) of the whole position."""
        await self.cancel(symbol)
        qty = self.k._round_qty(symbol, abs(position.qty))
        if qty <= 0:
            return
        side = Side.SELL if position.qty > 0 else Side.BUY
        wanted = [("stop", levels.stop_loss, OrderType.STOP_LOSS)]
        if Capability.TAKE_PROFIT_ORDERS in self._caps():
            wanted.append(("take", levels.take_profit, OrderType.TAKE_PROFIT))
        else:
            levels.hold_take = levels.take_profit is not None
        for kind, level, order_type in wanted:
            if level is None:
                continue
            cid = self.k._client_id("s" if kind == "stop" else "t")
            order = Order(
                cid,
                symbol,
                side,
                order_type,
                qty,
                price=level,
                reduce_only=True,
                strategy="kernel",
                correlation_id=cid,
            )
            state = await self.k._submit(order)
            if state is None or (not state.status.is_open and state.filled_qty == 0):
                why = "refused or failed" if state is None else f"came back {state.status.value}"
                if kind == "stop":
                    await self._fail_closed(symbol, f"protective stop {cid} {why}")
                    return
                levels.hold_take = True
                await self._report(
                    f"protective take-profit {cid} for {symbol} {why}: the kernel holds it"
                )
                continue
            if state.status.is_open:
                self._orders[cid] = symbol
                if kind == "stop":
                    levels.stop_id, levels.hold_stop = cid, False
                else:
                    levels.take_id, levels.hold_take = cid, False

    async def cancel(self, symbol: str) -> None:
        """Cancel the exchange's protective orders of ``symbol`` (a close, a flat
        position, new levels). Until new ones are placed, or the position is
        flat, the kernel holds the levels: a close that then fails does not
        leave the position without a stop."""
        levels = self.levels.get(symbol)
        if levels is None:
            return
        levels.hold_stop = levels.hold_stop or levels.stop_id is not None
        levels.hold_take = levels.hold_take or levels.take_id is not None
        for cid in (levels.stop_id, levels.take_id):
            if cid is None:
                continue
            self._orders.pop(cid, None)
            try:
                await self.k.exchange.cancel_order(symbol, cid)
            except ExchangeRefused:
                pass  # already filled or cancelled: nothing left to protect
            except ExchangeFailed as exc:
                await self._report(f"could not cancel protective order {cid}: {exc}")
        levels.stop_id = levels.take_id = None

    async def _watch(self, symbol: str, levels: Levels, tick: MarketData) -> None:
        """A held level crossed by the executable price: close the position."""
        if levels.closing is not None or self.k._now_ns < levels.retry_ns:
            return
        position = self.k.tracker.position(symbol)
        if position is None or position.qty == 0:
            return
        long = _long(position)
        if long != (levels.side is Side.BUY):
            return
        price = tick.bid if long else tick.ask
        stop = levels.stop_loss if levels.hold_stop else None
        take = levels.take_profit if levels.hold_take else None
        if stop is not None and (price <= stop if long else price >= stop):
            await self._close(symbol, levels, "hs", stop_out=True)
        elif take is not None and (price >= take if long else price <= take):
            await self._close(symbol, levels, "ht", stop_out=False)

    async def _close(self, symbol: str, levels: Levels | None, tag: str, *, stop_out: bool) -> bool:
        """One reduce-only market order for the whole position. Returns False
        (and halts new entries) when it could not be placed."""
        position = self.k.tracker.position(symbol)
        if position is None or position.qty == 0:
            return True
        qty = self.k._round_qty(symbol, abs(position.qty))
        if qty <= 0:
            return True  # dust below the market minimum: nothing can be sent
        cid = self.k._client_id(tag)
        order = closing_order(cid, symbol, position.qty, qty)
        if stop_out:
            self._stop_closes[cid] = symbol
        state = await self.k._submit(order)
        if state is None or (not state.status.is_open and state.filled_qty == 0):
            self._stop_closes.pop(cid, None)
            self.k.stats.protection_failures += 1
            why = "refused or failed" if state is None else f"came back {state.status.value}"
            await self._halt_entries(f"protection: the close {cid} of {symbol} {why}")
            if levels is not None:
                levels.hold_stop = levels.hold_stop or levels.stop_loss is not None
                levels.retry_ns = self.k._now_ns + levels.pause_ns
                levels.pause_ns = min(_RETRY_MAX_NS, levels.pause_ns * 2)
            return False
        if levels is not None:
            # Until its final state arrives: a fill may come later than the
            # answer (a polling venue), and a second close must not go out.
            levels.closing = cid
            levels.pause_ns = _RETRY_NS
        return True

    async def _fail_closed(self, symbol: str, why: str) -> None:
        """A position without its stop: close it (or, failing that, halt entries)."""
        self.k.stats.protection_failures += 1
        await self._report(f"{why}: {symbol} is unprotected, closing it")
        action = RiskAction(
            RiskActionKind.EMERGENCY_CLOSE,
            symbol,
            RULE,
            f"{why}; the position is closed rather than left without a stop",
        )
        self.k.stats.actions[action.kind.value] += 1
        await self.k.bus.publish("risk.action", action, ts=self.k._now_ns)
        levels = self.levels.get(symbol)
        await self._close(symbol, levels, "x", stop_out=False)

    async def _halt_entries(self, reason: str) -> None:
        """Refuse new entries; unlike the kill switch, leave open orders (the
        other positions' stops) in place."""
        await self._report(reason)
        if self.k.halted is None:
            self.k.halted = reason
            await self.k.bus.publish("kernel.halted", reason, ts=self.k._now_ns)

    async def _report(self, message: str) -> None:
        await self.k.bus.publish("kernel.error", redact(message), ts=self.k._now_ns)

    async def _publish(self, symbol: str) -> None:
        levels = self.levels.get(symbol)
        record = {
            "symbol": symbol,
            "side": levels.side.value if levels is not None else None,
            "stop_loss": _text(levels.stop_loss if levels is not None else None),
            "take_profit": _text(levels.take_profit if levels is not None else None),
        }
        await self.k.bus.publish(TOPIC, record, ts=self.k._now_ns)


def _long(position: Position) -> bool:
    return position.qty > 0


def _buys(order: Order) -> bool:
    return order.side is Side.BUY


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _side(value: Any) -> Side | None:
    try:
        return Side(value)
    except ValueError:
        return None
