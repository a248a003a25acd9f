"""What the paper engine checks of an order, and what an order costs.

:class:`OrderChecks` is the part of :class:`~bot4_paper.engine.PaperEngine`
that decides whether ``place()`` accepts an order (the execution rules are
in :mod:`bot4_paper.engine`'s docstring):

* **validation** (:meth:`OrderChecks._validate`): a known symbol; leverage
  within the venue's maximum, 1 on spot, and the symbol's set leverage
  unless reduce-only; the quantity rounded down and at least the market's
  minimum; prices rounded; stops, take-profits and attached levels on the
  right side of the market (:meth:`OrderChecks._check_sides`);
* **funds** (:meth:`OrderChecks._check_funds`): the margin of the part that
  would open a position, plus the estimated taker fee, within the free
  balance; a spot sell within what is held less the open sells.

The price and margin arithmetic behind the funds check (the taker price,
the opening part of a quantity, the margin open orders reserve) is the
engine's too: matching repeats the margin check at fill time with it, and
``balance()`` counts the reserved margin as used. A mixin, so the engine
calls these as its own methods, bound as before (the matching path looks
up nothing more). It knows the engine only through the attributes declared
below, which mypy checks against :class:`PaperEngine`; it imports neither
the engine nor its other mixins.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING

from bot4.contracts import MarketInfo
from bot4.errors import InsufficientFunds, InvalidOrder
from bot4.model import ZERO, Balance, MarketData, Order, OrderType, Side
from bot4.portfolio import PortfolioTracker
from bot4_paper.margin_book import MarginBook
from bot4_paper.market_rules import round_price, round_qty
from bot4_paper.order_record import _changed, _Live

__all__ = ["OrderChecks"]


class OrderChecks:
    """Order validation, funds checks and order margin of the paper engine."""

    if TYPE_CHECKING:
        # What this part uses of PaperEngine (set in its __init__).
        currency: str
        taker_fee: Decimal
        slippage: Decimal
        max_leverage: Decimal
        margin: MarginBook
        tracker: PortfolioTracker
        _markets: dict[str, MarketInfo]
        _last: dict[str, MarketData]
        _open: dict[str, dict[str, _Live]]

        def balance(self) -> Balance: ...

    def _validate(self, order: Order) -> Order:
        market = self._markets.get(order.symbol)
        if market is None:
            raise InvalidOrder(f"unknown symbol {order.symbol!r}; markets: {sorted(self._markets)}")
        if order.leverage > self.max_leverage:
            raise InvalidOrder(f"leverage {order.leverage} above the maximum {self.max_leverage}")
        spec = self.margin.of(order.symbol)
        if spec.spot and order.leverage != 1:
            raise InvalidOrder(f"{order.symbol} is spot: no leverage (order has {order.leverage})")
        fixed = self.margin.leverage.get(order.symbol)
        if fixed is not None and order.leverage != fixed and not order.reduce_only:
            raise InvalidOrder(
                f"order leverage {order.leverage} differs from {order.symbol}'s leverage "
                f"{fixed} (set_leverage)"
            )
        qty = round_qty(order.qty, market.qty_increment)
        if qty <= 0 or qty < market.min_qty:
            raise InvalidOrder(
                f"quantity {order.qty} of {order.symbol} is below the minimum {market.min_qty} "
                f"(after rounding down to {market.qty_increment})"
            )
        changes: dict[str, Decimal | None] = {"qty": qty}
        for field in ("price", "stop_loss", "take_profit"):
            value: Decimal | None = getattr(order, field)
            if value is not None:
                rounded = round_price(value, market.price_increment)
                if rounded <= 0:
                    raise InvalidOrder(
                        f"{field} {value} rounds to zero at {market.price_increment}"
                    )
                changes[field] = rounded
        out = _changed(order, changes)
        self._check_sides(out)
        return out

    def _check_sides(self, order: Order) -> None:
        tick = self._last.get(order.symbol)
        buy = order.side is Side.BUY
        if tick is not None and order.price is not None:
            if order.type is OrderType.STOP_LOSS and (
                order.price <= tick.ask if buy else order.price >= tick.bid
            ):
                where = f"above the ask {tick.ask}" if buy else f"below the bid {tick.bid}"
                raise InvalidOrder(
                    f"{order.side.value} stop at {order.price} would trigger at once: "
                    f"it must be {where}"
                )
            if order.type is OrderType.TAKE_PROFIT and (
                order.price >= tick.ask if buy else order.price <= tick.bid
            ):
                where = f"below the ask {tick.ask}" if buy else f"above the bid {tick.bid}"
                raise InvalidOrder(
                    f"{order.side.value} take-profit at {order.price} would trigger at once: "
                    f"it must be {where}"
                )
        if order.stop_loss is None and order.take_profit is None:
            return
        if order.type in (OrderType.LIMIT, OrderType.STOP_LOSS, OrderType.TAKE_PROFIT):
            ref = order.price
        else:
            ref = None if tick is None else (tick.ask if buy else tick.bid)
        if ref is None:
            return
        sign = 1 if buy else -1
        if order.stop_loss is not None and (order.stop_loss - ref) * sign >= 0:
            raise InvalidOrder(
                f"stop_loss {order.stop_loss} must be {'below' if buy else 'above'} "
                f"the entry {ref} of a {order.side.value}"
            )
        if order.take_profit is not None and (order.take_profit - ref) * sign <= 0:
            raise InvalidOrder(
                f"take_profit {order.take_profit} must be {'above' if buy else 'below'} "
                f"the entry {ref} of a {order.side.value}"
            )

    def _check_funds(self, order: Order) -> None:
        if order.type is OrderType.MARKET and order.symbol not in self._last:
            raise InvalidOrder(
                f"no market data for {order.symbol} yet: a market order needs a price"
            )
        price = self._reference_price(order)
        assert price is not None  # only market orders lack a price, checked above
        if order.side is Side.SELL and self.margin.of(order.symbol).spot:
            self._check_holdings(order)
            return
        opening = self._opening_qty(order, order.qty)
        if not opening:
            return
        need = opening * price / order.leverage + opening * price * self.taker_fee
        free = self.balance().free
        if need > free:
            raise InsufficientFunds(
                f"order {order.client_order_id!r} needs {need} {self.currency} of margin "
                f"({opening} {order.symbol} at {price} / leverage {order.leverage} plus fee), "
                f"free is {free}"
            )

    def _check_holdings(self, order: Order) -> None:
        if order.reduce_only:
            return
        held = max(ZERO, self.tracker.qty(order.symbol))
        selling = sum(
            (
                o.remaining
                for o in self._open.get(order.symbol, {}).values()
                if o.order.side is Side.SELL and not o.order.reduce_only
            ),
            ZERO,
        )
        if order.qty + selling > held:
            raise InsufficientFunds(
                f"{order.symbol} is spot: selling {order.qty} (plus {selling} in open sells) "
                f"but holding {held}"
            )

    def _reference_price(self, order: Order) -> Decimal | None:
        if order.price is not None:
            return order.price
        tick = self._last.get(order.symbol)
        if tick is None:
            return None
        return self._taker_price(order.side, tick, self._markets[order.symbol])

    def _opening_qty(self, order: Order, qty: Decimal) -> Decimal:
        """The part of ``qty`` that would open or grow a position now."""
        if order.reduce_only:
            return ZERO
        held = self.tracker.qty(order.symbol)
        reducible = max(ZERO, -held * order.side.sign)
        return max(ZERO, qty - reducible)

    def _order_margin(self, live: _Live) -> Decimal:
        price = self._reference_price(live.order)
        if price is None:
            return ZERO
        return self._opening_qty(live.order, live.remaining) * price / live.order.leverage

    def _reserved(self, exclude: _Live | None = None) -> Decimal:
        return sum(
            (
                self._order_margin(o)
                for book in self._open.values()
                for o in book.values()
                if o is not exclude
            ),
            ZERO,
        )

    def _taker_price(self, side: Side, tick: MarketData, market: MarketInfo) -> Decimal:
        if side is Side.BUY:
            return round_price(tick.ask * (1 + self.slippage), market.price_increment)
        return round_price(tick.bid * (1 - self.slippage), market.price_increment)
