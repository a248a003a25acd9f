"""The exchange's ``stream()``: the venue polled, as a plain async iterator.

:class:`_PollStream` polls tickers, the account's trades and its open orders
every ``poll_interval`` seconds through the account's reads
(:class:`~bot4_ccxt.account.CcxtAccount`) and yields a MarketData when a
quote changed, each new Fill, and each changed OrderState: fills before the
order update they caused, then the quotes (**Streaming is polling** in
:mod:`bot4_ccxt.exchange`'s docstring). The states the exchange's writes
return wait in the account's ``_outbox`` until the next poll emits them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import trio

from bot4.contracts import ExchangeEvent
from bot4.errors import ConfigError, ExchangeFailed
from bot4.model import Fill, MarketData, OrderState, OrderStatus
from bot4_ccxt.account import CcxtAccount
from bot4_ccxt.conversions import _ZERO, _market_data

log = logging.getLogger("bot4_ccxt")


class _PollStream(AsyncIterator[ExchangeEvent]):
    """Polling as a plain async iterator: a consumer may stop at any point."""

    def __init__(self, exchange: CcxtAccount, symbols: tuple[str, ...]) -> None:
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
