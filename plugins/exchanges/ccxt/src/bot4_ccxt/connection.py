"""One venue reached through ccxt's client: the base of the exchange object.

:class:`CcxtConnection` holds what every call to the venue needs: ccxt's
synchronous client (made on first use, :mod:`bot4_ccxt.client`), the worker
threads that run it (at most ``threads`` calls at a time), the
:class:`~bot4_ccxt.pacing.Pacer`, the venue's markets under bot4's and ccxt's
names, and what the exchange object claims (:mod:`bot4_ccxt.capabilities`).
``_once`` is one request, its error mapped (:mod:`bot4_ccxt.errors`);
``_call`` is a read (or an idempotent write) retried with backoff, after a
clock resync when the venue refused the request's timestamp. The account's
reads (:class:`~bot4_ccxt.account.CcxtAccount`) and the exchange's writes
(:class:`~bot4_ccxt.exchange.CcxtExchange`) build on it; the design is in
:mod:`bot4_ccxt.exchange`'s docstring.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeVar

import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here
import trio

from bot4.contracts import Capability, Exchange, MarketInfo
from bot4.errors import (
    ExchangeError,
    ExchangeFailed,
    ExchangeUnavailable,
    InvalidOrder,
    RateLimited,
)
from bot4.exchange_metrics import outcome_of
from bot4.secrets import redact
from bot4_ccxt.capabilities import _TRIGGERS, _client_caps, _market_caps
from bot4_ccxt.client import new_client
from bot4_ccxt.conversions import _market_info
from bot4_ccxt.errors import ClockSkew, map_error
from bot4_ccxt.isolate import in_own_decimal_context
from bot4_ccxt.pacing import Pacer, _retry_after
from bot4_ccxt.perps import bot4_symbol, contract_size
from bot4_ccxt.settings import CcxtSettings

__all__ = ["CcxtConnection"]

log = logging.getLogger("bot4_ccxt")
T = TypeVar("T")


class CcxtConnection(Exchange):
    """Requests to one venue through ccxt (see the module docstring); the
    exchange object's base, never made on its own."""

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
        self._sizes: dict[str, Decimal] = {}  # symbol -> base units per ccxt amount unit
        self._closed = False
        self.requests = 0  # calls that reached the venue (attempts, retries included)

    def _base_caps(self) -> frozenset[Capability]:
        caps = _client_caps(self.settings.exchange)
        if self.profile is not None and self.settings.market_type not in self.profile.triggers:
            caps -= {cap for cap, _, _ in _TRIGGERS}
        return caps | {Capability.MARGIN} if self._swap else caps

    # --- plumbing ------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for value in (self.settings.api_key, self.settings.secret, self.settings.password):
            if value:
                text = text.replace(value, "***")
        return redact(text)

    def _new_client(self) -> Any:
        return new_client(self.settings, self._scrub)

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
