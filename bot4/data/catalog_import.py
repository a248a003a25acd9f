"""``bot4 data import FILE``: a user's CSV of candles or trades into the catalog.

Formats (the first line tells; ``.gz`` files are gunzipped):

* candles with a header naming ``open``, ``high``, ``low``, ``close``,
  ``volume`` and a time column (``timestamp``, ``time``, ``open_time``,
  ``date``, ``datetime`` or ``ts``);
* Binance kline dumps, no header: ``open_time, open, high, low, close, volume, ...``;
* trades with a header naming a time column, ``price`` and ``amount`` (or
  ``qty``, ``quantity``, ``size``), optionally ``id`` and ``side``
  (buy/sell); without ``id`` a trade's id is its line number.

Times are ISO-8601 (no offset = UTC) or epoch numbers whose size tells the
unit (below 1e11 seconds, below 1e14 milliseconds, else microseconds), as
:mod:`bot4.data.loader` reads them; they are stored in milliseconds.

**All or nothing.** The file is checked in full before a row is stored:
the first bad value stops the import with a :class:`~bot4.data.loader.DataError`
``file:line: column 'x': what`` (exit 2) and the catalog is left as it was.
Refused: a value that is not a number, not finite, or has more digits than a
float64 keeps (16 or more significant digits: it would be rounded), a price
not above zero, a negative volume, a high below open/close/low or a low above
open/close, a candle time not after the previous one (a trade time before the
previous one), a time with sub-millisecond digits. Then the rows are stored in
chunks (memory flat in the size of the file), merged with what the series holds.

The timeframe is ``--timeframe`` or, for candles, the most common distance
between open times in the first 1000 rows; the symbol is ``--symbol`` or the
file's name (``BTCUSDT-1m-2024-03.csv``).
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

import attrs
import pyarrow as pa

from bot4.data.catalog import Catalog, SeriesKey, exact_float, market_type_of
from bot4.data.loader import DataError, symbol_from_filename

__all__ = ["ImportResult", "import_csv"]

CHUNK_ROWS = 100_000
_TIME_NAMES = ("timestamp", "time", "open_time", "datetime", "date", "ts")
_AMOUNT_NAMES = ("amount", "qty", "quantity", "size", "volume")
_INTERVAL_NAMES = {
    1000: "1s",
    60_000: "1m",
    180_000: "3m",
    300_000: "5m",
    900_000: "15m",
    1_800_000: "30m",
    3_600_000: "1h",
    7_200_000: "2h",
    14_400_000: "4h",
    21_600_000: "6h",
    28_800_000: "8h",
    43_200_000: "12h",
    86_400_000: "1d",
    604_800_000: "1w",
}


@attrs.frozen
class ImportResult:
    key: SeriesKey
    rows: int  # rows in the file
    new_rows: int  # rows the series did not hold before


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # closed by the caller's with


@attrs.frozen
class _Layout:
    kind: str  # "candles" or "trades"
    headerless: bool
    columns: dict[str, int]
    names: dict[str, str]  # our name -> the file's (for messages)
    width: int


def _layout(name: str, first: list[str]) -> _Layout:
    header = [c.strip().lower() for c in first]
    cell = first[0].strip() if first else ""
    if cell and cell.replace(".", "", 1).isdigit():
        cols = {"time": 0, "open": 1, "high": 2, "low": 3, "close": 4, "volume": 5}
        return _Layout("candles", True, cols, {k: k for k in cols}, 6)

    def find(wanted: tuple[str, ...]) -> int | None:
        return next((header.index(w) for w in wanted if w in header), None)

    i_time = find(_TIME_NAMES)
    if i_time is None:
        raise DataError(name, 1, None, f"no time column (one of {', '.join(_TIME_NAMES)})")
    if "bid" in header:
        raise DataError(
            name, 1, None, "a tick file (bid/ask): the catalog stores candles and trades"
        )
    if "open" in header:
        cols = {"time": i_time}
        for col in ("open", "high", "low", "close", "volume"):
            at = find((col,))
            if at is None:
                raise DataError(name, 1, None, f"missing column {col!r}")
            cols[col] = at
        names = {k: header[v] for k, v in cols.items()}
        return _Layout("candles", False, cols, names, len(header))
    i_price, i_amount = find(("price",)), find(_AMOUNT_NAMES)
    if i_price is None or i_amount is None:
        raise DataError(
            name,
            1,
            None,
            "cannot tell the format: expected open/high/low/close/volume (candles) "
            "or price and amount (trades)",
        )
    cols = {"time": i_time, "price": i_price, "amount": i_amount}
    for extra in ("id", "side"):
        at = find((extra,))
        if at is not None:
            cols[extra] = at
    names = {k: header[v] for k, v in cols.items()}
    return _Layout("trades", False, cols, names, len(header))


def _time_ms(name: str, line: int, column: str, text: str) -> int:
    raw = text.strip()
    if raw and raw.replace(".", "", 1).lstrip("-").isdigit():
        value = Decimal(raw)
        magnitude = abs(value)
        if magnitude < Decimal("1e11"):
            ms = value * 1000
        elif magnitude < Decimal("1e14"):
            ms = value
        else:
            ms = value / 1000
    else:
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise DataError(
                name, line, column, f"{text!r} is not an ISO-8601 time or an epoch number"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = Decimal(int(moment.timestamp())) * 1000 + Decimal(moment.microsecond) / 1000
    if ms != ms.to_integral_value():
        raise DataError(name, line, column, f"{text!r} has digits below a millisecond")
    return int(ms)


def _number(name: str, line: int, column: str, text: str) -> float:
    value = exact_float(text)
    if value is None:
        try:
            Decimal(text.strip())
            finite = Decimal(text.strip()).is_finite()
        except InvalidOperation:
            raise DataError(name, line, column, f"{text!r} is not a number") from None
        if not finite:
            raise DataError(name, line, column, f"{text!r} is not a finite number")
        raise DataError(
            name, line, column, f"{text!r} has more significant digits than a float64 keeps (15)"
        )
    return value


def _rows(name: str, handle: IO[str]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(handle)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except (csv.Error, UnicodeDecodeError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise DataError(name, reader.line_num or 1, None, f"unreadable: {exc}") from None


def _parse(name: str, path: Path) -> Iterator[tuple[_Layout, int, dict[str, Any]]]:
    """Checked rows: (layout, line, values)."""
    with _open(path) as handle:
        rows = _rows(name, handle)
        first_row = next(rows, None)
        if first_row is None:
            raise DataError(name, None, None, "the file is empty")
        layout = _layout(name, first_row[1])
        pending = [first_row] if layout.headerless else []
        prev: int | None = None
        for line, row in _chain(pending, rows):
            if len(row) < layout.width:
                raise DataError(
                    name, line, None, f"expected {layout.width} columns, found {len(row)}"
                )
            cols, names = layout.columns, layout.names
            ts = _time_ms(name, line, names["time"], row[cols["time"]])
            values: dict[str, Any] = {"time": ts}
            if layout.kind == "candles":
                if prev is not None and ts <= prev:
                    raise DataError(
                        name,
                        line,
                        names["time"],
                        f"{row[cols['time']]!r} is not after the previous candle",
                    )
                for col in ("open", "high", "low", "close", "volume"):
                    values[col] = _number(name, line, names[col], row[cols[col]])
                for col in ("open", "high", "low", "close"):
                    if values[col] <= 0:
                        raise DataError(name, line, names[col], f"{row[cols[col]]!r} must be > 0")
                if values["volume"] < 0:
                    raise DataError(
                        name, line, names["volume"], f"{row[cols['volume']]!r} must not be negative"
                    )
                if values["high"] < max(values["open"], values["close"], values["low"]):
                    raise DataError(
                        name,
                        line,
                        names["high"],
                        f"{row[cols['high']]!r} is below open, close or low",
                    )
                if values["low"] > min(values["open"], values["close"]):
                    raise DataError(
                        name, line, names["low"], f"{row[cols['low']]!r} is above open or close"
                    )
            else:
                if prev is not None and ts < prev:
                    raise DataError(
                        name,
                        line,
                        names["time"],
                        f"{row[cols['time']]!r} is before the previous trade",
                    )
                values["price"] = _number(name, line, names["price"], row[cols["price"]])
                values["amount"] = _number(name, line, names["amount"], row[cols["amount"]])
                if values["price"] <= 0:
                    raise DataError(
                        name, line, names["price"], f"{row[cols['price']]!r} must be > 0"
                    )
                if values["amount"] <= 0:
                    raise DataError(
                        name, line, names["amount"], f"{row[cols['amount']]!r} must be > 0"
                    )
                if "id" in cols:
                    text = row[cols["id"]].strip()
                    if not text.isdigit():
                        raise DataError(name, line, names["id"], f"{text!r} is not a trade id")
                    values["id"] = int(text)
                else:
                    values["id"] = line
                side = row[cols["side"]].strip().lower() if "side" in cols else "buy"
                if side not in ("buy", "sell"):
                    raise DataError(name, line, names.get("side"), f"{side!r} is not buy or sell")
                values["side"] = side
            prev = ts
            yield layout, line, values


def _chain(
    first: list[tuple[int, list[str]]], rest: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, list[str]]]:
    yield from first
    yield from rest


def _guess_timeframe(name: str, path: Path) -> str:
    deltas: Counter[int] = Counter()
    prev = None
    for n, (_, _, values) in enumerate(_parse(name, path)):
        if prev is not None:
            deltas[values["time"] - prev] += 1
        prev = values["time"]
        if n >= 1000:
            break
    if not deltas:
        raise DataError(name, None, None, "one candle: give --timeframe")
    step = deltas.most_common(1)[0][0]
    found = _INTERVAL_NAMES.get(step)
    if found is None:
        raise DataError(name, None, None, f"candles {step} ms apart: give --timeframe")
    return found


def import_csv(
    catalog: Catalog,
    path: Path,
    *,
    exchange: str = "csv",
    symbol: str | None = None,
    timeframe: str | None = None,
) -> ImportResult:
    """Check all of ``path``, then store it (module docstring)."""
    name = str(path)
    if not path.is_file():
        raise DataError(name, None, None, "no such file")
    sym = symbol or symbol_from_filename(path)
    if sym is None:
        raise DataError(name, None, None, "the file name does not tell the symbol: give --symbol")
    rows = 0
    kind = None
    for layout, _, _ in _parse(name, path):  # pass 1: check everything
        kind = layout.kind
        rows += 1
    if kind is None:
        raise DataError(name, None, None, "no rows")
    if kind == "trades":
        if timeframe not in (None, "trades"):
            raise DataError(name, None, None, f"a trades file, not {timeframe} candles")
        timeframe = "trades"
    elif timeframe is None:
        timeframe = _guess_timeframe(name, path)
    key = SeriesKey(exchange, market_type_of(sym), sym, timeframe)
    new = 0
    chunk: list[dict[str, Any]] = []
    for _, _, values in _parse(name, path):  # pass 2: store in chunks
        chunk.append(values)
        if len(chunk) >= CHUNK_ROWS:
            new += catalog.write(key, _table(key, chunk), update_manifest=False)
            chunk = []
    if chunk:
        new += catalog.write(key, _table(key, chunk), update_manifest=False)
    catalog.refresh([key])
    return ImportResult(key, rows, new)


def _table(key: SeriesKey, rows: list[dict[str, Any]]) -> pa.Table:
    columns = {name: [r[name] for r in rows] for name in key.schema.names}
    arrays = {
        "time": pa.array(columns.pop("time"), pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        **{n: pa.array(v) for n, v in columns.items()},
    }
    return pa.table(arrays).cast(key.schema)
