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
"""

from __future__ import annotations

import functools
import logging
import math
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import attrs
import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here
import trio

from bot4.contracts import Capability, Exchange, ExchangeEvent, MarketInfo
from bot4.errors import (
    ConfigError,
    ExchangeError,
    ExchangeFailed,
    ExchangeRefused,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    RateLimited,
)
from bot4.exchange_metrics import outcome_of
from bot4.model import (
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
from bot4.secrets import redact
from bot4_ccxt.isolate import in_own_decimal_context
from bot4_ccxt.perps import (
    MARGIN_MODES,
    MarginPosition,
    bot4_symbol,
    contract_size,
    margin_position,
)
from bot4_ccxt.settings import CONFIG_KEYS, DEFAULT_OPTIONS, VENUE_OPTIONS, CcxtSettings
from bot4_ccxt.triggers import (
    TRIGGER_TYPES,
    actual_order_id,
    lookup_params,
    merged_with_actual,
    order_params,
    separate,
    trigger_kind,
)
from bot4_ccxt.venues import (
    decode_coid,
    encode_coid,
    market_options,
)

__all__ = ["CONFIG_KEYS", "CcxtExchange", "CcxtSettings", "map_error"]

log = logging.getLogger("bot4_ccxt")
T = TypeVar("T")

_CAPS = frozenset(
    {
        Capability.MARKET_ORDERS,
        Capability.LIMIT_ORDERS,
        Capability.STOP_ORDERS,
        Capability.TAKE_PROFIT_ORDERS,
        Capability.POSITIONS,
        Capability.STREAMING,
        Capability.PARTIAL_FILLS,
    }
)
# A triggered order type, the ccxt ``has`` entry for it, and the venue's names of it
# in a market's order types (Binance's ``info.orderTypes``: spot, then USDⓈ-M).
_TRIGGERS = (
    (Capability.STOP_ORDERS, "createStopLossOrder", ("STOP_LOSS", "STOP_MARKET")),
    (Capability.TAKE_PROFIT_ORDERS, "createTakeProfitOrder", ("TAKE_PROFIT", "TAKE_PROFIT_MARKET")),
)


@functools.cache
def _client_caps(exchange: str) -> frozenset[Capability]:
    """What ccxt's client for ``exchange`` can do (no request is made)."""
    has = getattr(ccxt, exchange)().has
    return _CAPS - {cap for cap, key, _ in _TRIGGERS if not has.get(key)}


def _market_caps(caps: frozenset[Capability], markets: Sequence[Any]) -> frozenset[Capability]:
    """``caps`` less a triggered order type some market does not list."""
    missing = set()
    for market in markets:
        info = market.get("info") if isinstance(market, Mapping) else None
        types = info.get("orderTypes") if isinstance(info, Mapping) else None
        if isinstance(types, list):
            missing |= {cap for cap, _, names in _TRIGGERS if not set(names) & set(types)}
    return caps - missing


_ZERO = Decimal(0)


# --- errors -------------------------------------------------------------------------------


class ClockSkew(ExchangeUnavailable):
    """A signed request was refused for its timestamp: resync the clock, retry."""


def map_error(exc: BaseException, what: str, scrub: Callable[[str], str] = redact) -> ExchangeError:
    """bot4's error for a ccxt exception (see the module docstring)."""
    text = scrub(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ccxt.OrderNotFound):
        return OrderNotFound(text)
    if isinstance(exc, ccxt.InsufficientFunds):
        return InsufficientFunds(text)
    if isinstance(exc, ccxt.InvalidOrder | ccxt.BadRequest):
        return InvalidOrder(text)
    if isinstance(exc, ccxt.ExchangeError):
        return ExchangeRefused(text)
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return RateLimited(text)
    if isinstance(exc, ccxt.RequestTimeout):
        return ExchangeTimeout(text)
    if isinstance(exc, ccxt.InvalidNonce):
        return ClockSkew(text)
    return ExchangeUnavailable(text)


# --- pacing -------------------------------------------------------------------------------


class _ScrubbedLogger:
    """What ccxt calls as ``client.logger``: records go to ``bot4_ccxt.wire``
    with every secret of the exchange masked."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._scrub = scrub
        self._log = logging.getLogger("bot4_ccxt.wire")

    def _emit(self, level: int, msg: object, *args: object) -> None:
        if self._log.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self._log.log(level, "%s", self._scrub(text))

    def debug(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.INFO, msg, *args)

    def warning(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.WARNING, msg, *args)

    def error(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.ERROR, msg, *args)


class Pacer:
    """Spaces requests ``interval`` seconds apart; a rate-limit answer doubles
    the spacing (up to ``ceiling``) and holds everything for ``retry_after``;
    each success lets the spacing decay back towards the base."""

    def __init__(self, interval: float, ceiling: float = 10.0) -> None:
        self.base = interval
        self.interval = interval
        self.ceiling = ceiling
        self._next = -math.inf
        self.slowed = 0  # how many times a 429 slowed us down

    async def wait(self) -> None:
        now = trio.current_time()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await trio.sleep(at - now)
        else:
            await trio.lowlevel.checkpoint()

    def slow_down(self, hold: float) -> None:
        self.slowed += 1
        self.interval = min(self.ceiling, max(self.interval * 2, self.base * 2, 0.05))
        self._next = max(self._next, trio.current_time() + hold)

    def relax(self) -> None:
        if self.interval > self.base:
            self.interval = max(self.base, self.interval * 0.9)


# --- the exchange ---------------------------------------------------------------------------


@attrs.define
class _Known:
    """An order this object placed (or adopted): what the caller asked and what
    was sent after rounding; ``confirmed`` once the venue acknowledged it."""

    placed: Order
    sent: Order
    confirmed: bool = False


def _d(value: object) -> Decimal:
    """A ccxt number (a string: the client runs with ``number = str``) as Decimal."""
    if value is None:
        return _ZERO
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return _ZERO


def _round_down(qty: Decimal, step: Decimal) -> Decimal:
    return (qty / step).to_integral_value(rounding="ROUND_DOWN") * step


def _round_half_even(price: Decimal, step: Decimal) -> Decimal:
    return (price / step).to_integral_value(rounding="ROUND_HALF_EVEN") * step


def _text(value: Decimal) -> str:
    out = format(value, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


class CcxtExchange(Exchange):
    """A venue reached through ccxt (see the module docstring)."""

    name = "ccxt"
    capabilities = _CAPS
    # Told of every retry as (method, outcome): bot4's exchange metrics set it.
    retry_observer: Callable[[str, str], None] | None = None

    def __init__(self, settings: CcxtSettings) -> None:
        self.settings = settings
        self.name = f"ccxt-{settings.exchange}"
        self.profile = settings.profile
        self._swap = settings.market_type == "swap"
        self.capabilities = self._base_caps()
        self._client: Any = None
        self._limiter = trio.CapacityLimiter(settings.threads)
        self._pacer: Pacer | None = None
        self._markets: dict[str, MarketInfo] = {}
        self._to_ccxt: dict[str, str] = {}
        self._from_ccxt: dict[str, str] = {}
        self._orders: dict[str, _Known] = {}
        self._coids: dict[tuple[str, str], str] = {}  # (symbol, exchange id) -> client id
        self._fills: dict[str, dict[str, Fill]] = {}  # symbol -> fill id -> fill
        self._fill_order: dict[str, tuple[int, tuple[int, str], str]] = {}
        self._since: dict[str, int] = {}
        self._traded: set[str] = set(settings.symbols)
        self._outbox: deque[OrderState] = deque()
        self._emitted: dict[str, tuple[OrderStatus, Decimal]] = {}
        self._sizes: dict[str, Decimal] = {}  # symbol -> base units per ccxt amount unit
        self._coid_back: dict[str, str] = {}  # the venue's client id -> bot4's
        self._leverage: dict[str, Decimal] = {}  # symbol -> leverage the venue accepted
        self._mode: dict[str, str] = {}  # symbol -> margin mode the venue accepted
        # Trigger orders whose triggered order is known (its fills map to them).
        self._resolved: set[tuple[str, str]] = set()
        self._closed = False
        self.requests = 0  # calls that reached the venue (attempts, retries included)

    def _base_caps(self) -> frozenset[Capability]:
        caps = _client_caps(self.settings.exchange)
        if self.profile is not None and self.settings.market_type not in self.profile.triggers:
            caps -= {cap for cap, _, _ in _TRIGGERS}
        return caps | {Capability.MARGIN} if self._swap else caps

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CcxtExchange:
        return cls(CcxtSettings.from_config(config))

    def __repr__(self) -> str:
        s = self.settings
        keys = "set" if s.api_key else "none"
        return f"CcxtExchange(exchange={s.exchange!r}, api_url={s.api_url!r}, keys={keys})"

    # --- plumbing ------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for value in (self.settings.api_key, self.settings.secret, self.settings.password):
            if value:
                text = text.replace(value, "***")
        return redact(text)

    def _new_client(self) -> Any:
        s = self.settings
        klass = getattr(ccxt, s.exchange)
        options = {
            **DEFAULT_OPTIONS,
            **market_options(s.profile, s.market_type),
            **VENUE_OPTIONS.get(s.exchange, {}),
            **s.options,
        }
        if s.recv_window is not None:
            options["recvWindow"] = s.recv_window
        params: dict[str, Any] = {
            "enableRateLimit": False,
            "timeout": int(s.timeout * 1000),
            "options": options,
        }
        for key, value in (("apiKey", s.api_key), ("secret", s.secret), ("password", s.password)):
            if value:
                params[key] = value
        client = klass(params)
        # ccxt logs every request with its headers (the API key) at DEBUG: its
        # records go through a logger that scrubs them first.
        client.logger = _ScrubbedLogger(self._scrub)
        client.number = str  # numbers as strings: Decimal without binary rounding
        if s.sandbox:
            client.set_sandbox_mode(True)
        api = client.urls.get("api")
        if s.api_url and isinstance(api, dict):
            base = s.api_url.rstrip("/")
            for key, url in list(api.items()):
                if isinstance(url, str):
                    api[key] = re.sub(r"^[a-z]+://[^/]+", base, url)
        if s.urls and isinstance(api, dict):
            api.update(s.urls)
        if s.api_url or s.urls:
            _errors_by_market_type(client, s.profile, s.market_type)
        return client

    def _pace(self) -> Pacer:
        if self._pacer is None:
            rate = self.settings.rate_limit
            if rate is None:
                rate = float(getattr(self._client, "rateLimit", 0) or 0) / 1000
            self._pacer = Pacer(rate)
        return self._pacer

    async def _once(self, what: str, fn: Callable[..., T], *args: Any, write: bool = False) -> T:
        """One request in a worker thread, its error mapped to bot4's."""
        if self._client is None:
            self._client = self._new_client()
        pacer = self._pace()
        await pacer.wait()
        client = self._client
        # In a Decimal context of its own: ccxt changes the current one in place.
        call = functools.partial(in_own_decimal_context, fn, client, *args)
        self.requests += 1
        try:
            result = await trio.to_thread.run_sync(
                call, abandon_on_cancel=not write, limiter=self._limiter
            )
        except ccxt.BaseError as exc:
            err = map_error(exc, what, self._scrub)
            if isinstance(err, RateLimited):
                hold = _retry_after(client)
                err.retry_after = hold
                pacer.slow_down(hold if hold is not None else pacer.interval)
            raise err from None
        except Exception as exc:  # requests/urllib3 errors ccxt did not wrap
            raise ExchangeUnavailable(self._scrub(f"{what}: {type(exc).__name__}: {exc}")) from None
        pacer.relax()
        return result

    async def _backoff(self, attempt: int, exc: ExchangeFailed, what: str = "request") -> None:
        observer = self.retry_observer  # bot4's metrics (bot4.exchange_metrics), if any
        if observer is not None:
            observer(what.split("(", 1)[0], outcome_of(exc))
        s = self.settings
        delay = min(s.backoff_max, s.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if isinstance(exc, RateLimited) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        log.info("%s: %s; retrying in %.2f s", self.name, exc, delay)
        await trio.sleep(delay)

    async def _resync_clock(self) -> None:
        await self._once("load_time_difference()", lambda c: c.load_time_difference())

    async def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A read (or an idempotent write), retried on ExchangeFailed."""
        attempt = 0
        while True:
            try:
                return await self._once(what, fn, *args)
            except ClockSkew as exc:
                if attempt >= self.settings.max_retries:
                    raise
                await self._resync_clock_quietly()
                last: ExchangeFailed = exc
            except ExchangeFailed as exc:
                if attempt >= self.settings.max_retries:
                    raise
                last = exc
                await self._backoff(attempt, last, what)
            attempt += 1

    async def _resync_clock_quietly(self) -> None:
        try:
            await self._resync_clock()
        except ExchangeError as exc:
            log.warning("%s: clock resync failed: %s", self.name, exc)

    async def _ready(self) -> None:
        await trio.lowlevel.checkpoint()  # every call is cancellable, even from cache
        if self._closed:
            raise ExchangeUnavailable(f"{self.name}: the exchange is closed; call connect()")
        if not self._markets:
            await self._load_markets()

    async def _load_markets(self) -> None:
        raw: Mapping[str, Any] = await self._call("load_markets()", lambda c: c.load_markets())
        markets: dict[str, MarketInfo] = {}
        for ccxt_symbol, m in raw.items():
            symbol = bot4_symbol(m, self.settings.market_type)
            size = contract_size(m)
            info = _market_info(symbol, m, size) if symbol else None
            if symbol is None or info is None:
                continue
            markets[symbol] = info
            self._sizes[symbol] = size
            self._to_ccxt[symbol] = ccxt_symbol
            self._from_ccxt[ccxt_symbol] = symbol
        self._markets = markets
        wanted = self.settings.symbols or tuple(markets)
        self.capabilities = _market_caps(
            self._base_caps(),
            [raw[self._to_ccxt[s]] for s in wanted if s in self._to_ccxt],
        )

    def _sym(self, symbol: str) -> str:
        ccxt_symbol = self._to_ccxt.get(symbol)
        if ccxt_symbol is None:
            raise InvalidOrder(f"{self.name}: unknown symbol {symbol!r}")
        return ccxt_symbol

    # --- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        self._closed = False
        if self._client is None:
            self._client = self._new_client()
        await self._load_markets()

    async def close(self) -> None:
        self._closed = True
        client, self._client = self._client, None
        session = getattr(client, "session", None)
        if session is not None:
            session.close()
        await trio.lowlevel.checkpoint()

    # --- reads ------------------------------------------------------------------------------

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        await self._ready()
        return dict(self._markets)

    async def fetch_balance(self) -> Balance:
        await self._ready()
        raw = await self._call("fetch_balance()", lambda c: c.fetch_balance())
        cur = self.settings.currency
        entry = raw.get(cur) or {}
        free, used = _d(entry.get("free")), _d(entry.get("used"))
        return Balance(currency=cur, total=free + used, free=free, used=max(used, _ZERO))

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        await self._ready()
        raw = await self._lookup(symbol, client_order_id)
        if raw is None:
            raise OrderNotFound(f"{self.name}: no order {client_order_id!r} on {symbol}")
        return self._state(raw, symbol)

    # --- client order ids ----------------------------------------------------------------

    def _venue_coid(self, coid: str) -> str | int:
        """bot4's client id as this venue accepts it (:mod:`bot4_ccxt.venues`)."""
        if self.profile is None:
            return coid  # an untested venue (allow_untested): sent as it is
        venue = encode_coid(self.profile, coid)
        self._coid_back[str(venue)] = coid
        return venue

    def _coid_params(self, coid: str) -> dict[str, Any]:
        venue = self._venue_coid(coid)
        if self.profile is not None and self.profile.coid_int:
            return {"userref": venue}
        return {"clientOrderId": venue}

    def _coid_of(self, raw: Mapping[str, Any]) -> str:
        """bot4's client id of a venue order record (its own id when not ours)."""
        venue = raw.get("clientOrderId")
        if venue is None and self.profile is not None and self.profile.coid_int:
            venue = (raw.get("info") or {}).get("userref")
        if venue is not None and str(venue) in self._coid_back:
            return self._coid_back[str(venue)]
        if venue is not None and self.profile is not None:
            decoded = decode_coid(self.profile, venue)
            if decoded is not None:
                return decoded
        return str(venue or raw.get("id"))

    @property
    def _algo_service(self) -> bool:
        """Binance USDⓈ-M: trigger orders live in the Algo Service (own ids, look-ups)."""
        return (
            self._swap
            and self.profile is not None
            and self.profile.trigger_orders == "binance_algo"
        )

    def _is_trigger(self, coid: str, kind: OrderType | None = None) -> bool | None:
        """Whether ``coid`` is a trigger order (None: this object cannot tell)."""
        known = self._orders.get(coid)
        kind = known.sent.type if known is not None else kind
        return None if kind is None else kind in TRIGGER_TYPES

    async def _lookup(
        self, symbol: str, coid: str, kind: OrderType | None = None
    ) -> dict[str, Any] | None:
        """The venue's record of an order by client id; None if it has none.

        Binance, OKX: ``fetch_order`` by client id. Bybit v5: its open orders
        filtered by ``orderLinkId`` (``/v5/order/realtime``, category from the
        market), then its order history (ccxt's ``fetch_order`` there needs an
        exchange id). Kraken: open, then closed orders filtered by ``userref``.
        On a venue that files trigger orders apart (:mod:`bot4_ccxt.triggers`),
        a trigger order is looked up there, an order of unknown type in both."""
        trigger = self._is_trigger(coid, kind)
        if not separate(self.profile, self._swap):
            return await self._lookup_in(symbol, coid, False)
        for conditional in (False, True) if trigger is None else (trigger,):
            raw = await self._lookup_in(symbol, coid, conditional)
            if raw is not None:
                return raw
        return None

    async def _lookup_in(self, symbol: str, coid: str, trigger: bool) -> dict[str, Any] | None:
        sym = self._sym(symbol)
        what = f"fetch_order({symbol!r}, {coid!r})"
        kind = self.profile.lookup if self.profile is not None else "fetch_order"
        extra = lookup_params(self.profile, trigger, self._swap)
        if kind == "fetch_order":
            params = {**self._coid_params(coid), **extra}
            try:
                raw: dict[str, Any] = await self._call(
                    what, lambda c: c.fetch_order(None, sym, dict(params))
                )
            except OrderNotFound:
                return None
            if trigger:
                return await self._with_actual(symbol, coid, raw)
            return raw
        venue = self._venue_coid(coid)
        key = "orderLinkId" if kind == "bybit" else "userref"
        for method in ("fetch_open_orders", "fetch_closed_orders"):
            found = await self._call(
                what,
                lambda c, m=method: getattr(c, m)(sym, None, None, {key: venue, **extra}),
            )
            mine = [r for r in found if str(r.get("clientOrderId") or "") == str(venue)]
            if not mine and kind == "kraken":
                mine = [r for r in found if (r.get("info") or {}).get("userref") == venue]
            if mine:
                return dict(mine[-1])
        return None

    async def _with_actual(self, symbol: str, coid: str, raw: dict[str, Any]) -> dict[str, Any]:
        """A Binance algo order with the status and fills of the order it
        placed when it triggered (:mod:`bot4_ccxt.triggers`); that order's
        fills are booked under ``coid``."""
        actual = actual_order_id(raw)
        if actual is None:
            if raw.get("status") == "closed":  # triggered, its order not named yet
                return {**raw, "status": "open"}
            return raw
        self._coids[(symbol, actual)] = coid
        sym = self._sym(symbol)
        placed: dict[str, Any] = await self._call(
            f"fetch_order({actual!r})", lambda c: c.fetch_order(actual, sym)
        )
        return merged_with_actual(raw, placed)

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        await self._ready()
        symbols = [symbol] if symbol is not None else sorted(self._traded)
        raws: list[tuple[str, dict[str, Any]]] = []
        apart = separate(self.profile, self._swap)
        extra = lookup_params(self.profile, True, self._swap)
        for sym in symbols:
            ccxt_symbol = self._sym(sym)
            got = await self._call(
                f"fetch_open_orders({sym!r})", lambda c, s=ccxt_symbol: c.fetch_open_orders(s)
            )
            raws.extend((sym, r) for r in got)
            if apart:  # the venue lists its trigger orders apart
                got = await self._call(
                    f"fetch_open_orders({sym!r}, trigger)",
                    lambda c, s=ccxt_symbol: c.fetch_open_orders(s, None, None, dict(extra)),
                )
                raws.extend((sym, r) for r in got)
        raws.sort(key=lambda sr: (sr[1].get("timestamp") or 0, _id_key(sr[1].get("id"))))
        return [self._state(r, sym) for sym, r in raws]

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        await self._ready()
        for sym in sorted(self._traded):
            await self._refresh_fills(sym)
        fills = [f for book in self._fills.values() for f in book.values()]
        fills.sort(key=lambda f: self._fill_order[f.fill_id])
        if since is not None:
            fills = [f for f in fills if f.timestamp >= since]
        return fills

    async def fetch_positions(self) -> Sequence[Position]:
        if self._swap:
            return [p.position() for p in await self.fetch_margin_positions()]
        fills = await self.fetch_fills()
        tracker = PortfolioTracker(_ZERO)
        for fill in fills:
            tracker.apply(fill)
        return [p for p in tracker.positions().values() if p.qty != 0]

    # --- margin (type: swap) ----------------------------------------------------------------

    async def fetch_margin_positions(self) -> Sequence[MarginPosition]:
        """Open perpetual positions as the venue reports them: liquidation
        price, margin and mark included (:mod:`bot4_ccxt.perps`)."""
        await self._ready()
        if not self._swap:
            raise ExchangeRefused(f"{self.name}: margin positions need type: swap")
        wanted = sorted(self._traded) or sorted(self._markets)
        syms = [self._sym(s) for s in wanted]
        raws = await self._call("fetch_positions()", lambda c: c.fetch_positions(syms))
        out = []
        for raw in raws:
            symbol = self._from_ccxt.get(str(raw.get("symbol")))
            if symbol is None:
                continue
            pos = margin_position(symbol, raw, self._sizes[symbol])
            if pos is not None:
                out.append(pos)
        return sorted(out, key=lambda p: p.symbol)

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

    async def _refresh_fills(self, symbol: str) -> list[Fill]:
        """Fetch the account's new trades in ``symbol``; returns those not seen before."""
        ccxt_symbol = self._sym(symbol)
        book = self._fills.setdefault(symbol, {})
        page = self.profile.trades_page if self.profile is not None else 1000
        new: list[Fill] = []
        while True:
            since = self._since.get(symbol)
            trades = await self._call(
                f"fetch_my_trades({symbol!r})",
                lambda c, since=since: c.fetch_my_trades(ccxt_symbol, since, page),
            )
            fresh = 0
            for t in trades:
                fill_id = f"{symbol}:{t['id']}"
                if fill_id in book:
                    continue
                fill = await self._fill(symbol, t, fill_id)
                book[fill_id] = fill
                self._fill_order[fill_id] = (
                    int(t.get("timestamp") or 0),
                    _id_key(t["id"]),
                    fill_id,
                )
                new.append(fill)
                fresh += 1
                stamp = int(t.get("timestamp") or 0)
                self._since[symbol] = max(self._since.get(symbol, 0), stamp)
            if len(trades) < page or not fresh:
                break
        new.sort(key=lambda f: self._fill_order[f.fill_id])
        return new

    async def _fill(self, symbol: str, t: Mapping[str, Any], fill_id: str) -> Fill:
        order_id = str(t.get("order") or "")
        coid = self._coids.get((symbol, order_id))
        link = (t.get("info") or {}).get("orderLinkId")  # Bybit names the order's client id
        if coid is None and link:
            coid = self._coid_of({"clientOrderId": link})
            self._coids[(symbol, order_id)] = coid
        if coid is None and self._algo_service:
            coid = await self._trigger_of_fill(symbol, order_id)
        if coid is None:
            sym = self._sym(symbol)
            # Bybit: its fetch_order by exchange id wants the "last 500 orders" caveat acknowledged.
            extra = {"acknowledged": True} if self.settings.exchange == "bybit" else {}
            try:
                raw = await self._call(
                    f"fetch_order({order_id!r})", lambda c: c.fetch_order(order_id, sym, extra)
                )
            except ExchangeRefused as exc:
                # The venue will not say (an old or a venue-made order): the fill
                # still counts, under the venue's order id.
                log.warning("%s: order %r of a fill not found: %s", self.name, order_id, exc)
                raw = {}
            coid = self._coid_of(raw) if raw.get("clientOrderId") else order_id or fill_id
            self._coids[(symbol, order_id)] = coid
        qty, price = _d(t.get("amount")) * self._sizes[symbol], _d(t.get("price"))
        fee = _ZERO
        info = self._markets[symbol]
        for f in t.get("fees") or ([t["fee"]] if t.get("fee") else []):
            cost = _d(f.get("cost"))
            if f.get("currency") == info.quote_currency:
                fee += cost
            elif f.get("currency") == symbol.split("-")[0]:
                fee += cost * price
        stamp = t.get("timestamp")
        when = datetime.fromtimestamp(int(stamp) / 1000, UTC) if stamp else datetime.now(UTC)
        return Fill(
            fill_id=fill_id,
            client_order_id=coid,
            symbol=symbol,
            side=Side(str(t.get("side"))),
            qty=qty,
            price=price,
            fee=abs(fee),
            timestamp=when,
            liquidity=str(t.get("takerOrMaker") or "taker"),
        )

    async def _trigger_of_fill(self, symbol: str, order_id: str) -> str | None:
        """The client id of our trigger order whose triggered order ``order_id``
        is (Binance: a fill names the order the algo order placed)."""
        for coid, known in list(self._orders.items()):
            if known.sent.symbol != symbol or known.sent.type not in TRIGGER_TYPES:
                continue
            if ("algo", coid) in self._resolved:
                continue
            raw = await self._lookup_in(symbol, coid, True)
            if raw is not None and actual_order_id(raw) is not None:
                self._resolved.add(("algo", coid))
            if self._coids.get((symbol, order_id)) == coid:
                return coid
        return self._coids.get((symbol, order_id))

    def _state(self, raw: Mapping[str, Any], symbol: str, coid: str | None = None) -> OrderState:
        coid = coid or self._coid_of(raw)
        exchange_id = str(raw.get("id") or "")
        self._coids[(symbol, exchange_id)] = coid
        known = self._orders.get(coid)
        size = self._sizes.get(symbol, Decimal(1))
        order = known.sent if known is not None else _order_of(raw, symbol, coid, size)
        filled = _d(raw.get("filled")) * size
        cost = raw.get("cost")
        if filled and cost is not None:
            avg: Decimal | None = _d(cost) / filled
        elif filled and raw.get("average") is not None:
            avg = _d(raw.get("average"))
        else:
            avg = None
        status = {
            "closed": OrderStatus.FILLED,
            "canceled": OrderStatus.CANCELED,
            "cancelled": OrderStatus.CANCELED,
            "expired": OrderStatus.CANCELED,
            "rejected": OrderStatus.REJECTED,
        }.get(str(raw.get("status")))
        if status is None:
            status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW
        return OrderState(
            order=order,
            status=status,
            filled_qty=min(filled, order.qty),
            avg_price=avg,
            exchange_order_id=exchange_id,
        )

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


class _PollStream(AsyncIterator[ExchangeEvent]):
    """Polling as a plain async iterator: a consumer may stop at any point."""

    def __init__(self, exchange: CcxtExchange, symbols: tuple[str, ...]) -> None:
        self._ex = exchange
        self._symbols = symbols
        self._buffer: deque[ExchangeEvent] = deque()
        self._quotes: dict[str, tuple[Decimal, Decimal, Decimal, datetime]] = {}
        self._changed_at: float | None = None
        self._failures = 0
        self._done = False

    def __aiter__(self) -> _PollStream:
        return self

    async def aclose(self) -> None:
        self._done = True

    async def __anext__(self) -> ExchangeEvent:
        ex = self._ex
        while not self._buffer:
            if self._done or ex._closed:
                raise StopAsyncIteration
            now = trio.current_time()
            if self._changed_at is None:
                self._changed_at = now
            idle = ex.settings.max_idle
            if idle is not None and now - self._changed_at > idle:
                self._done = True
                raise StopAsyncIteration
            try:
                await self._poll()
                self._failures = 0
            except ExchangeFailed as exc:
                self._failures += 1
                log.warning("%s: poll failed (%d in a row): %s", ex.name, self._failures, exc)
                if self._failures > 3 * (ex.settings.max_retries + 1):
                    raise
            if not self._buffer:
                await trio.sleep(ex.settings.poll_interval)
        return self._buffer.popleft()

    def _wanted(self) -> list[str]:
        ex = self._ex
        if self._symbols:
            return list(self._symbols)
        if ex.settings.symbols:
            return list(ex.settings.symbols)
        if len(ex._markets) <= 50:
            return sorted(ex._markets)
        raise ConfigError(
            f"{ex.name}: stream() of every symbol would poll {len(ex._markets)} markets; "
            "set `symbols:` in the exchange config"
        )

    async def _poll(self) -> None:
        ex = self._ex
        await ex._ready()
        wanted = self._wanted()
        ex._traded.update(wanted)
        # Quotes first: what a quote caused is in the trades and orders read after it.
        quotes: list[MarketData] = []
        for symbol in wanted:
            sym = ex._sym(symbol)
            t = await ex._call(f"fetch_ticker({symbol!r})", lambda c, s=sym: c.fetch_ticker(s))
            md = _market_data(ex.name, symbol, t)
            if md is not None:
                key = (md.bid, md.ask, md.last, md.timestamp)
                if self._quotes.get(symbol) != key:
                    self._quotes[symbol] = key
                    quotes.append(md)
        fills: list[Fill] = []
        for symbol in sorted(ex._traded):
            fills.extend(await ex._refresh_fills(symbol))
        fills.sort(key=lambda f: ex._fill_order[f.fill_id])
        updates: list[OrderState] = []
        while ex._outbox:
            updates.append(ex._outbox.popleft())
        updates.extend(await self._order_updates())
        for state in updates:
            seen = (state.status, state.filled_qty)
            if ex._emitted.get(state.order.client_order_id) == seen:
                continue
            ex._emitted[state.order.client_order_id] = seen
            self._buffer.append(state)
        for fill in reversed(fills):
            self._buffer.appendleft(fill)
        self._buffer.extend(quotes)
        if quotes:
            self._changed_at = trio.current_time()

    async def _order_updates(self) -> list[OrderState]:
        """States of our orders that changed since last emitted."""
        ex = self._ex
        watching = [
            (coid, k)
            for coid, k in ex._orders.items()
            if k.confirmed and ex._emitted.get(coid, (OrderStatus.NEW, _ZERO))[0].is_open
        ]
        if not watching:
            return []
        out: list[OrderState] = []
        open_now: dict[str, OrderState] = {}
        for symbol in sorted({k.sent.symbol for _, k in watching}):
            for state in await ex.fetch_open_orders(symbol):
                open_now[state.order.client_order_id] = state
        for coid, k in watching:
            current = open_now.get(coid)
            if current is None:
                current = await ex.fetch_order(k.sent.symbol, coid)
            out.append(current)
        return out


# --- conversions ----------------------------------------------------------------------------


def _errors_by_market_type(client: Any, profile: Any, kind: str) -> None:
    """Binance's ccxt client picks the error codes of a market type (``linear``:
    -2021 "would immediately trigger" is InvalidOrder) by the request's host;
    at another ``api_url`` (a proxy, the fake venues) it would find none, so
    the table of the configured market type is merged into the common one."""
    ccxt_type = (profile.market_types if profile is not None else {}).get(kind, kind)
    table = client.exceptions.get(ccxt_type) if isinstance(client.exceptions, dict) else None
    if not isinstance(table, dict):
        return
    for how in ("exact", "broad"):
        if isinstance(table.get(how), dict) and isinstance(client.exceptions.get(how), dict):
            client.exceptions[how] = {**client.exceptions[how], **table[how]}


def _retry_after(client: Any) -> float | None:
    headers = getattr(client, "last_response_headers", None) or {}
    for key in ("Retry-After", "retry-after"):
        value = headers.get(key) if hasattr(headers, "get") else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


def _id_key(value: object) -> tuple[int, str]:
    text = str(value or "")
    return (int(text), "") if text.isdigit() else (0, text)


def _market_info(symbol: str, market: Mapping[str, Any], size: Decimal) -> MarketInfo | None:
    """The market's rules in base units (ccxt's amounts are in contracts of ``size``)."""
    precision = market.get("precision") or {}
    limits = (market.get("limits") or {}).get("amount") or {}
    price_step, qty_step = _step(precision.get("price")), _step(precision.get("amount"))
    if price_step is None or qty_step is None:
        return None
    qty_step *= size
    min_qty = _d(limits.get("min")) * size if limits.get("min") is not None else qty_step
    return MarketInfo(
        symbol, price_step, qty_step, max(min_qty, qty_step), str(market.get("quote") or "USDT")
    )


def _step(value: object) -> Decimal | None:
    """A precision as a step: ccxt gives a tick size (TICK_SIZE mode) or a number
    of decimals (DECIMAL_PLACES mode, a whole number >= 1)."""
    if value is None:
        return None
    step = _d(value)
    if step <= 0:
        return None
    if step >= 1 and step == step.to_integral_value() and step != 1:
        return Decimal(1).scaleb(-int(step))
    return step


def _market_data(exchange: str, symbol: str, t: Mapping[str, Any]) -> MarketData | None:
    bid, ask = _d(t.get("bid")), _d(t.get("ask"))
    last = _d(t.get("last")) or (bid + ask) / 2
    if bid <= 0 or ask <= 0 or bid > ask or last <= 0:
        return None
    stamp = t.get("timestamp")
    when = datetime.fromtimestamp(int(stamp) / 1000, UTC) if stamp else datetime.now(UTC)
    volume = _d(t.get("baseVolume"))
    return MarketData(
        symbol=symbol,
        exchange=exchange,
        bid=bid,
        ask=ask,
        last=last,
        volume=max(volume, _ZERO),
        timestamp=when,
    )


def _order_of(raw: Mapping[str, Any], symbol: str, coid: str, size: Decimal) -> Order:
    """Rebuild bot4's Order from the venue's record (an order this object did not place)."""
    kind = {
        "market": OrderType.MARKET,
        "limit": OrderType.LIMIT,
        "limit_maker": OrderType.LIMIT,
        "stop_loss": OrderType.STOP_LOSS,
        "stop": OrderType.STOP_LOSS,
        "stop_market": OrderType.STOP_LOSS,
        "take_profit": OrderType.TAKE_PROFIT,
        "take_profit_market": OrderType.TAKE_PROFIT,
    }.get(str(raw.get("type") or "").lower(), OrderType.LIMIT)
    # ccxt reads Binance's STOP_MARKET as "market": the kind is in the venue's fields.
    kind = trigger_kind(raw) or kind
    trigger = raw.get("triggerPrice") or raw.get("stopPrice")
    if kind in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT):
        price: Decimal | None = _d(trigger) or None
    elif kind is OrderType.LIMIT:
        price = _d(raw.get("price")) or None
    else:
        price = None
    if kind is not OrderType.MARKET and price is None:
        kind, price = OrderType.MARKET, None
    return Order(
        client_order_id=coid,
        symbol=symbol,
        side=Side(str(raw.get("side") or "buy").lower()),
        type=kind,
        qty=_d(raw.get("amount")) * size or Decimal(1),
        reduce_only=bool(raw.get("reduceOnly")),
        price=price,
        strategy="venue",
    )
