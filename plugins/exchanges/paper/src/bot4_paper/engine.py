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

Where it is: this module holds the engine's state, its queries and commands,
the tick handler and the matching (``on_tick``, ``place``, ``_match``, the
hottest code of the venue). Its other parts are mixins of
:class:`PaperEngine`, so their methods are the engine's own, called and
overridden as such, and none imports this module:

* :mod:`bot4_paper.order_checks`: validation and funds checks of an order,
  and the order margin matching and ``balance()`` share;
* :mod:`bot4_paper.exit_legs`: the position's protective legs and its other
  reduce-only orders, kept after every fill;
* :mod:`bot4_paper.margin_and_liquidation`: the margin commands, funding and
  liquidation (on the margin account of :mod:`bot4_paper.margin_book`);
* :mod:`bot4_paper.order_record` (the engine's record of an order, the events
  it emits) and :mod:`bot4_paper.market_rules` (default markets, rounding),
  re-exported here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot4.contracts import MarketInfo
from bot4.errors import InvalidOrder, OrderNotFound
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
from bot4_paper.exit_legs import _LEG_SUFFIX, ExitLegs
from bot4_paper.margin_and_liquidation import MarginAndLiquidation
from bot4_paper.margin_book import MarginBook, MarketMargin
from bot4_paper.market_rules import DEFAULT_MARKETS, _infer_market, round_price, round_qty
from bot4_paper.order_checks import OrderChecks
from bot4_paper.order_record import EngineEvent
from bot4_paper.order_record import _Live as _Live  # re-exported: durable imports it from here
from bot4_paper.triggers import TriggerIndex

__all__ = ["DEFAULT_MARKETS", "EngineEvent", "PaperEngine", "round_price", "round_qty"]

_BPS = Decimal(10000)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NEVER = -(1 << 63)  # _now_ns before any tick: every tick is later


class PaperEngine(OrderChecks, ExitLegs, MarginAndLiquidation):
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
