"""Streaming market-data loaders: files in, :class:`bot4.model.MarketData` out.

``iter_ticks(source)`` reads one file, a directory of files or a list of
files, each in time order, and yields ticks merged across files by timestamp
(ties keep file order), holding one row per file in memory.

Formats (``format="auto"`` sniffs the first line; ``.gz`` files are gunzipped):

``ticks``
    CSV with a header naming at least ``timestamp,bid,ask,last,volume`` and,
    unless the symbol comes from the ``symbol`` option or the file name,
    ``symbol``. ``volume`` is the size available at the top of the book.
    Optional, for perpetuals: ``mark`` (or ``mark_price``), the venue's mark
    price, and ``funding_rate`` (or ``funding``), the current funding rate as
    a fraction per funding period (``0.0001`` is 0.01%); a blank cell is a
    tick without one. The paper venue marks positions at the mark (else the
    mid) and pays funding at the latest rate seen (else its configured one).
``ohlcv``
    CSV with a header ``timestamp,open,high,low,close,volume`` (``time``,
    ``open_time``, ``date`` or ``ts`` are accepted for the time column).
``binance``
    Binance kline CSV, no header (a header starting ``open_time`` is skipped):
    ``open_time, open, high, low, close, volume, close_time, ...``.

Candles become four ticks at ``open_time + k * interval / 4`` (k = 0..3)
priced open, low, high, close for a rising candle (close >= open) and open,
high, low, close for a falling one: the path that visits the nearer extreme
first is unknowable, this one at least ends where the candle ends and touches
both extremes, so stops inside the range fire. ``interval`` is
``close_time + 1 ms - open_time`` when there is a close time, otherwise the
gap to the next candle (the last candle reuses the previous gap; a file with
a single candle assumes one minute). Each tick has ``bid = ask = last`` =
the price unless ``spread_bps`` widens it symmetrically, and a quarter of the
candle's volume as its size.

Timestamps: ISO-8601 (``2024-03-01T00:00:00Z``; a time without offset is taken
as UTC; other offsets are converted) or an epoch number whose size tells the
unit: below 1e11 seconds, below 1e14 milliseconds, otherwise microseconds
(Binance spot files switched to microseconds in 2025).

Symbol: a ``symbol`` column wins, else the ``symbol`` option, else the file
name (``BTC-USDT.csv``, ``BTCUSDT-1m-2024-01.csv``, ``ETH_USDT.csv.gz``).

Every bad value stops the load with a :class:`DataError` naming file, line
and column, e.g. ``ticks.csv:17: column 'bid': 'abc' is not a number``.
Garbage (bid above ask, negative volume, NaN, non-positive prices, times
going backwards) is an error, never silently skipped.

Tick files are read in batches (:mod:`bot4.data.columns`): a batch of plain
numerals is checked at once with numpy on int64 fixed point and its ticks
built by the trusted constructor; any other batch (a bad cell, an exponent, a
value past int64) is read row by row by the validating constructor, which
names the bad cell. Both give the same ticks; ``columnar=False`` forces the
second, the reference (``tests/test_guarantees/test_columnar_feed.py``).
The ticks before an error are yielded before it, as a row-by-row read would.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import operator
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import chain
from pathlib import Path
from typing import IO

from bot4.data.cells import (
    TIME_NAMES,
    DataError,
    _column,
    _looks_numeric,
    _number,
    _Rows,
    _time,
)
from bot4.data.columns import BATCH_ROWS, TickBatch
from bot4.data.tickrows import tick_batches
from bot4.errors import ConfigError, ModelError
from bot4.model import MarketData

__all__ = ["FORMATS", "DataError", "iter_batches", "iter_ticks", "symbol_from_filename"]

FORMATS = ("auto", "ticks", "ohlcv", "binance")
StrPath = str | os.PathLike[str]

_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "DAI", "BTC", "ETH", "BNB")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,2}$")
_ONE_MINUTE = timedelta(minutes=1)


def iter_ticks(
    source: StrPath | Sequence[StrPath],
    *,
    format: str = "auto",
    symbol: str | None = None,
    exchange: str = "data",
    spread_bps: Decimal | int | str = 0,
    columnar: bool = True,
) -> Iterator[MarketData]:
    """Stream ticks from ``source`` (see the module docstring for formats).
    ``columnar=False`` reads tick files row by row through the validating
    constructor: the reference the columnar path is tested against."""
    spread = _spread(format, spread_bps)
    paths = _expand(source)
    streams = [_iter_file(p, format, symbol, exchange, spread, columnar) for p in paths]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=_ts_ns)


def iter_batches(
    source: StrPath | Sequence[StrPath],
    *,
    format: str = "auto",
    symbol: str | None = None,
    exchange: str = "data",
    spread_bps: Decimal | int | str = 0,
    columnar: bool = True,
) -> Iterator[TickBatch]:
    """The ticks of :func:`iter_ticks`, in the same order, as
    :class:`~bot4.data.columns.TickBatch` es: the file's own batches for one
    tick file; for several files (merged by time) or candles, batches of
    ``BATCH_ROWS`` ticks without fixed-point columns."""
    spread = _spread(format, spread_bps)
    paths = _expand(source)
    if len(paths) == 1:
        return _file_batches(paths[0], format, symbol, exchange, spread, columnar)
    return _chunks(
        "",
        iter_ticks(
            paths,
            format=format,
            symbol=symbol,
            exchange=exchange,
            spread_bps=spread,
            columnar=columnar,
        ),
    )


def _spread(format: str, spread_bps: Decimal | int | str) -> Decimal:
    if format not in FORMATS:
        raise ConfigError(f"data format {format!r} is not one of {', '.join(FORMATS)}")
    try:
        spread = Decimal(str(spread_bps))
    except InvalidOperation:
        raise ConfigError(f"spread_bps {spread_bps!r} is not a number") from None
    if not spread.is_finite() or spread < 0:
        raise ConfigError(f"spread_bps {spread_bps!r} must be zero or more")
    return spread


def _ts_ns(tick: MarketData) -> int:
    return tick.ts_ns


def _chunks(name: str, ticks: Iterator[MarketData]) -> Iterator[TickBatch]:
    """Ticks in batches of BATCH_ROWS (a batch of the ticks before an error
    goes out before the error)."""
    chunk: list[MarketData] = []
    try:
        for tick in ticks:
            chunk.append(tick)
            if len(chunk) == BATCH_ROWS:
                yield TickBatch.of_ticks(name, 0, chunk)
                chunk = []
    except DataError:
        if chunk:
            yield TickBatch.of_ticks(name, 0, chunk)
        raise
    if chunk:
        yield TickBatch.of_ticks(name, 0, chunk)


def _expand(source: StrPath | Sequence[StrPath]) -> list[Path]:
    items: Iterable[StrPath] = [source] if isinstance(source, (str, os.PathLike)) else source
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz"))
            )
            if not found:
                raise DataError(str(item), None, None, "directory holds no .csv or .csv.gz files")
            out.extend(found)
        elif path.is_file():
            out.append(path)
        else:
            raise DataError(str(item), None, None, "no such file or directory")
    if not out:
        raise ConfigError("no data files given")
    return out


def symbol_from_filename(path: StrPath) -> str | None:
    """``BTC-USDT.csv`` -> BTC-USDT; ``BTCUSDT-1m-2024-01.csv`` -> BTC-USDT;
    ``eth_usdt.csv.gz`` -> ETH-USDT; None when the name does not tell."""
    stem = Path(path).name.upper()
    for suffix in (".GZ", ".CSV", ".TXT"):
        stem = stem.removesuffix(suffix)
    parts = stem.split("-")
    if _SYMBOL.match(stem) and parts[1] in _QUOTES and all(p.isalpha() for p in parts[2:]):
        return stem  # already BASE-QUOTE or BASE-QUOTE-KIND
    tokens = [t for t in re.split(r"[-_. ]", stem) if t]
    if len(tokens) >= 2 and tokens[0].isalnum() and tokens[1] in _QUOTES:
        return f"{tokens[0]}-{tokens[1]}"
    if tokens:
        head = tokens[0]
        for quote in _QUOTES:
            if head.endswith(quote) and len(head) > len(quote) and head.isalnum():
                return f"{head[: -len(quote)]}-{quote}"
    return None


# --- per file ---------------------------------------------------------------------


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # closed by the caller's with


def _iter_file(
    path: Path, fmt: str, symbol: str | None, exchange: str, spread: Decimal, columnar: bool
) -> Iterator[MarketData]:
    # Flattened in C (a list iterator inside a chain): a tick costs a list
    # step, not a generator resume.
    return chain.from_iterable(
        map(_batch_ticks, _file_batches(path, fmt, symbol, exchange, spread, columnar))
    )


_batch_ticks = operator.attrgetter("ticks")


def _file_batches(
    path: Path, fmt: str, symbol: str | None, exchange: str, spread: Decimal, columnar: bool
) -> Iterator[TickBatch]:
    name = str(path)
    with _open(path) as handle:
        reader = csv.reader(handle)
        try:
            first = next(reader)
            while not first:
                first = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
            raise DataError(name, reader.line_num or 1, None, f"unreadable: {exc}") from None
        header = [cell.strip().lower() for cell in first]
        headerless = _looks_numeric(first[0]) if first else False
        if fmt == "auto":
            if headerless or (header[0] == "open_time" and "bid" not in header):
                fmt = "binance"
            elif "bid" in header:
                fmt = "ticks"
            elif "open" in header:
                fmt = "ohlcv"
            else:
                raise DataError(
                    name,
                    reader.line_num,
                    None,
                    "cannot tell the format: expected a header with bid/ask (ticks), "
                    "open/high/low/close (ohlcv), or Binance klines without a header",
                )
        sym = symbol or symbol_from_filename(path)
        try:
            if fmt == "ticks":
                if headerless:
                    raise DataError(name, reader.line_num, None, "tick files need a header line")
                yield from tick_batches(name, reader, header, sym, exchange, columnar)
            else:
                rows = _candle_rows(name, reader, first, header, headerless, fmt)
                yield from _chunks(name, _candle_ticks(name, rows, sym, exchange, spread))
        except (csv.Error, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(name, reader.line_num, None, f"unreadable: {exc}") from None


# --- candles ------------------------------------------------------------------------

_Candle = tuple[int, datetime, Decimal, Decimal, Decimal, Decimal, Decimal, timedelta | None]


def _candle_rows(
    name: str,
    reader: _Rows,
    first: list[str],
    header: list[str],
    headerless: bool,
    fmt: str,
) -> Iterator[_Candle]:
    """Parse and check candles: (line, open time, o, h, l, c, volume, interval)."""
    if fmt == "binance":
        cols = ["open_time", "open", "high", "low", "close", "volume", "close_time"]
        idx = dict(zip(cols, range(7), strict=True))
        min_width = 6
    else:
        if headerless:
            raise DataError(name, 1, None, "OHLCV files need a header line")
        idx = {
            "open_time": _column(name, header, TIME_NAMES, 1),
            "open": _column(name, header, ("open",), 1),
            "high": _column(name, header, ("high",), 1),
            "low": _column(name, header, ("low",), 1),
            "close": _column(name, header, ("close",), 1),
            "volume": _column(name, header, ("volume",), 1),
        }
        if "close_time" in header:
            idx["close_time"] = header.index("close_time")
        min_width = len(header)
    time_col = "open_time" if fmt == "binance" else header[idx["open_time"]]

    def rows() -> Iterator[tuple[int, list[str]]]:
        if headerless:
            yield 1, first
        for row in reader:
            if row:
                yield reader.line_num, row

    prev: datetime | None = None
    for line, row in rows():
        if len(row) < min_width:
            raise DataError(
                name, line, None, f"expected at least {min_width} columns, found {len(row)}"
            )
        opened = _time(name, line, time_col, row[idx["open_time"]])
        if prev is not None and opened <= prev:
            raise DataError(
                name,
                line,
                time_col,
                f"{row[idx['open_time']]!r} is not after the previous candle ({prev.isoformat()})",
            )
        prev = opened
        o = _number(name, line, "open", row[idx["open"]])
        h = _number(name, line, "high", row[idx["high"]])
        lo = _number(name, line, "low", row[idx["low"]])
        c = _number(name, line, "close", row[idx["close"]])
        v = _number(name, line, "volume", row[idx["volume"]])
        for col, val in (("open", o), ("high", h), ("low", lo), ("close", c)):
            if val <= 0:
                raise DataError(name, line, col, f"{row[idx[col]]!r} must be greater than zero")
        if v < 0:
            raise DataError(name, line, "volume", f"{row[idx['volume']]!r} must not be negative")
        if h < max(o, c, lo):
            raise DataError(name, line, "high", f"{row[idx['high']]!r} is below open, close or low")
        if lo > min(o, c):
            raise DataError(name, line, "low", f"{row[idx['low']]!r} is above open or close")
        interval: timedelta | None = None
        if "close_time" in idx and len(row) > idx["close_time"] and row[idx["close_time"]].strip():
            closed = _time(name, line, "close_time", row[idx["close_time"]])
            # Binance close times are the last millisecond of the candle.
            interval = closed - opened + timedelta(milliseconds=1)
            if interval <= timedelta(0):
                raise DataError(name, line, "close_time", "is before open_time")
        yield line, opened, o, h, lo, c, v, interval


def _candle_ticks(
    name: str,
    rows: Iterator[_Candle],
    symbol: str | None,
    exchange: str,
    spread_bps: Decimal,
) -> Iterator[MarketData]:
    if symbol is None:
        raise DataError(
            name,
            None,
            None,
            "candle files carry no symbol: pass symbol= or name the file like BTCUSDT-1m.csv",
        )
    half = spread_bps / Decimal(20000)
    pending: _Candle | None = None
    gap = _ONE_MINUTE
    for candle in rows:
        if pending is not None:
            gap = candle[1] - pending[1]
            yield from _four(name, pending, gap, symbol, exchange, half)
        pending = candle
    if pending is not None:
        yield from _four(name, pending, gap, symbol, exchange, half)


def _four(
    name: str,
    candle: _Candle,
    gap: timedelta,
    symbol: str,
    exchange: str,
    half: Decimal,
) -> Iterator[MarketData]:
    line, opened, o, h, lo, c, v, interval = candle
    step = (interval if interval is not None else gap) / 4
    path = (o, lo, h, c) if c >= o else (o, h, lo, c)
    size = v / 4
    for k, price in enumerate(path):
        try:
            yield MarketData(
                symbol=symbol,
                exchange=exchange,
                bid=price - price * half if half else price,
                ask=price + price * half if half else price,
                last=price,
                volume=size,
                timestamp=opened + step * k,
            )
        except ModelError as exc:
            raise DataError(name, line, exc.field, f"{exc.value!r}: {exc.why}") from None
