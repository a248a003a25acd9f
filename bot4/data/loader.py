"""Streaming market-data loaders: files in, :class:`bot4.model.MarketData` out.

``iter_ticks(source)`` reads one file, a directory of files or a list of
files, each in time order, and yields ticks merged across files by timestamp
(ties keep file order), holding one row per file in memory.

Formats (``format="auto"`` sniffs the first line; ``.gz`` files are gunzipped):

``ticks``
    CSV with a header naming at least ``timestamp,bid,ask,last,volume`` and,
    unless the symbol comes from the ``symbol`` option or the file name,
    ``symbol``. ``volume`` is the size available at the top of the book.
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
"""

from __future__ import annotations

import csv
import gzip
import heapq
import operator
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import chain, islice
from pathlib import Path
from typing import IO, Protocol

import attrs

from bot4.data.columns import BATCH_ROWS, FileState, TickBatch, build_batch
from bot4.errors import ConfigError, ModelError
from bot4.model import MarketData

__all__ = ["FORMATS", "DataError", "iter_batches", "iter_ticks", "symbol_from_filename"]

FORMATS = ("auto", "ticks", "ohlcv", "binance")
StrPath = str | os.PathLike[str]

_TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "open_time")
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "DAI", "BTC", "ETH", "BNB")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,2}$")
_ONE_MINUTE = timedelta(minutes=1)


class _Rows(Protocol):
    """What csv.reader returns: rows, and the physical line of the last one."""

    @property
    def line_num(self) -> int: ...
    def __iter__(self) -> Iterator[list[str]]: ...
    def __next__(self) -> list[str]: ...


class DataError(ConfigError):
    """A data file could not be read. ``str()`` reads ``file:line: column 'x': what``."""

    def __init__(self, path: str, line: int | None, column: str | None, message: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        col = f"column {column!r}: " if column else ""
        super().__init__(f"{where}: {col}{message}")


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
                yield from _tick_batches(name, reader, header, sym, exchange, columnar)
            else:
                rows = _candle_rows(name, reader, first, header, headerless, fmt)
                yield from _chunks(name, _candle_ticks(name, rows, sym, exchange, spread))
        except (csv.Error, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(name, reader.line_num, None, f"unreadable: {exc}") from None


def _looks_numeric(cell: str) -> bool:
    text = cell.strip()
    return bool(text) and text.replace(".", "", 1).isdigit()


def _column(name: str, header: list[str], wanted: Sequence[str], line: int) -> int:
    for w in wanted:
        if w in header:
            return header.index(w)
    raise DataError(name, line, None, f"missing column {wanted[0]!r} (header: {','.join(header)})")


def _number(name: str, line: int, column: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise DataError(name, line, column, f"{text!r} is not a number") from None
    if not value.is_finite():
        raise DataError(name, line, column, f"{text!r} is not a finite number")
    return value


def _time(name: str, line: int, column: str, text: str) -> datetime:
    raw = text.strip()
    if (
        raw
        and (raw[0].isdigit() or raw[0] == "-")
        and raw.replace(".", "", 1).lstrip("-").isdigit()
    ):
        value = Decimal(raw)
        magnitude = abs(value)
        if magnitude < Decimal("1e11"):
            micros = value * 1_000_000
        elif magnitude < Decimal("1e14"):
            micros = value * 1000
        else:
            micros = value
        try:
            return _EPOCH + timedelta(microseconds=int(micros))
        except OverflowError:
            raise DataError(name, line, column, f"{text!r} is out of range") from None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise DataError(
            name, line, column, f"{text!r} is not an ISO-8601 time or an epoch number"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_fromisoformat = datetime.fromisoformat


def _model_error(name: str, line: int, exc: ModelError, cells: dict[str, str]) -> DataError:
    column = exc.field
    shown = cells.get(column, str(exc.value))
    return DataError(name, line, column, f"{shown!r}: {exc.why}")


@attrs.frozen(slots=True)
class _Layout:
    """Where a tick file's columns are, and what its errors call them."""

    ts: int
    bid: int
    ask: int
    last: int
    vol: int
    sym: int | None
    width: int
    names: list[str]
    default_symbol: str


def _layout(name: str, header: list[str], symbol: str | None) -> _Layout:
    first_line = 1
    i_ts = _column(name, header, _TIME_NAMES, first_line)
    i_bid = _column(name, header, ("bid",), first_line)
    i_ask = _column(name, header, ("ask",), first_line)
    i_last = _column(name, header, ("last", "price"), first_line)
    i_vol = _column(name, header, ("volume", "size", "qty"), first_line)
    i_sym = header.index("symbol") if "symbol" in header else None
    if i_sym is None and symbol is None:
        raise DataError(
            name,
            first_line,
            None,
            "no 'symbol' column, no symbol option and the file name does not tell the symbol",
        )
    # default_symbol is unused when the file has a symbol column
    return _Layout(i_ts, i_bid, i_ask, i_last, i_vol, i_sym, len(header), header, symbol or "")


def _row_batches(reader: _Rows) -> Iterator[tuple[list[list[str]], list[int]]]:
    """Non-blank rows in batches of at most BATCH_ROWS, with their file lines.
    A read error comes after the rows before it (errors are raised where they
    are, not a batch early)."""
    while True:
        start = reader.line_num
        rows: list[list[str]] = []
        failed: BaseException | None = None
        try:
            # islice pulls the rows in C and extend keeps those read before
            # an error; the lines are worked out after.
            rows.extend(islice(reader, BATCH_ROWS))
        except (csv.Error, UnicodeDecodeError, EOFError, OSError) as exc:
            failed = exc
        if not rows and failed is None:
            return
        end = reader.line_num
        if failed is None and end - start == len(rows):
            lines = list(range(start + 1, end + 1))  # one physical line per row
        else:
            lines = _lines_of(rows, start)
        if not all(rows):  # blank lines: csv gives [] for them
            lines = [line for row, line in zip(rows, lines, strict=True) if row]
            rows = [row for row in rows if row]
        if rows:
            yield rows, lines
        if failed is not None:
            raise failed


def _lines_of(rows: list[list[str]], start: int) -> list[int]:
    """The physical line each row ends on, when some row spans several lines
    (a quoted cell with line breaks; lines split as universal newlines)."""
    out: list[int] = []
    line = start
    for row in rows:
        breaks = 0
        for cell in row:
            breaks += cell.count("\n") + cell.count("\r") - cell.count("\r\n")
        line += 1 + breaks
        out.append(line)
    return out


def _tick_batches(
    name: str,
    reader: _Rows,
    header: list[str],
    symbol: str | None,
    exchange: str,
    columnar: bool,
) -> Iterator[TickBatch]:
    layout = _layout(name, header, symbol)
    state = FileState()
    time_name = layout.names[layout.ts]

    def parse_time(cell: str) -> datetime:
        # The common ISO form in one C call: fromisoformat gives the "Z"
        # zone as UTC, as _time (strict: anything odd falls through to it).
        if cell[-1:] == "Z":
            try:
                return _fromisoformat(cell)
            except ValueError:
                pass
        return _time(name, 0, time_name, cell)

    width = layout.width
    for rows, lines in _row_batches(reader):
        if columnar and len(rows[0]) == width and len(set(map(len, rows))) == 1:
            columns = list(zip(*rows, strict=True))
            batch = build_batch(
                name,
                lines,
                [columns[i] for i in (layout.ts, layout.bid, layout.ask, layout.last, layout.vol)],
                columns[layout.sym] if layout.sym is not None else None,
                layout.default_symbol,
                exchange,
                state,
                parse_time,
            )
            if batch is not None:
                yield batch
                continue
        # Row by row, through the validating constructor: the reference, and
        # the one path that names the bad cell. The ticks before an error
        # still go out first.
        ticks: list[MarketData] = []
        try:
            ticks.extend(
                _checked_ticks(name, zip(lines, rows, strict=True), layout, exchange, state)
            )
        except DataError:
            if ticks:
                yield TickBatch.of_ticks(name, lines[0], ticks)
            raise
        yield TickBatch.of_ticks(name, lines[0], ticks)


def _checked_ticks(
    name: str,
    rows: Iterable[tuple[int, list[str]]],
    layout: _Layout,
    exchange: str,
    state: FileState,
) -> Iterator[MarketData]:
    i_ts, i_bid, i_ask, i_last, i_vol, i_sym = (
        layout.ts,
        layout.bid,
        layout.ask,
        layout.last,
        layout.vol,
        layout.sym,
    )
    width = layout.width
    names = layout.names
    default_symbol = layout.default_symbol
    prev = state.prev
    prev_text = ""
    moment: datetime | None = None
    for line, row in rows:
        if len(row) != width:
            raise DataError(name, line, None, f"expected {width} columns, found {len(row)}")
        ts_text = row[i_ts]
        # Ticks of several symbols often share a timestamp: parse it once.
        if ts_text != prev_text or moment is None:
            moment = _time(name, line, names[i_ts], ts_text)
            prev_text = ts_text
        if prev is not None and moment < prev:
            raise DataError(
                name,
                line,
                names[i_ts],
                f"{ts_text!r} is earlier than the previous row ({prev.isoformat()})",
            )
        prev = moment
        bid = _number(name, line, "bid", row[i_bid])
        ask = _number(name, line, "ask", row[i_ask])
        last = _number(name, line, names[i_last], row[i_last])
        vol = _number(name, line, names[i_vol], row[i_vol])
        sym = row[i_sym].strip() if i_sym is not None else default_symbol
        try:
            tick = MarketData(
                symbol=sym,
                exchange=exchange,
                bid=bid,
                ask=ask,
                last=last,
                volume=vol,
                timestamp=moment,
            )
        except ModelError as exc:
            cells = {
                "symbol": sym or "",
                "bid": row[i_bid],
                "ask": row[i_ask],
                "last": row[i_last],
                "volume": row[i_vol],
            }
            err = _model_error(name, line, exc, cells)
            if exc.field in ("last", "volume"):
                err = DataError(
                    name, line, names[i_last if exc.field == "last" else i_vol], err.message
                )
            raise err from None
        # Kept for the next batch before the tick goes out (the caller may
        # stop reading at any tick).
        state.prev = moment
        state.prev_ns = tick.ts_ns
        yield tick


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
            "open_time": _column(name, header, _TIME_NAMES, 1),
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
