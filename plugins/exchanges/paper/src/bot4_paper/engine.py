"""The paper matching engine: synchronous, deterministic, no I/O, no trio.

:class:`PaperEngine` holds orders, matches them against market data ticks and
books the fills in a :class:`bot4.portfolio.PortfolioTracker`. The async
:class:`bot4_paper.exchange.PaperExchange` wraps it for the kernel; a test kit
or a fake REST server can drive it directly::

    engine = PaperEngine(markets, balance=Decimal(10000))
    events = engine.on_tick(tick)        # fills and order updates, in order
    state = engine.place(order)          # may fill at once against the last tick
    events += engine.drain()             # what place()/cancel() produced

Execution rules (all documented behaviour, relied on by tests):

* **Prices.** A buy executes at the ask, a sell at the bid. Taker executions
  (market orders, triggered stops and take-profits, limit orders that are
  marketable when placed) pay ``slippage_bps`` on top: ``ask * (1 + bps/1e4)``
  for a buy, ``bid * (1 - bps/1e4)`` for a sell, rounded half-even to the price
  increment; a marketable limit never executes beyond its limit price. A limit
  order resting when a later tick crosses it (buy: ask <= limit; sell: bid >=
  limit) fills at its limit price as maker, without slippage.
* **Fees.** ``fee = qty * price * rate`` (taker or maker rate), exact Decimal,
  never rounded.
* **Size.** A tick's ``volume`` is the size at the best bid and at the best
  ask. Orders of one symbol take from it in time priority (buys from the ask,
  sells from the bid); what does not fit stays open and fills on later ticks
  (status PARTIALLY_FILLED). A market order placed between ticks executes
  against what is left of the last tick's size.
* **Triggers.** STOP_LOSS: a sell triggers when bid <= price, a buy when
  ask >= price. TAKE_PROFIT: a sell triggers when bid >= price, a buy when
  ask <= price. Once triggered the order executes as a market order. Placing
  one that would trigger at once (stop on the wrong side) is InvalidOrder.
* **Brackets: one stop (and one take profit) per position.** A fill of an
  order with ``stop_loss``/``take_profit`` that opens or grows a position
  protects the *whole* position with one reduce-only STOP_LOSS (and one
  TAKE_PROFIT): the first such entry creates them as ``<id>.sl`` and
  ``<id>.tp``; later entries move them to their own levels (the latest
  signal's levels, as the kernel's own protection does) and every fill
  resizes them to the position, so after any entry or partial exit the
  position has exactly one stop of its full size. Each change is one order
  update, not an order created and another cancelled. A flip cancels the old
  side's legs (``position flipped``) and the flipping entry's levels protect
  the new position.
* **Reduce-only.** Never opens or grows a position: the executed size is
  capped at the opposite position; with none left the order is cancelled. When
  a position goes flat, its open reduce-only orders are cancelled (so one
  bracket leg cancels the other).
* **Rounding.** Quantities round DOWN to the market's ``qty_increment``
  (never trade more than asked); prices round HALF-EVEN to its
  ``price_increment``. An order whose rounded quantity is below ``min_qty`` is
  InvalidOrder.
* **Margin.** Perpetual-style: a fill that opens or grows a position reserves
  ``notional / leverage`` from the free balance. Open orders reserve the
  margin of the part that would open a position (against the position at the
  time). Placing an order whose margin plus estimated taker fee exceeds free
  margin is InsufficientFunds; at fill time the check is repeated and an order
  that no longer fits is cancelled (reason ``insufficient margin``).
  The margin account (:mod:`bot4_paper.margin_book`): per-symbol leverage
  (:meth:`PaperEngine.set_leverage`; once set, an opening order must carry
  it) and mode (isolated by default, or cross), collateral added to an
  isolated position (:meth:`PaperEngine.add_margin`), maintenance margin by
  the market's notional tiers, funding at the funding times.
* **Mark.** A position is valued (unrealised PnL, margin, liquidation,
  funding) at its tick's ``mark`` when the data carries one
  (``MarketData.mark``), else at the tick's mid.
* **Liquidation.** When an isolated perpetual position's mark reaches its
  liquidation price, the venue closes the whole position at that price
  (rounded to the price increment against the account) with a reduce-only
  market order ``liq-<n>`` (strategy ``liquidation``), charged
  ``liquidation_fee`` of the notional; the Fill's ``liquidity`` is
  ``"liquidation"``. Its exits are cancelled as for any close. Cross
  positions are liquidated by the account, not one by one: when the cross
  margin balance (the cash less the isolated positions' collateral, plus the
  unrealised PnL of the cross positions at their marks) falls to the sum of
  their maintenance margins, the venue closes them largest loss first, each
  at its mark (rounded against the account) with the same fee and ``liq-<n>``
  order, until the balance is above what the positions left need again (with
  the default fee, 1.25% against a 0.5% first tier, that is all of them).
* **Funding** at 00:00, 08:00 and 16:00 UTC: ``-q * mark * rate`` from the
  wallet, at the latest ``funding_rate`` a tick of the symbol carried before
  that time (``MarketData.funding_rate``), else the market's configured rate.
* **Spot** markets (``MarketMargin.kind == "spot"``): leverage 1, and a sell
  that is not covered by what is held (less open sells) is InsufficientFunds;
  no funding, no liquidation.
* **Time.** Fills carry the timestamp of the tick they executed on; fills
  between ticks carry ``now`` (default: the latest tick time seen).

Memory grows with orders and fills, never with ticks. A tick's cost does not
grow with the resting orders either: they are indexed by trigger price
(:mod:`bot4_paper.triggers`) and a tick matches only those it can execute. A
tick of a symbol with no resting order and no position only records the tick
(the mark, the size left at the touch, are taken when something needs them).
"""

from __future__ import annotations

import decimal
from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import attrs

from bot4.contracts import MarketInfo
from bot4.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.margin import funding_due, funding_times, next_funding_time
from bot4.model import (
    ZERO,
    Balance,
    Fill,
    MarketData,
    Order,
    OrderState,
    OrderStatus,
    OrderType,
    Position,
    Side,
)
from bot4.portfolio import PortfolioTracker
from bot4_paper.margin_book import (
    CROSS,
    FUNDING_STEP,
    MODES,
    MarginBook,
    MarginState,
    MarketMargin,
)
from bot4_paper.triggers import TriggerIndex

__all__ = ["DEFAULT_MARKETS", "EngineEvent", "PaperEngine", "round_price", "round_qty"]

EngineEvent = Fill | OrderState

_BPS = Decimal(10000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NEVER = -(1 << 63)  # _now_ns before any tick: every tick is later
# The client id suffix of the position's protective legs, by type.
_LEG_SUFFIX = {OrderType.STOP_LOSS: ".sl", OrderType.TAKE_PROFIT: ".tp"}

DEFAULT_MARKETS: Mapping[str, MarketInfo] = {
    "BTC-USDT": MarketInfo("BTC-USDT", Decimal("0.01"), Decimal("0.0001"), Decimal("0.0001")),
    "ETH-USDT": MarketInfo("ETH-USDT", Decimal("0.01"), Decimal("0.001"), Decimal("0.001")),
}


_ORDER_FIELDS = tuple(a.name for a in attrs.fields(Order))
_new = object.__new__
_set = object.__setattr__


def _changed(order: Order, changes: Mapping[str, Decimal | None]) -> Order:
    """``attrs.evolve(order, **changes)`` without running the validators
    again, for changes the engine has validated itself (a quantity rounded
    down and checked positive, a price rounded and checked positive, a leg
    resized to a position): on the order path, where evolve was a third of
    the cost of keeping a position's stop."""
    out: Order = _new(Order)
    for name in _ORDER_FIELDS:
        _set(out, name, changes[name] if name in changes else getattr(order, name))
    return out


def round_qty(qty: Decimal, increment: Decimal) -> Decimal:
    """Round a quantity DOWN to a multiple of ``increment``."""
    return (qty / increment).to_integral_value(decimal.ROUND_DOWN) * increment


def round_price(price: Decimal, increment: Decimal) -> Decimal:
    """Round a price HALF-EVEN to a multiple of ``increment``."""
    return (price / increment).to_integral_value(decimal.ROUND_HALF_EVEN) * increment


@attrs.define(slots=True, eq=False)
class _Live:
    """Mutable engine record of one order."""

    order: Order  # rounded; what the engine executes
    placed: Order  # as the caller sent it; idempotency compares against this
    seq: int
    exchange_order_id: str
    status: OrderStatus = OrderStatus.NEW
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    triggered: bool = False
    reason: str = ""

    @property
    def remaining(self) -> Decimal:
        return self.order.qty - self.filled

    def state(self) -> OrderState:
        return OrderState(
            order=self.order,
            status=self.status,
            filled_qty=self.filled,
            avg_price=self.notional / self.filled if self.filled else None,
            exchange_order_id=self.exchange_order_id,
            reason=self.reason,
        )


class PaperEngine:
    """Orders, matching and the account of one simulated venue."""

    def __init__(
        self,
        markets: Mapping[str, MarketInfo] | None = None,
        *,
        balance: Decimal = Decimal(10000),
        currency: str = "USDT",
        taker_fee: Decimal = Decimal("0.0004"),
        maker_fee: Decimal = Decimal("0.0002"),
        slippage_bps: Decimal = Decimal(1),
        max_leverage: Decimal = Decimal(100),
        infer_markets: bool | None = None,
        exchange: str = "paper",
        history: int = 10_000,
        attached_exits: bool = True,
        margin: Mapping[str, MarketMargin] | None = None,
        liquidation_fee: Decimal = Decimal("0.0125"),
    ) -> None:
        if history < 1:
            raise ValueError(f"history must be at least 1, not {history!r}")
        self.currency = currency
        # Whether an order's stop_loss/take_profit become reduce-only exit
        # orders here (Capability.ATTACHED_EXITS); without, the kernel places them.
        self.attached_exits = attached_exits
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.slippage = slippage_bps / _BPS
        self.max_leverage = max_leverage
        self.exchange = exchange
        self.liquidation_fee = liquidation_fee
        # A host that runs its own liquidation on top (the ccxt fake futures
        # venues) turns the engine's off (and its funding from the data's
        # funding rates with it; a configured rate still applies).
        self.liquidates = True
        self.margin = MarginBook(margin)
        self._funded = self.margin.funded
        self._markets: dict[str, MarketInfo] = dict(DEFAULT_MARKETS if markets is None else markets)
        # Without an explicit market list, symbols first seen in the feed are
        # added so that users' own data works without configuration.
        self._infer = markets is None if infer_markets is None else infer_markets
        self.tracker = PortfolioTracker(balance)
        self._orders: dict[str, _Live] = {}
        self._open: dict[str, dict[str, _Live]] = {}
        # The same open orders by trigger price, so a tick visits only those it
        # can execute (bot4_paper.triggers).
        self._triggers: dict[str, TriggerIndex[_Live]] = {}
        # Like a venue's recent-history endpoints, the engine remembers the last
        # ``history`` fills and closed orders (idempotent retries and recovery
        # look back seconds, not days); open orders are always kept. This keeps
        # memory flat however long a session runs.
        self._fills: deque[Fill] = deque(maxlen=history)
        self._closed: deque[str] = deque()
        self._history = history
        self._last: dict[str, MarketData] = {}
        # Size left at the best ask (buys, index 0) and bid (sells, index 1) of
        # each symbol's last tick: a list, not a dict keyed by Side, since the
        # hash of an Enum is Python code. Made from the tick when an order
        # first takes from it (absent: the last tick's full volume).
        self._avail: dict[str, list[Decimal]] = {}
        # The one protective stop and take profit of each symbol's position
        # (attached exits), resized and moved rather than replaced.
        self._legs: dict[str, dict[OrderType, _Live]] = {}
        # Open reduce-only orders that are not legs (the kernel's, a user's):
        # while there are none a fill needs no sweep of the open book.
        self._others = 0
        self._outbox: list[EngineEvent] = []
        self._now: datetime | None = None
        # _now in integer ns (the tick's ts_ns): an int comparison per tick
        # instead of an aware datetime's. Set together, by _set_now.
        self._now_ns = _NEVER
        self._seq = 0
        self._fill_seq = 0

    # --- queries ----------------------------------------------------------------

    @property
    def markets(self) -> dict[str, MarketInfo]:
        return dict(self._markets)

    @property
    def now(self) -> datetime:
        """Simulated time: the latest tick seen, or the wall clock before any."""
        return self._now if self._now is not None else datetime.now(UTC)

    def last_tick(self, symbol: str) -> MarketData | None:
        return self._last.get(symbol)

    def _set_now(self, moment: datetime | None) -> None:
        """The venue's clock, as a restored state file gives it."""
        self._now = moment
        self._now_ns = _NEVER if moment is None else (moment - _EPOCH) // _MICROSECOND * 1000

    def order_state(self, client_order_id: str, symbol: str | None = None) -> OrderState:
        live = self._orders.get(client_order_id)
        if live is None or (symbol is not None and live.order.symbol != symbol):
            raise OrderNotFound(
                f"no order {client_order_id!r}" + (f" on {symbol}" if symbol else "")
            )
        return live.state()

    def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """Open orders, oldest first."""
        if symbol is not None:
            return [o.state() for o in self._open.get(symbol, {}).values()]
        lives = [o for book in self._open.values() for o in book.values()]
        lives.sort(key=lambda o: o.seq)
        return [o.state() for o in lives]

    def fills(self, since: datetime | None = None) -> list[Fill]:
        if since is None:
            return list(self._fills)
        return [f for f in self._fills if f.timestamp >= since]

    def positions(self) -> list[Position]:
        return list(self.tracker.positions().values())

    def balance(self) -> Balance:
        """``total`` is equity (cash plus unrealised PnL), ``used`` the margin of
        positions and open orders, ``free = total - used`` (negative when the
        account is under water)."""
        total = self.tracker.equity
        used = self.tracker.margin_used() + self._reserved() + self.margin.added_total
        return Balance(currency=self.currency, total=total, free=total - used, used=used)

    # --- commands ---------------------------------------------------------------

    def place(self, order: Order, now: datetime | None = None) -> OrderState:
        """Accept an order (or refuse it with InvalidOrder/InsufficientFunds).

        Idempotent on ``client_order_id``: the same order again returns the
        current state of the first; a different order under a used id is
        InvalidOrder. A market order (or a marketable limit) executes at once
        against the last tick of its symbol.
        """
        known = self._orders.get(order.client_order_id)
        if known is not None:
            if known.placed != order:
                raise InvalidOrder(
                    f"client_order_id {order.client_order_id!r} is already used by another order"
                )
            return known.state()
        when = now if now is not None else self.now
        rounded = self._validate(order)
        self._check_funds(rounded)
        live = self._accept(rounded, placed=order)
        self._outbox.append(live.state())
        self._execute_now(live, when)
        return live.state()

    def cancel(self, client_order_id: str, symbol: str | None = None) -> OrderState:
        live = self._orders.get(client_order_id)
        if live is None or (symbol is not None and live.order.symbol != symbol):
            raise OrderNotFound(
                f"no order {client_order_id!r}" + (f" on {symbol}" if symbol else "")
            )
        if not live.status.is_open:
            raise InvalidOrder(
                f"order {client_order_id!r} is {live.status.value}, it can no longer be cancelled"
            )
        self._close(live, OrderStatus.CANCELED, "cancelled by request")
        state = live.state()
        self._outbox.append(state)
        return state

    def drain(self) -> list[EngineEvent]:
        """Events produced by place() and cancel() since the last drain/tick."""
        out, self._outbox = self._outbox, []
        return out

    def on_tick(self, tick: MarketData) -> list[EngineEvent]:
        """Take a tick: mark positions, match the symbol's open orders against
        it. Returns pending place()/cancel() events first, then what this tick
        caused, in execution order (each Fill followed by its order's update)."""
        symbol = tick.symbol
        if symbol not in self._markets and self._infer:
            self._markets[symbol] = _infer_market(tick)
        self._last[symbol] = tick
        ts_ns = tick.ts_ns
        if ts_ns > self._now_ns:
            self._now_ns = ts_ns
            self._now = tick.timestamp
        self._avail.pop(symbol, None)  # a new touch: its full size, when asked
        if self._funded:
            self._fund(tick.timestamp)
        rate = tick.funding_rate
        if rate is not None and self.liquidates:
            # Applies from the next funding time on (the one this tick may
            # have just passed was paid at the rate before). A host with its
            # own margin model (liquidates off) funds by itself.
            self.margin.rates[symbol] = rate
            if not self._funded:
                self._funded = True
                self._fund(tick.timestamp)  # starts the funding clock
        if self.tracker.holds(symbol):
            # A flat symbol is marked when it opens.
            mark = tick.mark
            if mark is None:
                mark = tick.mid
            self.tracker.mark(symbol, mark)
            if self.liquidates:
                self._watch(tick, mark)
        index = self._triggers.get(symbol)
        if index is not None and index.orders:
            # Computed before matching: orders created while matching (brackets)
            # wait for the next tick.
            for live in index.due(tick.bid, tick.ask):
                if live.status.is_open:
                    self._match(live, tick, tick.timestamp, resting=True)
        if not self._outbox:
            return []  # the common tick: nothing to execute, nothing pending
        return self.drain()

    # --- margin -------------------------------------------------------------------

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
        (see the module docstring)."""
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

    # --- validation ---------------------------------------------------------------

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

    # --- matching -------------------------------------------------------------------

    def _accept(self, order: Order, *, placed: Order) -> _Live:
        self._seq += 1
        live = _Live(order=order, placed=placed, seq=self._seq, exchange_order_id=f"P{self._seq}")
        self._orders[order.client_order_id] = live
        self._rest(live)
        return live

    def _rest(self, live: _Live) -> None:
        """Enter an open order in its symbol's book and trigger index."""
        order = live.order
        symbol = order.symbol
        self._open.setdefault(symbol, {})[order.client_order_id] = live
        if order.reduce_only:
            suffix = _LEG_SUFFIX.get(order.type)
            legs = self._legs.setdefault(symbol, {})
            if (
                self.attached_exits
                and suffix is not None
                and order.client_order_id.endswith(suffix)
                and order.type not in legs
            ):
                legs[order.type] = live  # ours (also when restored from a state file)
            else:
                self._others += 1
        index = self._triggers.get(symbol)
        if index is None:
            index = self._triggers[symbol] = TriggerIndex[_Live]()
        index.add(live)

    def _execute_now(self, live: _Live, when: datetime) -> None:
        """Execute a just-placed market or marketable limit order against the
        last tick (a resting limit does not fill until a later tick)."""
        tick = self._last.get(live.order.symbol)
        if tick is not None and live.order.type in (OrderType.MARKET, OrderType.LIMIT):
            self._match(live, tick, when, resting=False)

    def _taker_price(self, side: Side, tick: MarketData, market: MarketInfo) -> Decimal:
        if side is Side.BUY:
            return round_price(tick.ask * (1 + self.slippage), market.price_increment)
        return round_price(tick.bid * (1 - self.slippage), market.price_increment)

    def _match(self, live: _Live, tick: MarketData, when: datetime, *, resting: bool) -> None:
        order = live.order
        market = self._markets[order.symbol]
        buy = order.side is Side.BUY
        kind = order.type
        if kind in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT) and not live.triggered:
            assert order.price is not None
            if kind is OrderType.STOP_LOSS:
                hit = tick.ask >= order.price if buy else tick.bid <= order.price
            else:
                hit = tick.ask <= order.price if buy else tick.bid >= order.price
            if not hit:
                return
            live.triggered = True
            self._triggers[order.symbol].trigger(live)

        if kind is OrderType.LIMIT:
            assert order.price is not None
            if resting:
                # Crossed by a later tick: the order was in the book, it filled at
                # its own price as maker.
                if not (tick.ask <= order.price if buy else tick.bid >= order.price):
                    return
                price, rate, liquidity = order.price, self.maker_fee, "maker"
            else:
                price = self._taker_price(order.side, tick, market)
                if not (price <= order.price if buy else price >= order.price):
                    # Slippage would cross the limit: execute at the limit if the
                    # book itself is marketable, otherwise rest.
                    if not (tick.ask <= order.price if buy else tick.bid >= order.price):
                        return
                    price = order.price
                rate, liquidity = self.taker_fee, "taker"
        else:
            price, rate, liquidity = (
                self._taker_price(order.side, tick, market),
                self.taker_fee,
                "taker",
            )

        avail = self._avail.get(order.symbol)
        if avail is None:
            avail = self._avail[order.symbol] = [tick.volume, tick.volume]
        side_index = 0 if buy else 1
        qty = min(live.remaining, avail[side_index])
        if order.reduce_only:
            reducible = max(ZERO, -self.tracker.qty(order.symbol) * order.side.sign)
            if not reducible:
                self._close(live, OrderStatus.CANCELED, "reduce-only: no position to reduce")
                self._outbox.append(live.state())
                return
            qty = min(qty, reducible)
        qty = round_qty(qty, market.qty_increment)
        if qty <= 0:
            return  # no size left on this tick; try again on the next one

        if (
            not buy
            and not order.reduce_only
            and self.margin.of(order.symbol).spot
            and qty > max(ZERO, self.tracker.qty(order.symbol))
        ):
            self._close(live, OrderStatus.CANCELED, "insufficient holdings (spot)")
            self._outbox.append(live.state())
            return
        fee = qty * price * rate
        opening = self._opening_qty(order, qty)
        if opening:
            need = opening * price / order.leverage + fee
            free = (
                self.tracker.equity
                - self.tracker.margin_used()
                - self._reserved(exclude=live)
                - self.margin.added_total
            )
            if need > free:
                self._close(live, OrderStatus.CANCELED, "insufficient margin")
                self._outbox.append(live.state())
                return

        self._fill_seq += 1
        fill = Fill(
            fill_id=f"paper-{self._fill_seq}",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            fee=fee,
            timestamp=when,
            liquidity=liquidity,
        )
        tracker = self.tracker
        if not tracker.holds(order.symbol):
            # Marked from now on; valued at the mark (else the mid) of the
            # tick it trades on.
            last = self._last[order.symbol]
            tracker.mark(order.symbol, last.mid if last.mark is None else last.mark)
        tracker.apply(
            fill,
            leverage=order.leverage if opening else None,
            stop_loss=order.stop_loss if opening else None,
        )
        self._fills.append(fill)
        if tracker.holds(order.symbol):
            self.margin.changed(order.symbol)
        else:
            self.margin.release(order.symbol)
        avail[side_index] -= qty
        live.filled += qty
        live.notional += qty * price
        if live.remaining == 0:
            self._close(live, OrderStatus.FILLED, "")
        else:
            live.status = OrderStatus.PARTIALLY_FILLED
        self._outbox.append(fill)
        self._outbox.append(live.state())

        legs = self._legs.get(order.symbol)
        entry = (
            opening
            and self.attached_exits
            and (order.stop_loss is not None or order.take_profit is not None)
        )
        if entry or legs:
            self._keep_legs(order.symbol, live if entry else None)
        if self._others:
            self._cancel_stale_exits(order.symbol)

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

    def _close(self, live: _Live, status: OrderStatus, reason: str) -> None:
        live.status = status
        live.reason = reason
        symbol = live.order.symbol
        book = self._open.get(symbol)
        if book is not None:
            book.pop(live.order.client_order_id, None)
        legs = self._legs.get(symbol)
        if legs is not None and legs.get(live.order.type) is live:
            del legs[live.order.type]
        elif live.order.reduce_only:
            self._others -= 1
        index = self._triggers.get(live.order.symbol)
        if index is not None:
            index.remove(live)
        self._closed.append(live.order.client_order_id)
        while len(self._closed) > self._history:
            self._orders.pop(self._closed.popleft(), None)


def _infer_market(tick: MarketData) -> MarketInfo:
    """Trading rules for a symbol not configured: price increment from the
    quote's decimals (at least 0.01, at most 1e-8), qty increment 1e-6."""
    exponents = [int(p.as_tuple().exponent) for p in (tick.bid, tick.ask, tick.last)]
    exp = max(-8, min([-2, *exponents]))
    step = Decimal(1).scaleb(exp)
    quote = tick.symbol.split("-")[1]
    return MarketInfo(tick.symbol, step, Decimal("0.000001"), Decimal("0.000001"), quote)
