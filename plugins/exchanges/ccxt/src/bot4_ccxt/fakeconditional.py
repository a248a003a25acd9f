"""Conditional (stop and take-profit) orders of the fake futures venues, held
apart from the paper engine's order book as the real venues hold them.

Binance's USDⓈ-M futures keep ``STOP_MARKET`` and ``TAKE_PROFIT_MARKET``
orders in its Algo Service (``/fapi/v1/algoOrder``: their own ids, look-ups
and open-order list) and, when one triggers, place an ordinary market order
(the algo order's ``actualOrderId``) in the matching engine. Bybit v5 keeps
conditional orders (``triggerPrice``, ``triggerDirection``) under
``orderFilter=StopOrder`` and, when one triggers, turns it into an ordinary
order with the same ``orderId`` and ``orderLinkId``. Both fakes hold the
conditional orders here and, on every quote, trigger those whose price was
reached by placing a market order in the paper engine, which fills it from
its margin model like any other order.

**Trigger price.** Each order names the price it watches: the last trade
(``last``: Binance ``CONTRACT_PRICE``, Bybit ``LastPrice``, both venues'
default) or the mark (``mark``: ``MARK_PRICE``, ``MarkPrice``; the fakes' mark
is the quote's mid). A sell stop triggers when that price is at or below its
trigger, a buy stop at or above; a take-profit the other way round. An order
whose price is already reached when it is placed is refused, as the venues
refuse it (Binance -2021, Bybit 110092/110093).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import attrs

from bot4.model import OrderType, Side

__all__ = ["Conditional", "ConditionalBook", "reached"]

# What a conditional order is while it waits, once it triggered, and when it ended.
WAITING, TRIGGERED, CANCELED, REJECTED = "waiting", "triggered", "canceled", "rejected"


@attrs.define
class Conditional:
    """One conditional order (see the module docstring)."""

    order_id: int  # the venue's id: Binance's algoId, Bybit's orderId
    coid: str  # Binance's clientAlgoId, Bybit's orderLinkId
    symbol: str
    side: Side
    kind: OrderType  # STOP_LOSS or TAKE_PROFIT
    qty: Decimal | None  # None: close the whole position (Binance closePosition)
    trigger: Decimal
    watch: str  # "last" or "mark"
    reduce_only: bool
    created: int  # ms
    updated: int
    status: str = WAITING
    triggered_at: int = 0
    actual: str | None = None  # the client id of the order placed when it triggered
    reason: str = ""


def reached(kind: OrderType, side: Side, trigger: Decimal, price: Decimal) -> bool:
    """Whether ``price`` triggers a ``side`` order of ``kind`` at ``trigger``."""
    falls = (kind is OrderType.STOP_LOSS) == (side is Side.SELL)
    return price <= trigger if falls else price >= trigger


class ConditionalBook:
    """The conditional orders of one venue, by client id and by venue id."""

    def __init__(self) -> None:
        self._by_coid: dict[str, Conditional] = {}
        self._by_id: dict[int, Conditional] = {}

    def __contains__(self, coid: object) -> bool:
        return coid in self._by_coid

    def __iter__(self) -> Iterator[Conditional]:
        return iter(list(self._by_coid.values()))

    def add(self, order: Conditional) -> None:
        self._by_coid[order.coid] = order
        self._by_id[order.order_id] = order

    def get(self, coid: str | None = None, order_id: int | None = None) -> Conditional | None:
        if coid:
            return self._by_coid.get(coid)
        return self._by_id.get(order_id) if order_id is not None else None

    def waiting(self, symbol: str | None = None) -> list[Conditional]:
        return [
            c
            for c in self._by_coid.values()
            if c.status == WAITING and (symbol is None or c.symbol == symbol)
        ]

    def due(self, symbol: str, last: Decimal, mark: Decimal) -> list[Conditional]:
        """The waiting orders in ``symbol`` that these prices trigger."""
        return [
            c
            for c in self.waiting(symbol)
            if reached(c.kind, c.side, c.trigger, mark if c.watch == "mark" else last)
        ]
