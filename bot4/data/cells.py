"""The cells of a data file: what a number or a time may be, and the error
that names the file, line and column of one that is not (shared by the
row-by-row and the columnar readers of :mod:`bot4.data.loader`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Protocol

from bot4.errors import ConfigError, ModelError

TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "open_time")


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
