"""The paper engine's resting orders of one symbol, indexed by trigger price.

A tick must look only at the orders it can execute, not scan every resting
order: with a protective stop per entry the open book grows with the session,
and most ticks trigger nothing. :class:`TriggerIndex` keeps each resting
stop, take-profit and limit order in one of four lists sorted by
``(price, seq)``, one per price test the engine applies::

    STOP_LOSS sell     fires when bid <= price   -> entries with price >= bid
    TAKE_PROFIT sell,
    LIMIT sell         fires when bid >= price   -> entries with price <= bid
    STOP_LOSS buy      fires when ask >= price   -> entries with price <= ask
    TAKE_PROFIT buy,
    LIMIT buy          fires when ask <= price   -> entries with price >= ask

so the due orders of a tick are a slice found by ``bisect``. Orders that
execute on every tick until filled (market orders, stops and take-profits
once triggered) are kept apart as *active*. :meth:`TriggerIndex.due` returns
the union in ``seq`` order, the time priority in which the engine matches.

The engine owns the :class:`bot4_paper.engine._Live` records; this module
only needs their ``seq``, ``order`` and ``triggered``.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from decimal import Decimal
from typing import Generic, Protocol, TypeVar

from bot4.model import Order, OrderType, Side

__all__ = ["Resting", "TriggerIndex"]


class Resting(Protocol):
    """What the index reads of an engine order record."""

    @property
    def seq(self) -> int: ...

    @property
    def order(self) -> Order: ...

    @property
    def triggered(self) -> bool: ...


# Which list an untriggered order rests in: (type, side) -> list slot.
_BID_FALLS_TO = 0  # price >= bid: sell stops
_BID_RISES_TO = 1  # price <= bid: sell take-profits and limits
_ASK_RISES_TO = 2  # price <= ask: buy stops
_ASK_FALLS_TO = 3  # price >= ask: buy take-profits and limits
_SLOT: dict[tuple[OrderType, Side], int] = {
    (OrderType.STOP_LOSS, Side.SELL): _BID_FALLS_TO,
    (OrderType.TAKE_PROFIT, Side.SELL): _BID_RISES_TO,
    (OrderType.LIMIT, Side.SELL): _BID_RISES_TO,
    (OrderType.STOP_LOSS, Side.BUY): _ASK_RISES_TO,
    (OrderType.TAKE_PROFIT, Side.BUY): _ASK_FALLS_TO,
    (OrderType.LIMIT, Side.BUY): _ASK_FALLS_TO,
}
_AFTER_ANY_SEQ = math.inf  # (p, inf) sorts after every (p, seq)


R = TypeVar("R", bound=Resting)


class TriggerIndex(Generic[R]):
    """The open orders of one symbol, by what makes them execute."""

    __slots__ = ("_active", "_lists", "_slot_of", "orders")

    def __init__(self) -> None:
        # Four lists of (price, seq), sorted; see the module docstring.
        self._lists: tuple[list[tuple[Decimal, int]], ...] = ([], [], [], [])
        # Every indexed order by seq; empty means the tick has nothing to do.
        self.orders: dict[int, R] = {}
        # seq -> (slot, price) of orders in a list, to remove them.
        self._slot_of: dict[int, tuple[int, Decimal]] = {}
        self._active: dict[int, R] = {}

    def add(self, live: R) -> None:
        """Index an open order (again after a trigger, see :meth:`trigger`)."""
        order = live.order
        seq = live.seq
        self.orders[seq] = live
        if order.type is OrderType.MARKET or live.triggered:
            self._active[seq] = live
            return
        assert order.price is not None  # LIMIT, STOP_LOSS, TAKE_PROFIT carry one
        slot = _SLOT[(order.type, order.side)]
        self._slot_of[seq] = (slot, order.price)
        insort(self._lists[slot], (order.price, seq))

    def remove(self, live: R) -> None:
        """Forget an order that is closed; unknown ones are ignored."""
        seq = live.seq
        if self.orders.pop(seq, None) is None:
            return
        if self._active.pop(seq, None) is not None:
            return
        slot, price = self._slot_of.pop(seq)
        entries = self._lists[slot]
        i = bisect_left(entries, (price, seq))
        del entries[i]

    def trigger(self, live: R) -> None:
        """A stop or take-profit fired: it executes on every tick from now on."""
        self.remove(live)
        self.add(live)

    def due(self, bid: Decimal, ask: Decimal) -> list[R]:
        """Orders a tick at ``bid``/``ask`` may execute, oldest first: the
        active ones and those whose price test the tick passes."""
        orders = self.orders
        lists = self._lists
        seqs = list(self._active)
        bid_falls, bid_rises, ask_rises, ask_falls = lists
        if bid_falls and bid_falls[-1][0] >= bid:
            seqs.extend(s for _, s in bid_falls[bisect_left(bid_falls, (bid,)) :])
        if bid_rises and bid_rises[0][0] <= bid:
            seqs.extend(s for _, s in bid_rises[: bisect_right(bid_rises, (bid, _AFTER_ANY_SEQ))])
        if ask_rises and ask_rises[0][0] <= ask:
            seqs.extend(s for _, s in ask_rises[: bisect_right(ask_rises, (ask, _AFTER_ANY_SEQ))])
        if ask_falls and ask_falls[-1][0] >= ask:
            seqs.extend(s for _, s in ask_falls[bisect_left(ask_falls, (ask,)) :])
        if not seqs:
            return []
        seqs.sort()
        return [orders[s] for s in seqs]
