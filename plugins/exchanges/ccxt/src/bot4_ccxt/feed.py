"""The ``ccxt`` feed: a venue's public tickers, polled, as bot4 market data.

``bot4 run --exchange paper --feed ccxt:binance --symbols BTC-USDT,ETH-USDT``
trades on it: orders are filled by the paper engine, the venue is only read,
so no API key is needed. Every ``interval`` seconds (``--feed-interval``,
default 1) the feed asks the venue for the symbols' tickers (best bid, best
ask, last price: one ``fetch_ticker`` per symbol, or for more than ten one
``fetch_tickers`` call where the venue has it; ccxt's rate limiter keeps the
polls within the venue's request weights) and yields a tick for each quote that changed
(a new bid, ask, last or timestamp); a quote asked again and unchanged is
not a tick. A quote older than the symbol's last tick is dropped.

Polling, not websockets: ccxt's websocket streams (ccxt.pro) are not used
even where installed, so the feed behaves the same on every venue ccxt
knows; the interval bounds how fresh a quote can be.

Failures: a timeout, a 5xx, a 429 (its ``Retry-After`` is waited out) or any
other error of one poll is logged once per streak (and once when it ends)
and the next poll tries again: a venue that goes quiet makes the feed stale,
which halts new entries (:mod:`bot4.feeds_watch`), and its return resumes
them. Only :meth:`CcxtFeed.connect` fails hard: an unknown venue or symbol
is a ConfigError, a venue that cannot be reached an ExchangeUnavailable.

Config (the factory's mapping; ``--feed-url`` sets ``api_url``)::

    source: binance        the ccxt exchange id (required: ``ccxt:<id>``)
    symbols: [BTC-USDT]    bot4 symbols (BASE-QUOTE, BASE-QUOTE-PERP)
    interval: 1.0          seconds between polls
    api_url: http://127.0.0.1:8765   every API of the client at this host
                           (a local fake venue, a proxy)
    timeout: 10            seconds per request
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import trio

from bot4.errors import ConfigError, ExchangeUnavailable
from bot4.feeds import DEFAULT_INTERVAL, Feed, parse_symbols
from bot4.model import MarketData
from bot4_ccxt.isolate import in_own_decimal_context

__all__ = ["CONFIG_KEYS", "CcxtFeed"]

CONFIG_KEYS = frozenset({"source", "symbols", "interval", "api_url", "timeout"})

log = logging.getLogger("bot4_ccxt.feed")
# Up to this many symbols, one fetch_ticker each: venues weigh an all-symbols
# ticker call heavily (Binance: 40 times one symbol's, so ccxt's rate limiter
# spaces them 0.8 s or more apart), more than a few single ones.
_TICKERS_FROM = 10
T = TypeVar("T")


class CcxtFeed(Feed):
    """Polls ``venue``'s tickers for ``symbols`` (see the module docstring)."""

    name = "ccxt"

    def __init__(
        self,
        venue: str,
        symbols: Sequence[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        api_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.venue = venue
        self.symbols = tuple(symbols)
        self.interval = interval
        self.api_url = api_url
        self.timeout = timeout
        self.client: Any = None
        self._to_ccxt: dict[str, str] = {}
        self._closed = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CcxtFeed:
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(
                f"ccxt feed: unknown config field(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(CONFIG_KEYS))}"
            )
        venue = config.get("source")
        if not isinstance(venue, str) or not venue.strip():
            raise ConfigError("ccxt feed: name the venue, e.g. --feed ccxt:binance")
        symbols = parse_symbols(config.get("symbols") or (), "ccxt feed: symbols")
        interval = _seconds(config, "interval", DEFAULT_INTERVAL)
        timeout = _seconds(config, "timeout", 10.0)
        api_url = config.get("api_url")
        if api_url is not None and not (
            isinstance(api_url, str) and api_url.startswith(("http://", "https://"))
        ):
            raise ConfigError(f"ccxt feed: api_url: {api_url!r} is not an http(s) URL")
        return cls(
            venue.strip().lower(), symbols, interval=interval, api_url=api_url, timeout=timeout
        )

    @property
    def spec(self) -> str:
        return f"ccxt:{self.venue}"

    async def connect(self) -> None:
        from bot4.data.catalog_download import ccxt_symbol, make_client

        self._closed = False
        if self.client is None:
            self.client = make_client(self.venue, api_url=self.api_url, timeout=self.timeout)
            # Only the market types asked for: a spot feed need not reach (or
            # wait for) the futures API.
            perps = any(s.endswith("-PERP") for s in self.symbols)
            self.client.options["fetchMarkets"] = {
                "types": ["spot", "linear"] if perps else ["spot"]
            }
        client = self.client
        try:
            markets = await _in_thread(client.load_markets)
        except Exception as exc:  # ccxt raises its own tree; any of it means "not reachable"
            raise ExchangeUnavailable(
                f"feed {self.spec}: cannot load the venue's markets: {type(exc).__name__}: {exc}"
            ) from None
        for symbol in self.symbols:
            unified = ccxt_symbol(symbol)
            if unified not in markets:
                raise ConfigError(f"feed {self.spec}: {symbol} is not a market of {self.venue}")
            self._to_ccxt[symbol] = unified

    async def close(self) -> None:
        self._closed = True

    def ticks(self) -> AsyncIterator[MarketData]:
        if not self._to_ccxt:
            raise ConfigError(f"feed {self.spec}: ticks() before connect()")
        return _PollTicks(self)

    def poll(self) -> list[MarketData]:
        """One poll, in the calling (worker) thread: the symbols' quotes now."""
        from bot4_ccxt.conversions import _market_data  # the exchange's own conversion

        client = self.client
        by_ccxt = {c: s for s, c in self._to_ccxt.items()}
        if len(by_ccxt) > _TICKERS_FROM and client.has.get("fetchTickers"):
            raw = client.fetch_tickers(list(by_ccxt))
            rows = [(by_ccxt[c], t) for c, t in raw.items() if c in by_ccxt]
        else:
            rows = [(s, client.fetch_ticker(c)) for c, s in by_ccxt.items()]
        out: list[MarketData] = []
        for symbol, ticker in rows:
            md = _market_data(self.venue, symbol, ticker)
            if md is not None:
                out.append(md)
        return out


class _PollTicks(AsyncIterator[MarketData]):
    """The polling loop as a plain async iterator: a consumer may stop at any
    point (no async generator left unfinished)."""

    def __init__(self, feed: CcxtFeed) -> None:
        self._feed = feed
        self._buffer: deque[MarketData] = deque()
        self._last: dict[str, tuple[Decimal, Decimal, Decimal, Any]] = {}
        self._due: float | None = None
        self._failing: str | None = None  # the streak's first error, logged once
        self._done = False

    def __aiter__(self) -> _PollTicks:
        return self

    async def aclose(self) -> None:
        self._done = True

    async def __anext__(self) -> MarketData:
        feed = self._feed
        while not self._buffer:
            if self._done or feed._closed:
                raise StopAsyncIteration
            now = trio.current_time()
            if self._due is not None and now < self._due:
                await trio.sleep(self._due - now)
            self._due = max(now, self._due or now) + feed.interval
            try:
                quotes = await _in_thread(feed.poll)
            except Exception as exc:  # any error of one poll: log, try again next time
                self._failed(exc)
                continue
            if self._failing is not None:
                log.warning("feed %s: polling works again (after %s)", feed.spec, self._failing)
                self._failing = None
            for md in quotes:
                key = (md.bid, md.ask, md.last, md.timestamp)
                last = self._last.get(md.symbol)
                if last == key or (last is not None and md.timestamp < last[3]):
                    continue
                self._last[md.symbol] = key
                self._buffer.append(md)
        return self._buffer.popleft()

    def _failed(self, exc: Exception) -> None:
        from bot4.secrets import redact
        from bot4_ccxt.pacing import _retry_after

        feed = self._feed
        wait = _retry_after(feed.client)
        if wait is not None and self._due is not None:
            self._due = max(self._due, trio.current_time() + wait)  # the venue's 429 pause
        what = redact(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        if self._failing is None:
            self._failing = what
            log.warning(
                "feed %s: poll failed, retrying every %gs: %s", feed.spec, feed.interval, what
            )


async def _in_thread(fn: Callable[[], T]) -> T:
    # ccxt's client is synchronous: a worker thread, abandoned on a cancel (a
    # stop cuts the wait at once; the request ends by its own timeout).
    # In a Decimal context of its own: ccxt changes the current one in place
    # (bot4_ccxt.isolate).
    return await trio.to_thread.run_sync(in_own_decimal_context, fn, abandon_on_cancel=True)


def _seconds(config: Mapping[str, Any], key: str, default: float) -> float:
    raw = config.get(key, default)
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"ccxt feed: {key}: {raw!r} is not a positive number of seconds")
    return value
