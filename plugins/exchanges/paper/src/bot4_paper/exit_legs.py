"""The protective exits of the paper engine's positions, after every fill.

:class:`ExitLegs` is the part of :class:`~bot4_paper.engine.PaperEngine`
that keeps a position's reduce-only exits consistent with it (the rules are
the "Brackets" and "Reduce-only" items of :mod:`bot4_paper.engine`'s
docstring):

* **the position's legs** (:meth:`ExitLegs._keep_legs`, attached exits):
  one STOP_LOSS ``<id>.sl`` and one TAKE_PROFIT ``<id>.tp`` of the whole
  position, created by the first entry with levels, moved to the levels of
  each later one and resized by every fill (one order update each, the
  order keeps its id and place in time priority), cancelled when the
  position closes or flips;
* **the other reduce-only orders** (:meth:`ExitLegs._cancel_stale_exits`,
  the kernel's or a user's): cancelled when they can no longer reduce the
  position, shrunk to what it can absorb.

The engine calls them after a fill (matching, a liquidation):
``_keep_legs`` when the symbol has legs or the fill is an entry with levels,
``_cancel_stale_exits`` while other reduce-only orders are open
(``_others``). The engine registers legs as they rest (``_rest``, by the
:data:`_LEG_SUFFIX` of their client id, so legs restored from a state file
are found again) and forgets them as they close (``_close``). A mixin, so
these are the engine's own methods, bound as before; it knows the engine
only through the attributes declared below, which mypy checks against
:class:`PaperEngine`, and imports neither the engine nor its other mixins.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

import attrs

from bot4.model import ZERO, Order, OrderStatus, OrderType, Side
from bot4.portfolio import PortfolioTracker
from bot4_paper.order_record import EngineEvent, _changed, _Live
from bot4_paper.triggers import TriggerIndex

__all__ = ["ExitLegs"]

# The client id suffix of the position's protective legs, by type.
_LEG_SUFFIX = {OrderType.STOP_LOSS: ".sl", OrderType.TAKE_PROFIT: ".tp"}


class ExitLegs:
    """The position's protective legs and its other reduce-only orders."""

    if TYPE_CHECKING:
        # What this part uses of PaperEngine (set or defined there).
        tracker: PortfolioTracker
        _open: dict[str, dict[str, _Live]]
        _triggers: dict[str, TriggerIndex[_Live]]
        _legs: dict[str, dict[OrderType, _Live]]
        _outbox: list[EngineEvent]

        def _accept(self, order: Order, *, placed: Order) -> _Live: ...

        def _close(self, live: _Live, status: OrderStatus, reason: str) -> None: ...

    def _keep_legs(self, symbol: str, entry: _Live | None) -> None:
        """After a fill in ``symbol``: its one stop and take profit cover the
        whole position, at the levels of ``entry`` (an order with levels that
        opened or grew it) when given, else where they are."""
        qty = self.tracker.qty(symbol)
        size = abs(qty)
        exit_side = Side.SELL if qty > 0 else Side.BUY
        legs = self._legs.setdefault(symbol, {})
        for suffix, kind in (("sl", OrderType.STOP_LOSS), ("tp", OrderType.TAKE_PROFIT)):
            leg = legs.get(kind)
            if leg is not None and (size == 0 or leg.order.side is not exit_side):
                reason = "position closed" if size == 0 else "position flipped"
                self._close(leg, OrderStatus.CANCELED, reason)
                self._outbox.append(leg.state())
                leg = None
            level = None
            if entry is not None and size:
                level = entry.order.stop_loss if suffix == "sl" else entry.order.take_profit
            if leg is None:
                if level is None or entry is None:
                    continue
                parent = entry.order
                order = Order(
                    client_order_id=f"{parent.client_order_id}.{suffix}",
                    symbol=symbol,
                    side=exit_side,
                    type=kind,
                    qty=size,
                    price=level,
                    leverage=parent.leverage,
                    reduce_only=True,
                    strategy=parent.strategy,
                    correlation_id=parent.correlation_id,
                )
                leg = self._accept(order, placed=order)
                legs[kind] = leg
                self._outbox.append(leg.state())
                continue
            want = leg.filled + size
            price = leg.order.price if level is None else level
            if leg.order.qty == want and leg.order.price == price:
                continue
            index = self._triggers[symbol]
            index.remove(leg)  # out of the price list it rests in, before it moves
            leg.order = _changed(leg.order, {"qty": want, "price": price})
            leg.placed = leg.order
            index.add(leg)
            self._outbox.append(leg.state())

    def _cancel_stale_exits(self, symbol: str) -> None:
        """Cancel reduce-only orders (other than the position's own legs, see
        :meth:`_keep_legs`) that can no longer reduce the position.

        All of them when it is flat; those on the position's own side after a
        flip; and, per exit type (stop loss, take profit, other), the oldest
        ones beyond what the position can absorb.
        """
        qty = self.tracker.qty(symbol)
        book = self._open.get(symbol, {})
        legs = self._legs.get(symbol, {})
        mine = {id(leg) for leg in legs.values()}
        covered: dict[OrderType, Decimal] = {}
        # Newest first: the most recent exits reflect the latest signal's levels.
        for live in sorted(book.values(), key=lambda o: o.seq, reverse=True):
            if not live.order.reduce_only or id(live) in mine:
                continue
            side = live.order.side
            if qty == 0 or (qty > 0 and side is Side.BUY) or (qty < 0 and side is Side.SELL):
                reason = "position closed" if qty == 0 else "position flipped"
            else:
                kind = live.order.type
                room = abs(qty) - covered.get(kind, ZERO)
                if live.remaining <= room:
                    covered[kind] = covered.get(kind, ZERO) + live.remaining
                    continue
                if room > 0:
                    # Shrink to what the position can absorb (a flip's exit
                    # covers the new position, not the whole flipping fill).
                    live.order = attrs.evolve(live.order, qty=live.filled + room)
                    live.placed = live.order
                    covered[kind] = abs(qty)
                    self._outbox.append(live.state())
                    continue
                reason = "position smaller than its exits"
            self._close(live, OrderStatus.CANCELED, reason)
            self._outbox.append(live.state())
