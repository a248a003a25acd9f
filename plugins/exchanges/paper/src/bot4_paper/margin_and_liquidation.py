"""The paper engine's margin account in use: the margin commands, funding
and liquidation.

:class:`MarginAndLiquidation` is the part of
:class:`~bot4_paper.engine.PaperEngine` that works its margin account (the
state and the formulas are :class:`bot4_paper.margin_book.MarginBook`'s; the
rules are the "Margin", "Mark", "Liquidation", "Funding" and "Spot" items of
:mod:`bot4_paper.engine`'s docstring):

* **commands**: :meth:`~MarginAndLiquidation.set_leverage`,
  :meth:`~MarginAndLiquidation.set_margin_mode`,
  :meth:`~MarginAndLiquidation.add_margin` and the read
  :meth:`~MarginAndLiquidation.margin_state`, public methods of the engine;
* **funding** (:meth:`MarginAndLiquidation._fund`): at each funding time a
  tick passes, every perpetual position pays or receives at its mark;
* **liquidation** (:meth:`MarginAndLiquidation._watch`, on a tick of a held
  symbol while the engine liquidates): an isolated position whose mark
  reached its liquidation price, or cross positions while the cross account
  is at or below their maintenance margin, are closed by the venue with a
  ``liq-<n>`` order and fill, and their exits cancelled as for any close.

``on_tick`` calls ``_fund`` and ``_watch``, the tick path: a mixin, so they
are the engine's own methods, bound as before (a subclass may still replace
one, as the testing kit's venue that funds on every tick does). It knows the
engine only through the attributes declared below, which mypy checks
against :class:`PaperEngine`, and imports neither the engine nor its other
mixins.
"""

from __future__ import annotations

import decimal
from collections import deque
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from bot4.contracts import MarketInfo
from bot4.errors import InsufficientFunds, InvalidOrder
from bot4.margin import funding_due, funding_times, next_funding_time
from bot4.model import Balance, Fill, MarketData, Order, OrderStatus, OrderType, Position, Side
from bot4.portfolio import PortfolioTracker
from bot4_paper.margin_book import CROSS, FUNDING_STEP, MODES, MarginBook, MarginState
from bot4_paper.order_record import EngineEvent, _Live

__all__ = ["MarginAndLiquidation"]


class MarginAndLiquidation:
    """Margin commands, funding and liquidation of the paper engine."""

    if TYPE_CHECKING:
        # What this part uses of PaperEngine (set or defined there).
        currency: str
        max_leverage: Decimal
        liquidation_fee: Decimal
        margin: MarginBook
        tracker: PortfolioTracker
        _markets: dict[str, MarketInfo]
        _orders: dict[str, _Live]
        _fills: deque[Fill]
        _closed: deque[str]
        _legs: dict[str, dict[OrderType, _Live]]
        _others: int
        _outbox: list[EngineEvent]
        _seq: int
        _fill_seq: int

        def balance(self) -> Balance: ...

        def positions(self) -> list[Position]: ...

        def _keep_legs(self, symbol: str, entry: _Live | None) -> None: ...

        def _cancel_stale_exits(self, symbol: str) -> None: ...

    def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        """Use ``leverage`` for ``symbol`` from now on; returns it. Refused
        (InvalidOrder) for an unknown symbol, above the venue's or the first
        tier's maximum, other than 1 on spot, or a change while a position or
        an open order in the symbol holds another leverage."""
        market = self._markets.get(symbol)
        if market is None:
            raise InvalidOrder(f"unknown symbol {symbol!r}; markets: {sorted(self._markets)}")
        if not leverage.is_finite() or leverage <= 0:
            raise InvalidOrder(f"leverage {leverage} must be a positive number")
        spec = self.margin.of(symbol)
        if spec.spot:
            if leverage != 1:
                raise InvalidOrder(f"{symbol} is spot: no leverage ({leverage} asked)")
            return leverage
        cap = min(self.max_leverage, self.margin.max_leverage(symbol))
        if leverage > cap:
            raise InvalidOrder(f"leverage {leverage} above {symbol}'s maximum {cap}")
        position = self.tracker.position(symbol)
        if position is not None and position.leverage != leverage:
            raise InvalidOrder(
                f"{symbol} has a position at leverage {position.leverage}: close it first"
            )
        self.margin.leverage[symbol] = leverage
        return leverage

    def set_margin_mode(self, symbol: str, mode: str) -> None:
        if symbol not in self._markets:
            raise InvalidOrder(f"unknown symbol {symbol!r}; markets: {sorted(self._markets)}")
        if mode not in MODES:
            raise InvalidOrder(f"margin mode {mode!r}: use one of {', '.join(MODES)}")
        if self.margin.of(symbol).spot:
            raise InvalidOrder(f"{symbol} is spot: it has no margin mode")
        if self.margin.mode_of(symbol) == mode:
            return
        if self.tracker.holds(symbol):
            raise InvalidOrder(f"{symbol} has a position: close it before changing margin mode")
        self.margin.mode[symbol] = mode
        self.margin.changed(symbol)

    def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        """Move ``amount`` of free balance into the isolated position in
        ``symbol``; returns its new liquidation price (None: cannot be
        liquidated). InsufficientFunds above the free balance."""
        position = self.tracker.position(symbol)
        if position is None or self.margin.of(symbol).spot:
            raise InvalidOrder(f"no {symbol} position to add margin to")
        if self.margin.mode_of(symbol) == CROSS:
            raise InvalidOrder(f"{symbol} is cross margin: its margin is the whole wallet")
        if not amount.is_finite() or amount <= 0:
            raise InvalidOrder(f"add_margin needs a positive amount, not {amount}")
        free = self.balance().free
        if amount > free:
            raise InsufficientFunds(
                f"add_margin {amount} {self.currency} to {symbol}: free is {free}"
            )
        self.margin.add(symbol, amount)
        threshold = self.margin.threshold(position)
        return None if threshold is None else threshold[0]

    def margin_state(self, symbol: str) -> MarginState | None:
        """The margin of the position in ``symbol`` (None when flat or spot)."""
        position = self.tracker.position(symbol)
        if position is None or self.margin.of(symbol).spot:
            return None
        mark = self.tracker.mark_price(symbol) or position.entry_price
        return self.margin.state(position, mark, self._wallet(symbol))

    def _wallet(self, symbol: str) -> Decimal | None:
        if self.margin.mode_of(symbol) != CROSS:
            return None
        marks = {
            p.symbol: self.tracker.mark_price(p.symbol) or p.entry_price for p in self.positions()
        }
        return self.margin.cross_wallet(symbol, self.tracker.cash, self.positions(), marks)

    def _fund(self, now: datetime) -> None:
        """Pay funding for every funding time passed since the last tick, at
        each position's mark then (the mark of its last tick)."""
        margin = self.margin
        due = margin.next_funding
        if due is None:
            margin.next_funding = next_funding_time(now)
            return
        if now < due:
            return
        times = [due, *funding_times(due, now)]
        for position in self.positions():
            spec = margin.of(position.symbol)
            rate = margin.rates.get(position.symbol, spec.funding_rate)
            if spec.spot or not rate:
                continue
            mark = self.tracker.mark_price(position.symbol) or position.entry_price
            for _when in times:
                pay = funding_due(position.qty, mark, rate, FUNDING_STEP)
                if pay:
                    self.tracker.adjust_cash(pay)
                    margin.pay_funding(position.symbol, -pay)
            margin.changed(position.symbol)
        margin.next_funding = next_funding_time(times[-1])

    def _watch(self, tick: MarketData, mark: Decimal) -> None:
        """Liquidate the tick's isolated perpetual position if its mark
        reached the liquidation price; for a cross position, check the
        cross account."""
        symbol = tick.symbol
        margin = self.margin
        cached = margin.cached(symbol)
        threshold: tuple[Decimal, bool] | None
        if cached is False or cached is True:
            if margin.of(symbol).spot:
                return
            if margin.mode.get(symbol) == CROSS:
                self._watch_cross(tick.timestamp)
                return
            position = self.tracker.position(symbol)
            if position is None:
                return
            threshold = margin.threshold(position)
        else:
            threshold = cached
        if threshold is None:
            return
        price, long = threshold
        if (mark > price) if long else (mark < price):
            return
        self._liquidate(symbol, price, long, tick.timestamp)

    def _watch_cross(self, when: datetime) -> None:
        """Liquidate cross positions while the cross margin balance is at or
        below their maintenance margin: largest loss first, each at its mark
        (see :mod:`bot4_paper.engine`'s docstring)."""
        margin = self.margin
        tracker = self.tracker
        positions = self.positions()
        marks = {p.symbol: tracker.mark_price(p.symbol) or p.entry_price for p in positions}
        balance, maintenance, cross = margin.cross_account(tracker.cash, positions, marks)
        if balance > maintenance:
            return
        cross.sort(key=lambda p: (p.unrealized_pnl(marks[p.symbol]), p.symbol))
        for position in cross:
            symbol = position.symbol
            mark = marks[symbol]
            self._liquidate(symbol, mark, position.qty > 0, when)
            positions = self.positions()
            balance, maintenance, left = margin.cross_account(tracker.cash, positions, marks)
            if not left or balance > maintenance:
                return

    def _liquidate(self, symbol: str, price: Decimal, long: bool, when: datetime) -> None:
        position = self.tracker.position(symbol)
        assert position is not None
        market = self._markets[symbol]
        rounding = decimal.ROUND_FLOOR if long else decimal.ROUND_CEILING
        fill_price = (price / market.price_increment).to_integral_value(
            rounding
        ) * market.price_increment
        if fill_price <= 0:
            fill_price = market.price_increment
        qty = abs(position.qty)
        margin = self.margin
        coid = f"liq-{len(margin.liquidations) + 1}"
        order = Order(
            client_order_id=coid,
            symbol=symbol,
            side=Side.SELL if long else Side.BUY,
            type=OrderType.MARKET,
            qty=qty,
            leverage=position.leverage,
            reduce_only=True,
            strategy="liquidation",
        )
        self._seq += 1
        live = _Live(order=order, placed=order, seq=self._seq, exchange_order_id=f"P{self._seq}")
        self._orders[coid] = live
        self._fill_seq += 1
        fill = Fill(
            fill_id=f"paper-{self._fill_seq}",
            client_order_id=coid,
            symbol=symbol,
            side=order.side,
            qty=qty,
            price=fill_price,
            fee=qty * fill_price * self.liquidation_fee,
            timestamp=when,
            liquidity="liquidation",
        )
        self.tracker.apply(fill)
        self._fills.append(fill)
        margin.release(symbol)
        margin.liquidations.append(coid)
        live.filled = qty
        live.notional = qty * fill_price
        live.status = OrderStatus.FILLED
        live.reason = "liquidation"
        self._closed.append(coid)
        self._outbox.append(fill)
        self._outbox.append(live.state())
        if self._legs.get(symbol):
            self._keep_legs(symbol, None)
        if self._others:
            self._cancel_stale_exits(symbol)
