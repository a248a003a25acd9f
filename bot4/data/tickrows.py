"""Tick files (``timestamp,symbol,bid,ask,last,volume`` and optionally
``mark,funding_rate``) read in batches: the columnar path of
:mod:`bot4.data.columns` where it takes a batch, row by row through the
validating constructor where it does not (see :mod:`bot4.data.loader`).

The optional columns are a perpetual's mark price (``mark`` or
``mark_price``) and its current funding rate (``funding_rate`` or
``funding``, a fraction per funding period); an empty cell is a tick without
one. A file without them reads exactly as before, at the same cost."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from itertools import islice

import attrs

from bot4.data.cells import (
    TIME_NAMES,
    DataError,
    _column,
    _fromisoformat,
    _model_error,
    _number,
    _Rows,
    _time,
)
from bot4.data.columns import BATCH_ROWS, FileState, TickBatch, build_batch
from bot4.errors import ModelError
from bot4.model import MarketData

MARK_NAMES = ("mark", "mark_price")
FUNDING_NAMES = ("funding_rate", "funding")


def _optional(name: str, line: int, column: str, text: str) -> Decimal | None:
    """An optional cell: None when blank, else a number (checked as the
    required ones are)."""
    if not text.strip():
        return None
    return _number(name, line, column, text)


@attrs.frozen(slots=True)
class _Layout:
    """Where a tick file's columns are, and what its errors call them."""

    ts: int
    bid: int
    ask: int
    last: int
    vol: int
    sym: int | None
    mark: int | None  # the optional columns, None when the file has none
    funding: int | None
    width: int
    names: list[str]
    default_symbol: str


def _layout(name: str, header: list[str], symbol: str | None) -> _Layout:
    first_line = 1
    i_ts = _column(name, header, TIME_NAMES, first_line)
    i_bid = _column(name, header, ("bid",), first_line)
    i_ask = _column(name, header, ("ask",), first_line)
    i_last = _column(name, header, ("last", "price"), first_line)
    i_vol = _column(name, header, ("volume", "size", "qty"), first_line)
    i_sym = header.index("symbol") if "symbol" in header else None
    i_mark = _optional_column(header, MARK_NAMES)
    i_funding = _optional_column(header, FUNDING_NAMES)
    if i_sym is None and symbol is None:
        raise DataError(
            name,
            first_line,
            None,
            "no 'symbol' column, no symbol option and the file name does not tell the symbol",
        )
    # default_symbol is unused when the file has a symbol column
    return _Layout(
        i_ts,
        i_bid,
        i_ask,
        i_last,
        i_vol,
        i_sym,
        i_mark,
        i_funding,
        len(header),
        header,
        symbol or "",
    )


def _optional_column(header: list[str], wanted: tuple[str, ...]) -> int | None:
    for w in wanted:
        if w in header:
            return header.index(w)
    return None


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


def tick_batches(
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
            extras = None
            if layout.mark is not None or layout.funding is not None:
                extras = (
                    None if layout.mark is None else columns[layout.mark],
                    None if layout.funding is None else columns[layout.funding],
                )
            batch = build_batch(
                name,
                lines,
                [columns[i] for i in (layout.ts, layout.bid, layout.ask, layout.last, layout.vol)],
                columns[layout.sym] if layout.sym is not None else None,
                layout.default_symbol,
                exchange,
                state,
                parse_time,
                extras,
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
    i_mark, i_funding = layout.mark, layout.funding
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
        mark = None if i_mark is None else _optional(name, line, names[i_mark], row[i_mark])
        funding = (
            None if i_funding is None else _optional(name, line, names[i_funding], row[i_funding])
        )
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
                mark=mark,
                funding_rate=funding,
            )
        except ModelError as exc:
            cells = {
                "symbol": sym or "",
                "bid": row[i_bid],
                "ask": row[i_ask],
                "last": row[i_last],
                "volume": row[i_vol],
            }
            if i_mark is not None:
                cells["mark"] = row[i_mark]
            if i_funding is not None:
                cells["funding_rate"] = row[i_funding]
            err = _model_error(name, line, exc, cells)
            # Errors name the column as the file's header does.
            column = {
                "last": i_last,
                "volume": i_vol,
                "mark": i_mark,
                "funding_rate": i_funding,
            }.get(exc.field)
            if column is not None:
                err = DataError(name, line, names[column], err.message)
            raise err from None
        # Kept for the next batch before the tick goes out (the caller may
        # stop reading at any tick).
        state.prev = moment
        state.prev_ns = tick.ts_ns
        yield tick
