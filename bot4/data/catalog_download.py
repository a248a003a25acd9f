"""``bot4 data download``: history from a venue, through ccxt, into the catalog.

**What is fetched.** For each symbol, the candles of the timeframe in
``[since, until)`` (``until`` defaults to now), and with ``trades`` the
venue's public trades in the same window (Binance: aggregate trades). A
candle still open (its close after now) is never stored: it would be stored
unfinished and never fetched again.

**Resumable.** Before fetching, the series' stored open times are read from
the catalog's files (not the manifest, which a crash could leave behind): only
what is missing in the window is asked for, that is before the first stored
candle, after the last, and every gap between. A gap the venue really has
(a maintenance window) is asked for once per call and answered with nothing,
and reported at the end. Trades resume after the last stored trade and
before the first. Every page is written when it arrives, so an interrupted
download keeps what it got; duplicates (a page overlapping the stored rows)
are dropped by open time or trade id.

**Pagination.** Candles: ``fetch_ohlcv(since=cursor, limit=page)`` with
``until`` the end of the missing range, cursor moved past the last candle
received. Trades: windows of at most an hour (Binance refuses wider ones),
``limit`` 1000; a full page moves the cursor to its last trade's time (the
trades of that millisecond come again and are dropped as duplicates), a page
that is not full ends the window.

**Rate limits.** ccxt's own limiter spaces requests by the venue's
``rateLimit`` (``rate_limit_ms`` overrides it: ms per unit of a request's
cost, which ccxt takes from the venue's weights; Binance's klines cost 0.4). A 429 or an unreachable
venue (a network error, a 5xx, ccxt's ``OperationFailed``) is retried after
the ``Retry-After`` the venue sent, otherwise after an
exponential backoff (0.5 s doubling, at most ``max_retries`` times); then the
download stops with an :class:`bot4.errors.ExchangeUnavailable` (exit 1),
keeping what was written. A request the venue refuses (unknown symbol, bad
parameter) stops at once (ExchangeRefused).
"""

from __future__ import annotations

import decimal
import functools
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import attrs
import numpy as np
import pyarrow as pa

from bot4.data.catalog import SeriesInfo, SeriesKey, market_type_of, timeframe_ms
from bot4.errors import ConfigError, ExchangeRefused, ExchangeUnavailable

__all__ = [
    "DownloadResult",
    "SeriesResult",
    "ccxt_symbol",
    "download",
    "make_client",
    "missing_ranges",
]

HOUR_MS = 3_600_000
TRADE_PAGE = 1000
OHLCV_PAGE = 1000

# Spot and USDⓈ-M perpetual markets, nothing else (no margin pairs, no
# currencies: those need keys and are not market data).
CLIENT_OPTIONS: dict[str, Any] = {
    "defaultType": "spot",
    "fetchMarkets": {"types": ["spot", "linear"]},
    "fetchCurrencies": False,
    "fetchMargins": False,
    "adjustForTimeDifference": False,
}


class Store(Protocol):
    """Where a download goes: the Parquet :class:`~bot4.data.catalog.Catalog` or
    :class:`~bot4.data.catalog_pg.PgStore`."""

    def times(self, key: SeriesKey) -> np.ndarray[Any, np.dtype[np.int64]]: ...
    def write(self, key: SeriesKey, table: pa.Table, *, update_manifest: bool = True) -> int: ...
    def refresh(self, keys: Sequence[SeriesKey]) -> list[SeriesInfo]: ...
    def info(self, key: SeriesKey) -> SeriesInfo | None: ...


def ccxt_symbol(symbol: str) -> str:
    """bot4's name -> ccxt's unified symbol: ``BTC-USDT`` -> ``BTC/USDT``,
    ``ETH-USDT-PERP`` -> ``ETH/USDT:USDT`` (a linear perpetual settled in the quote)."""
    parts = symbol.split("-")
    if len(parts) == 3 and parts[2] == "PERP":
        return f"{parts[0]}/{parts[1]}:{parts[1]}"
    if len(parts) == 2:
        return f"{parts[0]}/{parts[1]}"
    raise ConfigError(f"symbol {symbol!r}: expected BASE-QUOTE or BASE-QUOTE-PERP")


def make_client(
    exchange: str,
    *,
    api_url: str | None = None,
    sandbox: bool = False,
    rate_limit_ms: float | None = None,
    timeout: float = 10.0,
) -> Any:
    """ccxt's synchronous client for ``exchange``, public endpoints only, its
    rate limiter on; ``api_url`` points every API of it at another host (a
    local fake venue, a proxy)."""
    try:
        import ccxt  # type: ignore[import-untyped]  # no type information
    except ImportError:
        raise ConfigError(
            "bot4 data download needs ccxt: pip install bot4-plugin-ccxt (or ccxt)"
        ) from None
    if exchange not in ccxt.exchanges:
        raise ConfigError(f"exchange {exchange!r}: ccxt has no such exchange (bot4 exchanges list)")
    params: dict[str, Any] = {
        "enableRateLimit": True,
        "timeout": int(timeout * 1000),
        "options": dict(CLIENT_OPTIONS),
    }
    if rate_limit_ms is not None:
        params["rateLimit"] = rate_limit_ms
    client = getattr(ccxt, exchange)(params)
    if sandbox:
        client.set_sandbox_mode(True)
    api = client.urls.get("api")
    if api_url and isinstance(api, dict):
        base = api_url.rstrip("/")
        for key, url in list(api.items()):
            if isinstance(url, str):
                api[key] = re.sub(r"^[a-z]+://[^/]+", base, url)
    return client


def missing_ranges(
    stored: np.ndarray[Any, np.dtype[np.int64]], start: int, end: int, step: int | None
) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` (ms) not covered by ``stored`` times:
    before the first, after the last, and (candles, ``step`` given) every gap."""
    inside = stored[(stored >= start) & (stored < end)]
    if len(inside) == 0:
        return [(start, end)] if end > start else []
    out: list[tuple[int, int]] = []
    first, last = int(inside[0]), int(inside[-1])
    if first > start:
        out.append((start, first))
    if step is not None:
        deltas = np.diff(inside)
        for i in np.nonzero(deltas > step)[0]:
            out.append((int(inside[i]) + step, int(inside[i + 1])))
    after = last + (step if step is not None else 1)
    if after < end:
        out.append((after, end))
    return out


@attrs.define
class SeriesResult:
    """What one series' download did."""

    key: SeriesKey
    new_rows: int = 0
    requests: int = 0
    retries: int = 0
    ranges: int = 0  # missing ranges asked for
    info: SeriesInfo | None = None  # the catalog's summary afterwards


@attrs.define
class DownloadResult:
    series: list[SeriesResult] = attrs.field(factory=list)


Progress = Callable[[SeriesKey, float, int], None]  # key, fraction done, new rows


class _Fetcher:
    """One client's calls with retries (module docstring, Rate limits)."""

    def __init__(self, client: Any, max_retries: int, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.max_retries = max_retries
        self.sleep = sleep

    def call(self, result: SeriesResult, what: str, fn: Callable[[], Any]) -> Any:
        import ccxt

        delay = 0.5
        attempt = 0
        while True:
            result.requests += 1
            try:
                # A Decimal context of its own: ccxt's precision helper changes
                # the current one in place (see bot4_ccxt.isolate).
                with decimal.localcontext():
                    return fn()
            # OperationFailed: NetworkError and the venue's "unknown error,
            # try again" (Binance -1000), as the ccxt exchange plugin retries.
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection, ccxt.OperationFailed) as exc:
                attempt += 1
                if attempt > self.max_retries:
                    raise ExchangeUnavailable(
                        f"{self.client.id}: {what}: gave up after {self.max_retries} retries: "
                        f"{_short(exc)}"
                    ) from None
                result.retries += 1
                wait = _retry_after(self.client)
                self.sleep(delay if wait is None else wait)
                delay = min(delay * 2, 30.0)
            except ccxt.BaseError as exc:
                raise ExchangeRefused(f"{self.client.id}: {what}: {_short(exc)}") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 300 else text[:300] + "..."


def _retry_after(client: Any) -> float | None:
    headers = getattr(client, "last_response_headers", None) or {}
    for name, value in dict(headers).items():
        if str(name).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None
    return None


def download(
    catalog: Store,
    client: Any,
    exchange: str,
    symbols: Sequence[str],
    timeframe: str,
    since: int,
    until: int | None = None,
    *,
    trades: bool = False,
    progress: Progress | None = None,
    max_retries: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], int] | None = None,
) -> DownloadResult:
    """Fetch what the catalog lacks (module docstring); returns per series
    what was done and the catalog's summary of it afterwards."""
    fetcher = _Fetcher(client, max_retries, sleep)
    # Whatever happens, the manifest says what the files hold afterwards.
    touched: list[SeriesKey] = []
    try:
        return _download(
            catalog,
            fetcher,
            exchange,
            symbols,
            timeframe,
            since,
            until,
            trades,
            progress,
            now,
            touched,
        )
    finally:
        if touched:
            catalog.refresh(touched)


def _download(
    catalog: Store,
    fetcher: _Fetcher,
    exchange: str,
    symbols: Sequence[str],
    timeframe: str,
    since: int,
    until: int | None,
    trades: bool,
    progress: Progress | None,
    now: Callable[[], int] | None,
    touched: list[SeriesKey],
) -> DownloadResult:
    client = fetcher.client
    step = timeframe_ms(timeframe)
    keys = [SeriesKey(exchange, market_type_of(s), s, timeframe) for s in symbols]
    result = DownloadResult()
    probe = SeriesResult(keys[0]) if keys else SeriesResult(SeriesKey.of(exchange, "A-B", "1m"))
    fetcher.call(probe, "load markets", client.load_markets)
    timeframes = getattr(client, "timeframes", None) or {}
    if timeframe not in timeframes:
        raise ConfigError(
            f"--timeframe {timeframe!r}: {exchange} serves {', '.join(timeframes) or 'none'}"
        )
    unified = {}
    for symbol in symbols:
        unified[symbol] = ccxt_symbol(symbol)
        if unified[symbol] not in client.markets:
            raise ConfigError(
                f"--symbols: {exchange} has no market {symbol} ({unified[symbol]} in ccxt); "
                f"bot4 markets list --exchange {exchange}"
            )
    clock = now or (lambda: int(time.time() * 1000))
    end = min(until, clock()) if until is not None else clock()
    for key in keys:
        res = SeriesResult(key, requests=probe.requests if key == keys[0] else 0)
        touched.append(key)
        _download_candles(catalog, fetcher, res, unified[key.symbol], since, end, step, progress)
        result.series.append(res)
        if trades:
            tkey = SeriesKey(exchange, key.market_type, key.symbol, "trades")
            tres = SeriesResult(tkey)
            touched.append(tkey)
            _download_trades(catalog, fetcher, tres, unified[key.symbol], since, end, progress)
            result.series.append(tres)
    return result


def _download_candles(
    catalog: Store,
    fetcher: _Fetcher,
    res: SeriesResult,
    market: str,
    since: int,
    end: int,
    step: int,
    progress: Progress | None,
) -> None:
    key = res.key
    # Only candles already closed at `end`: the open one would be stored unfinished.
    last_open = (end - step) // step * step
    window_end = last_open + step
    start = -(-since // step) * step
    ranges = missing_ranges(catalog.times(key), start, window_end, step)
    res.ranges = len(ranges)
    total = sum(hi - lo for lo, hi in ranges) or 1
    covered = 0
    for lo, hi in ranges:
        cursor = lo
        while cursor < hi:
            rows = fetcher.call(
                res,
                f"fetch_ohlcv {key.symbol} {key.timeframe}",
                functools.partial(
                    fetcher.client.fetch_ohlcv,
                    market,
                    key.timeframe,
                    since=cursor,
                    limit=OHLCV_PAGE,
                    params={"until": hi - 1},
                ),
            )
            page = [r for r in rows if lo <= int(r[0]) < hi and int(r[0]) <= last_open]
            if page:
                res.new_rows += catalog.write(key, _ohlcv_table(page), update_manifest=False)
            newest = max((int(r[0]) for r in rows), default=None)
            if newest is None or newest + step <= cursor:
                break  # nothing (more) in the range: the venue has a gap there
            cursor = newest + step
            if progress is not None:
                progress(key, min(1.0, (covered + cursor - lo) / total), res.new_rows)
        covered += hi - lo
    if progress is not None:
        progress(key, 1.0, res.new_rows)
    res.info = _summary(catalog, key)


def _summary(catalog: Store, key: SeriesKey) -> SeriesInfo | None:
    catalog.refresh([key])
    return catalog.info(key)


def _ohlcv_table(rows: Sequence[Sequence[Any]]) -> pa.Table:
    cols = list(zip(*rows, strict=False))
    return pa.table(
        {
            "time": pa.array([int(t) for t in cols[0]], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "open": pa.array([float(x) for x in cols[1]], pa.float64()),
            "high": pa.array([float(x) for x in cols[2]], pa.float64()),
            "low": pa.array([float(x) for x in cols[3]], pa.float64()),
            "close": pa.array([float(x) for x in cols[4]], pa.float64()),
            "volume": pa.array([float(x or 0) for x in cols[5]], pa.float64()),
        }
    )


def _download_trades(
    catalog: Store,
    fetcher: _Fetcher,
    res: SeriesResult,
    market: str,
    since: int,
    end: int,
    progress: Progress | None,
) -> None:
    key = res.key
    ranges = missing_ranges(catalog.times(key), since, end, None)
    res.ranges = len(ranges)
    total = sum(hi - lo for lo, hi in ranges) or 1
    covered = 0
    for lo, hi in ranges:
        for window_end, trades in _trade_pages(fetcher, res, market, lo, hi):
            page = [t for t in trades if lo <= int(t["timestamp"]) < hi]
            if page:
                res.new_rows += catalog.write(key, _trades_table(page), update_manifest=False)
            if progress is not None:
                progress(key, min(1.0, (covered + window_end - lo) / total), res.new_rows)
        covered += hi - lo
    if progress is not None:
        progress(key, 1.0, res.new_rows)
    res.info = _summary(catalog, key)


def _trade_pages(
    fetcher: _Fetcher, res: SeriesResult, market: str, lo: int, hi: int
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    cursor = lo
    while cursor < hi:
        window_end = min(cursor + HOUR_MS, hi) - 1
        trades = fetcher.call(
            res,
            f"fetch_trades {res.key.symbol}",
            functools.partial(
                fetcher.client.fetch_trades,
                market,
                since=cursor,
                limit=TRADE_PAGE,
                params={"until": window_end},
            ),
        )
        yield window_end, trades
        if len(trades) >= TRADE_PAGE:
            newest = max(int(t["timestamp"]) for t in trades)
            # The rest of that millisecond comes again; its duplicates are dropped.
            cursor = newest if newest > cursor else cursor + 1
        else:
            cursor = window_end + 1


def _trades_table(trades: Sequence[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "time": pa.array([int(t["timestamp"]) for t in trades], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "id": pa.array([int(t["id"]) for t in trades], pa.int64()),
            "price": pa.array([float(t["price"]) for t in trades], pa.float64()),
            "amount": pa.array([float(t["amount"]) for t in trades], pa.float64()),
            "side": pa.array([str(t.get("side") or "buy") for t in trades], pa.string()),
        }
    )


def terminal_progress(stream: Any = sys.stderr) -> Progress:
    """A progress line per series, redrawn in place on a terminal; on
    anything else one line when a series is done."""
    tty = bool(getattr(stream, "isatty", lambda: False)())
    last: dict[SeriesKey, float] = {}

    def show(key: SeriesKey, fraction: float, rows: int) -> None:
        unit = "trades" if key.trades else "candles"
        if tty:
            bar = "#" * int(fraction * 30)
            stream.write(f"\r{key!s:<32} [{bar:<30}] {fraction:6.1%}  {rows:,} new {unit}")
            if fraction >= 1.0:
                stream.write("\n")
            stream.flush()
        elif fraction >= 1.0 and last.get(key) != 1.0:
            stream.write(f"{key}: done, {rows:,} new {unit}\n")
            stream.flush()
        last[key] = fraction

    return show
