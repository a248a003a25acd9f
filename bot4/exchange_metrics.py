"""Every request the kernel makes to an exchange, counted and timed.

:class:`InstrumentedExchange` wraps the session's :class:`~bot4.contracts.Exchange`
(the metrics service puts it in ``kernel.exchange``) and reports each awaited
call to ``observe(venue, method, outcome, seconds)``. The outcome is read from
what the call raised, by bot4's exchange error classes:

==============  =====================================================
``ok``          the call returned
``refused``     :class:`~bot4.errors.ExchangeRefused` (the venue said no:
                funds, an invalid order, an unknown order id)
``rate_limited`` :class:`~bot4.errors.RateLimited` (HTTP 429 and kin)
``timeout``     :class:`~bot4.errors.ExchangeTimeout`
``unreachable`` :class:`~bot4.errors.ExchangeUnavailable` (connection
                refused, DNS, 5xx maintenance)
``error``       any other failure
==============  =====================================================

The wrapper changes nothing else: arguments, results and exceptions pass
through untouched, attributes it does not define (``name``, ``capabilities``,
a plugin's own) are the wrapped exchange's, and ``stream`` is not a request
(market data is watched by ``bot4_feed_age_seconds``). Retries happen inside
an exchange plugin, where the wrapper cannot see them: a plugin that retries
reports each retry through the ``retry_observer`` attribute the wrapper sets on
it (``retry_observer(method, outcome)``, a plain call, cheap and never raising)
when the plugin declares that attribute.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import trio

from bot4.contracts import Exchange, ExchangeEvent, MarketInfo
from bot4.errors import (
    ExchangeRefused,
    ExchangeTimeout,
    ExchangeUnavailable,
    RateLimited,
)
from bot4.model import Balance, Fill, Order, OrderState, Position

__all__ = ["OUTCOMES", "InstrumentedExchange", "outcome_of"]

T = TypeVar("T")
OUTCOMES = ("ok", "refused", "rate_limited", "timeout", "unreachable", "error")
METHODS = (
    "connect",
    "fetch_markets",
    "place_order",
    "cancel_order",
    "fetch_order",
    "fetch_open_orders",
    "fetch_fills",
    "fetch_balance",
    "fetch_positions",
)

Observe = Callable[[str, str, str, float], None]
ObserveRetry = Callable[[str, str, str], None]


def outcome_of(exc: BaseException | None) -> str:
    """The ``outcome`` label of a call that raised ``exc`` (None: it returned)."""
    if exc is None:
        return "ok"
    # RateLimited, ExchangeTimeout and ExchangeUnavailable are ExchangeFailed;
    # ExchangeRefused is the venue's answer, not a failure to get one.
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ExchangeTimeout | trio.TooSlowError | TimeoutError):
        return "timeout"
    if isinstance(exc, ExchangeUnavailable | ConnectionError):
        return "unreachable"
    if isinstance(exc, ExchangeRefused):
        return "refused"
    return "error"


class InstrumentedExchange(Exchange):
    """``inner`` with every request reported to ``observe``."""

    def __init__(
        self,
        inner: Exchange,
        observe: Observe,
        *,
        venue: str,
        observe_retry: ObserveRetry | None = None,
    ) -> None:
        self.inner = inner
        self.venue = venue
        # Class attributes of Exchange, so __getattr__ would never see them.
        self.name = inner.name
        self.capabilities = inner.capabilities
        self._observe = observe
        if observe_retry is not None and hasattr(inner, "retry_observer"):
            inner.retry_observer = lambda method, outcome: observe_retry(venue, method, outcome)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes this class does not define.
        return getattr(self.inner, name)

    async def _timed(self, method: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except BaseException as exc:
            # A cancellation is the session ending, not the venue's doing.
            if not isinstance(exc, trio.Cancelled):
                self._observe(self.venue, method, outcome_of(exc), time.perf_counter() - started)
            raise
        self._observe(self.venue, method, "ok", time.perf_counter() - started)
        return result

    async def connect(self) -> None:
        await self._timed("connect", self.inner.connect())

    async def close(self) -> None:
        await self.inner.close()

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        return await self._timed("fetch_markets", self.inner.fetch_markets())

    async def place_order(self, order: Order) -> OrderState:
        return await self._timed("place_order", self.inner.place_order(order))

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        return await self._timed("cancel_order", self.inner.cancel_order(symbol, client_order_id))

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        return await self._timed("fetch_order", self.inner.fetch_order(symbol, client_order_id))

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        return await self._timed("fetch_open_orders", self.inner.fetch_open_orders(symbol))

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        return await self._timed("fetch_fills", self.inner.fetch_fills(since))

    async def fetch_balance(self) -> Balance:
        return await self._timed("fetch_balance", self.inner.fetch_balance())

    async def fetch_positions(self) -> Sequence[Position]:
        return await self._timed("fetch_positions", self.inner.fetch_positions())

    # The margin account (Exchange defines these, so __getattr__ never sees them).

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        return await self._timed("set_leverage", self.inner.set_leverage(symbol, leverage))

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        await self._timed("set_margin_mode", self.inner.set_margin_mode(symbol, mode))

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        return await self._timed("add_margin", self.inner.add_margin(symbol, amount))

    def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        return self.inner.stream(symbols)
