"""Any exchange ccxt knows, as a :class:`bot4.contracts.Exchange`.

**The bridge.** ccxt's async API runs on asyncio and bot4 on trio. This
plugin runs ccxt's *synchronous* client in trio worker threads
(``trio.to_thread.run_sync``), one client per exchange object, at most
``threads`` calls at a time (a ``trio.CapacityLimiter``). Reads are abandoned
when trio cancels them (the thread finishes on its own, its answer is
dropped); writes (place, cancel) are not, so a trio timeout never leaves bot4
unsure whether an order went out without the reconciliation below seeing it.
trio-asyncio would run ccxt's async client instead, but it puts a second
event loop and its own cancellation semantics under every call for a
workload of a few requests per second, where threads cost nothing.

**Errors.** ccxt's error classes map onto bot4's refused/failed split
(:func:`map_error`): ``InsufficientFunds``, ``InvalidOrder``, ``BadRequest``
(``BadSymbol``), ``OrderNotFound`` and other ``ExchangeError`` are refusals,
never retried; ``RateLimitExceeded``/``DDoSProtection`` (RateLimited),
``RequestTimeout`` (ExchangeTimeout) and other ``NetworkError`` /
``OperationFailed`` (ExchangeUnavailable) are failures, retried here with
exponential backoff and jitter up to ``max_retries`` times.

**No duplicate orders.** Orders carry bot4's client order id, written as
each venue accepts it (:mod:`bot4_ccxt.venues`: Binance ``newClientOrderId``,
Bybit ``orderLinkId``, OKX ``clOrdId``, Kraken ``userref``). A place whose answer was
lost (timeout, 5xx, dropped connection) is looked up by that id before
anything is sent again: found, its state is returned; known absent, it is
sent again; unknown (the venue still unreachable), it is never re-sent. A
place of an id this object has not seen is looked up first too, so a
restarted bot retrying an order never doubles it.

**Rate limits and clock.** A pacer spaces requests ``rate_limit`` seconds
apart (default: ccxt's ``rateLimit`` for the venue); a 429 doubles the
spacing (decaying back as requests succeed) and holds every request for the
venue's ``Retry-After``. ccxt's own limiter is off: it sleeps inside worker
threads where trio cannot cancel it. The venue's clock offset is measured at
connect (ccxt ``adjustForTimeDifference``) and measured again when a signed
request is refused for its timestamp (ccxt ``InvalidNonce``, Binance -1021).

**Streaming is polling.** ``stream()`` polls tickers, the account's trades
and open orders every ``poll_interval`` seconds and yields a MarketData when
a quote changed, each new Fill, and each changed OrderState (fills before
the order update they caused, then the quote).

**Stop orders, claimed only where they work.** ``STOP_ORDERS`` and
``TAKE_PROFIT_ORDERS`` (market orders triggered at their price, sent as each
venue files them: :mod:`bot4_ccxt.triggers`) are claimed only for the market
types the venue's profile sends them for (:mod:`bot4_ccxt.venues`), when
ccxt's client for the venue creates
them (``has["createStopLossOrder"]``, ``has["createTakeProfitOrder"]``), and,
once the markets are loaded, only when every configured symbol (every market,
when none is configured) lists the order type where the venue publishes its
order types (Binance's ``orderTypes``: many spot symbols have no ``STOP_LOSS``).
Without the claim the bot4 kernel holds the stop itself and closes with a
market order (:mod:`bot4.protection`), instead of sending a stop the venue
refuses.

**Positions** of a spot venue are what this account's fills build (replayed
through bot4's PortfolioTracker: signed quantity, weighted entry); spot
venues have no position endpoint. Orders' ``leverage`` and ``reduce_only`` are
not sent (spot has neither): leverage only ever uses more of the account's
own money, never more exposure.

**Perpetuals** (``type: swap``, :mod:`bot4_ccxt.perps`): ``BTC-USDT-PERP`` is
ccxt's ``BTC/USDT:USDT``; the exchange claims MARGIN, sets the margin mode
and the order's leverage before an entry (:meth:`CcxtExchange.set_leverage`,
:meth:`CcxtExchange.set_margin_mode`), sends exits as ``reduceOnly``, reads
positions, liquidation price and margin from the venue and adds margin to an
isolated position (:meth:`CcxtExchange.add_margin`: ccxt's ``add_margin`` on
Binance, ``POST /v5/position/add-margin`` on Bybit).

**Where it lives.** :class:`CcxtExchange` is this module's: the writes
(placing with reconciliation, cancelling, leverage, margin mode, added
margin) on the account's reads (:class:`~bot4_ccxt.account.CcxtAccount`:
client order ids, look-ups, order states, fills, balance, positions), on the
connection (:class:`~bot4_ccxt.connection.CcxtConnection`: client, threads,
pacing, retries, markets). Beside them: ccxt's client as configured
(:mod:`bot4_ccxt.client`), the error mapping (:mod:`bot4_ccxt.errors`), the
pacer (:mod:`bot4_ccxt.pacing`), the claimed capabilities
(:mod:`bot4_ccxt.capabilities`), the record conversions
(:mod:`bot4_ccxt.conversions`) and the stream (:mod:`bot4_ccxt.poll_stream`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import attrs

from bot4.contracts import Capability, ExchangeEvent
from bot4.errors import (
    ExchangeFailed,
    ExchangeRefused,
    ExchangeUnavailable,
    InvalidOrder,
    OrderNotFound,
)
from bot4.model import Order, OrderState, OrderStatus, OrderType
from bot4_ccxt.account import CcxtAccount, _Known
from bot4_ccxt.capabilities import _CAPS
from bot4_ccxt.conversions import _order_of, _round_down, _round_half_even
from bot4_ccxt.errors import ClockSkew, map_error
from bot4_ccxt.perps import MARGIN_MODES
from bot4_ccxt.poll_stream import _PollStream
from bot4_ccxt.settings import CONFIG_KEYS, CcxtSettings
from bot4_ccxt.triggers import _text, lookup_params, order_params, trigger_kind

__all__ = ["CONFIG_KEYS", "CcxtExchange", "CcxtSettings", "map_error"]

log = logging.getLogger("bot4_ccxt")


class CcxtExchange(CcxtAccount):
    """A venue reached through ccxt (see the module docstring)."""

    name = "ccxt"
    capabilities = _CAPS

    def __init__(self, settings: CcxtSettings) -> None:
        super().__init__(settings)
        self._leverage: dict[str, Decimal] = {}  # symbol -> leverage the venue accepted
        self._mode: dict[str, str] = {}  # symbol -> margin mode the venue accepted

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CcxtExchange:
        return cls(CcxtSettings.from_config(config))

    def __repr__(self) -> str:
        s = self.settings
        keys = "set" if s.api_key else "none"
        return f"CcxtExchange(exchange={s.exchange!r}, api_url={s.api_url!r}, keys={keys})"

    # --- margin (type: swap) ----------------------------------------------------------------

    def _need_margin(self, what: str) -> None:
        if not self._swap:
            raise ExchangeRefused(
                f"{self.name}: {what} needs type: swap (a spot account has no leverage)"
            )

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        """Use ``leverage`` for ``symbol`` (rounded down to a whole number, at
        least 1: venues take integers, and less leverage only holds more
        margin); returns the leverage the venue accepted. A refusal (above the
        venue's maximum for the account's tier) raises ExchangeRefused."""
        await self._ready()
        self._need_margin("set_leverage")
        lev = max(Decimal(1), leverage.to_integral_value(rounding="ROUND_FLOOR"))
        sym = self._sym(symbol)
        params: dict[str, Any] = {}
        if self.settings.exchange == "okx":  # OKX sets leverage per margin mode
            params["marginMode"] = self._mode.get(symbol, self.settings.margin_mode)
        try:
            await self._call(
                f"set_leverage({symbol!r}, {lev})", lambda c: c.set_leverage(int(lev), sym, params)
            )
        except ExchangeRefused as exc:
            # Bybit refuses to set the leverage in force (110043): it is in force.
            if "110043" not in str(exc) and "not modified" not in str(exc):
                raise
        self._leverage[symbol] = lev
        return lev

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        """Use ``mode`` ("isolated" or "cross") for ``symbol``. On a Bybit
        unified account the mode is the account's (every symbol); on OKX it is
        sent with the leverage (and with every order, as ``tdMode``)."""
        await self._ready()
        self._need_margin("set_margin_mode")
        if mode not in MARGIN_MODES:
            raise InvalidOrder(f"{self.name}: margin mode {mode!r} is not isolated or cross")
        sym = self._sym(symbol)
        params: dict[str, Any] = {}
        if self.settings.exchange == "okx":
            params["lever"] = int(self._leverage.get(symbol, Decimal(1)))
        try:
            await self._call(
                f"set_margin_mode({symbol!r}, {mode!r})",
                lambda c: c.set_margin_mode(mode, sym, params),
            )
        except ExchangeRefused as exc:
            # The mode in force already (Binance -4046, Bybit 110026): it is in force.
            if "MarginModeAlreadySet" not in str(exc) and "-4046" not in str(exc):
                raise
        self._mode[symbol] = mode

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        """Move ``amount`` (quote currency, rounded down to a cent) of free
        balance into the isolated position in ``symbol``; returns the
        liquidation price the venue then reports (None if it reports none).
        Binance: ccxt's ``add_margin`` (``POST /fapi/v1/positionMargin``,
        type 1); Bybit: ``POST /v5/position/add-margin`` (ccxt has no unified
        call for it there). A venue without it refuses ("not supported")."""
        await self._ready()
        self._need_margin("add_margin")
        style = self.profile.margin_add if self.profile is not None else ""
        if not style:
            raise ExchangeRefused(f"{self.name}: add_margin is not supported on this venue")
        cents = amount.quantize(Decimal("0.01"), rounding="ROUND_DOWN")
        if not cents.is_finite() or cents <= 0:
            raise InvalidOrder(f"{self.name}: add_margin needs a positive amount, not {amount}")
        sym = self._sym(symbol)
        what = f"add_margin({symbol!r}, {cents})"
        if style == "bybit":
            market_id = self._client.market(sym)["id"] if self._client else sym
            request = {
                "category": "linear",
                "symbol": market_id,
                "margin": _text(cents),
                "positionIdx": 0,  # one-way mode
            }
            # Not retried: a lost answer may have moved the margin already.
            await self._once(what, lambda c: c.privatePostV5PositionAddMargin(request), write=True)
        else:
            await self._once(what, lambda c: c.add_margin(sym, _text(cents)), write=True)
        for pos in await self.fetch_margin_positions():
            if pos.symbol == symbol:
                return pos.liquidation_price
        return None

    async def _ensure_margin(self, symbol: str, leverage: Decimal) -> None:
        """Before an entry: the configured margin mode once per symbol, then
        the order's leverage whenever it differs from the one in force."""
        if symbol not in self._mode:
            await self.set_margin_mode(symbol, self.settings.margin_mode)
        want = max(Decimal(1), leverage.to_integral_value(rounding="ROUND_FLOOR"))
        if self._leverage.get(symbol) != want:
            await self.set_leverage(symbol, want)

    # --- writes -----------------------------------------------------------------------------

    def _prepare(self, order: Order) -> Order:
        """The order as it will be sent: on the market's grid, or refused."""
        info = self._markets.get(order.symbol)
        if info is None:
            raise InvalidOrder(
                f"{self.name}: unknown symbol {order.symbol!r}; markets: "
                f"{sorted(self._markets)[:20]}"
            )
        needs = {OrderType.STOP_LOSS: Capability.STOP_ORDERS}
        needs[OrderType.TAKE_PROFIT] = Capability.TAKE_PROFIT_ORDERS
        if order.type in needs and needs[order.type] not in self.capabilities:
            raise InvalidOrder(
                f"{self.name}: {order.type.value} orders are not supported here "
                f"(no Capability.{needs[order.type].name}); the kernel holds the level itself"
            )
        qty = _round_down(order.qty, info.qty_increment)
        if qty <= 0 or qty < info.min_qty:
            raise InvalidOrder(
                f"{self.name}: quantity {order.qty} of {order.symbol} is below the minimum "
                f"{info.min_qty} (after rounding down to {info.qty_increment})"
            )
        price = None
        if order.price is not None:
            price = _round_half_even(order.price, info.price_increment)
            if price <= 0:
                raise InvalidOrder(f"{self.name}: price {order.price} rounds to zero")
        return attrs.evolve(order, qty=qty, price=price)

    def _same(self, a: Order, b: Order) -> bool:
        return (a.symbol, a.side, a.type, a.qty, a.price) == (
            b.symbol,
            b.side,
            b.type,
            b.qty,
            b.price,
        )

    async def place_order(self, order: Order) -> OrderState:
        await self._ready()
        sent = self._prepare(order)
        coid = order.client_order_id
        known = self._orders.get(coid)
        if known is not None and known.confirmed:
            if known.placed != order:
                raise InvalidOrder(
                    f"{self.name}: client_order_id {coid!r} is already used by another order"
                )
            return await self.fetch_order(order.symbol, coid)
        # Unseen or unconfirmed: the venue may have it already (a lost answer,
        # a restarted bot). Look before sending.
        existing = await self._lookup(order.symbol, coid, order.type)
        if existing is not None:
            return self._adopt(order, sent, existing)
        if self._swap and not order.reduce_only:
            await self._ensure_margin(order.symbol, order.leverage)
        self._orders[coid] = _Known(order, sent)
        self._traded.add(order.symbol)
        return await self._submit(order, sent)

    def _adopt(self, order: Order, sent: Order, raw: Mapping[str, Any]) -> OrderState:
        """The venue has an order under this id: it is ours if it matches."""
        coid = order.client_order_id
        theirs = _order_of(raw, order.symbol, coid, self._sizes.get(order.symbol, Decimal(1)))
        if not self._same(theirs, sent):
            self._orders.pop(coid, None)
            raise InvalidOrder(
                f"{self.name}: client_order_id {coid!r} is already used by another order "
                f"({theirs.side.value} {theirs.type.value} {theirs.qty} @ {theirs.price})"
            )
        self._orders[coid] = _Known(order, sent, confirmed=True)
        self._traded.add(order.symbol)
        state = self._state(raw, order.symbol)
        self._outbox.append(state)
        return state

    async def _submit(self, order: Order, sent: Order) -> OrderState:
        coid = order.client_order_id
        sym = self._sym(order.symbol)
        kind, params = order_params(self.profile, sent, self.settings.trigger_price, self._swap)
        params.update(self._coid_params(coid))
        if self._swap:
            if sent.reduce_only:
                params["reduceOnly"] = True
            if self.profile is not None and self.profile.order_margin_mode:
                params["marginMode"] = self._mode.get(order.symbol, self.settings.margin_mode)
        price = _text(sent.price) if sent.type is OrderType.LIMIT and sent.price else None
        qty = _text(sent.qty / self._sizes.get(order.symbol, Decimal(1)))
        side = sent.side.value
        attempt = 0
        while True:
            try:
                raw = await self._once(
                    f"place_order({coid!r})",
                    lambda c: c.create_order(sym, kind, side, qty, price, dict(params)),
                    write=True,
                )
            except ClockSkew as exc:
                # Refused for its timestamp: it was not placed. Resync, send again.
                if attempt >= self.settings.max_retries:
                    self._orders.pop(coid, None)
                    raise ExchangeUnavailable(str(exc)) from None
                await self._resync_clock_quietly()
            except ExchangeFailed as exc:
                found = await self._reconcile(order, sent, exc)
                if found is not None:
                    return found
                if attempt >= self.settings.max_retries:
                    raise
                await self._backoff(attempt, exc, "place_order")
            except InvalidOrder as exc:
                # Binance spot: "Duplicate order sent."; its Algo Service: -4116.
                if "Duplicate order" not in str(exc) and "-4116" not in str(exc):
                    self._orders.pop(coid, None)
                    raise
                # It went out earlier after all: report the venue's order.
                raw_dup = await self._lookup(order.symbol, coid, order.type)
                if raw_dup is None:
                    self._orders.pop(coid, None)
                    raise
                return self._adopt(order, sent, raw_dup)
            except ExchangeRefused:
                self._orders.pop(coid, None)
                raise
            else:
                self._orders[coid].confirmed = True
                if self.profile is not None and not self.profile.create_answers_state:
                    # Ids only (Bybit): the order's state is read back.
                    raw = await self._lookup(order.symbol, coid) or raw
                state = self._state(raw, order.symbol)
                self._outbox.append(state)
                return state
            attempt += 1

    async def _reconcile(self, order: Order, sent: Order, exc: ExchangeFailed) -> OrderState | None:
        """After a place whose answer was lost: the venue's order if it has one,
        None if it certainly has none. Raises ``exc`` while it cannot tell."""
        log.warning(
            "%s: place %r failed (%s); looking it up before any retry",
            self.name,
            order.client_order_id,
            exc,
        )
        try:
            raw = await self._lookup(order.symbol, order.client_order_id, order.type)
        except ExchangeFailed:
            raise exc from None
        if raw is None:
            return None
        return self._adopt(order, sent, raw)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        await self._ready()
        sym = self._sym(symbol)
        coid = client_order_id
        cancel_params = self._coid_params(coid)
        if self.profile is not None and self.profile.lookup == "bybit":
            cancel_params = {"orderLinkId": cancel_params["clientOrderId"]}
        elif self._algo_service:
            trigger = self._is_trigger(coid)
            if trigger is None:  # not placed by this object (a restart): ask the venue
                found = await self._lookup(symbol, coid)
                trigger = found is not None and trigger_kind(found) is not None
            if trigger:  # Binance's Algo Service: cancelled there
                cancel_params.update(lookup_params(self.profile, True, self._swap))
        attempt = 0
        while True:
            try:
                raw = await self._once(
                    f"cancel_order({symbol!r}, {coid!r})",
                    lambda c: c.cancel_order(None, sym, dict(cancel_params)),
                    write=True,
                )
            except OrderNotFound:
                # Binance answers "unknown order" for one that is no longer open too.
                current = await self._lookup(symbol, coid)
                if current is None:
                    raise
                state = self._state(current, symbol)
                if state.status is OrderStatus.CANCELED and attempt:
                    return state  # our earlier, unanswered cancel went through
                raise InvalidOrder(
                    f"{self.name}: order {coid!r} is {state.status.value}, it can no longer "
                    "be cancelled"
                ) from None
            except ExchangeFailed as exc:
                if attempt >= self.settings.max_retries:
                    raise
                await self._backoff(attempt, exc, "cancel_order")
            else:
                # Binance's answer names the cancel request, not the order: use our id.
                state = self._state(raw, symbol, coid)
                if state.status is not OrderStatus.CANCELED:
                    state = await self.fetch_order(symbol, coid)
                self._outbox.append(state)
                return state
            attempt += 1

    # --- stream -----------------------------------------------------------------------------

    def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        """Poll the venue (see the module docstring)."""
        return _PollStream(self, tuple(symbols))
