"""The columnar feed: a batch of tick rows as arrays, validated once with numpy.

A :class:`TickBatch` holds up to ``BATCH_ROWS`` consecutive rows of one tick
file as columns:

``ts_ns``
    int64 nanoseconds since the epoch (the loader's times hold microseconds,
    so the last three digits are zero).
``bid``, ``ask``, ``last``
    int64 fixed point at ``price_scale``: the price is ``bid[i] / 10**price_scale``.
``volume``
    int64 fixed point at ``size_scale``.
``ticks``
    the same rows as :class:`bot4.model.MarketData`, in file order, built
    through :func:`bot4.model.trusted_market_data_batch` (their Decimals are
    those ``Decimal(cell)`` gives, so ``str(tick.bid)`` is what the file says).

**Scale and rounding.** The scale is per batch (of one file): ``price_scale`` is
the most decimals any bid, ask or last of the batch is written with, and
``size_scale`` the most decimals of its volumes. So a batch of BTC-USDT and
ETH-USDT quotes written with two decimals has ``price_scale == 2``, whatever the
symbol. Nothing is ever rounded: every cell converts exactly, or the batch is
not taken by this path. A cell converts when it is a plain decimal numeral in
ASCII (``123``, ``0.05``, ``.5``; no sign, exponent, underscore or blank) and
its digits at the batch's scale number at most 18
(``10**18 - 1 < 2**63``, so no int64 overflows). A batch with any other cell
(``1e5``, ``-3``, ``NaN``, 19 significant digits, a price beyond int64 at the
scale), or that fails a check below, is read row by row by the validating
:class:`MarketData` constructor instead: the same ticks, or the same error at
the same row and column, just slower (see :mod:`bot4.data.loader`).

**Mark and funding rate.** A file with the optional ``mark`` and
``funding_rate`` columns (:mod:`bot4.data.tickrows`) has them on its ticks
only, not as fixed-point columns (nothing reads them as arrays). Their cells
are converted once per distinct text (a funding rate repeats for hours): a
blank is None, anything else must be a finite number, a mark above zero and
a rate strictly between -1 and 1, or the batch goes row by row and the
validating path names the cell. A file without them pays nothing for them.

**Checks** (all vectorised over the batch, exact integer comparisons): prices
above zero, ``bid <= ask``, times never earlier than the previous row (across
batches too), symbols of the ``BASE-QUOTE`` form, the exchange a printable
name. Volumes and finiteness need no check: a plain numeral has neither sign
nor NaN.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import repeat

import attrs
import numpy as np
import numpy.typing as npt

from bot4.model import MarketData, trusted_market_data_batch

__all__ = ["BATCH_ROWS", "MAX_DIGITS", "TickBatch", "fixed_point"]

BATCH_ROWS = 4096  # rows per batch: numpy's per-call cost amortised, memory flat
MAX_DIGITS = 18  # digits of a fixed-point value: every 18-digit integer fits int64

Int64s = npt.NDArray[np.int64]

_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,2}$")  # as bot4.model's
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@attrs.frozen(slots=True, eq=False)
class TickBatch:
    """Consecutive rows of one tick file, as columns and as ticks (see the
    module docstring for the units)."""

    path: str
    first_line: int  # the file line of the first row
    ticks: list[MarketData]
    ts_ns: Int64s
    # None when the batch was read row by row (a cell this path does not
    # take): its ticks are the same, it just has no fixed-point columns.
    bid: Int64s | None = None
    ask: Int64s | None = None
    last: Int64s | None = None
    price_scale: int = 0
    volume: Int64s | None = None
    size_scale: int = 0

    def __len__(self) -> int:
        return len(self.ticks)

    @property
    def columnar(self) -> bool:
        """Whether the batch was validated as columns (it has fixed point)."""
        return self.bid is not None

    @classmethod
    def of_ticks(cls, path: str, first_line: int, ticks: list[MarketData]) -> TickBatch:
        """A batch of ticks read row by row: times only, no fixed point."""
        ts_ns = np.fromiter((t.ts_ns for t in ticks), dtype=np.int64, count=len(ticks))
        return cls(path, first_line, ticks, ts_ns)


@attrs.frozen(slots=True)
class _Numerals:
    """A column whose cells are all plain numerals."""

    cells: Sequence[str]
    fraction: Int64s  # digits after the point, per cell
    digits: Int64s  # digits, per cell
    decimals: int  # the most fraction digits of any cell


_POW10 = np.array([10**k for k in range(MAX_DIGITS + 1)], dtype=np.int64)
_DOT, _ZERO, _NINE = ord("."), ord("0"), ord("9")  # the bytes of a plain numeral


def _numerals(cells: Sequence[str]) -> _Numerals | None:
    """The column when every cell is digits with at most one point and at
    least one digit; None otherwise. Vectorised over the column's bytes."""
    n = len(cells)
    joined = "".join(cells)
    # Non-ASCII (other scripts' digits, which Decimal takes) goes row by row.
    if not n or not joined.isascii():
        return None
    chars = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=n)
    if lengths.min() == 0:
        return None
    ends = np.cumsum(lengths)
    starts = ends - lengths
    dot = chars == _DOT
    if not (dot | ((chars >= _ZERO) & (chars <= _NINE))).all():
        return None  # a sign, an exponent, a blank, NaN, a NUL...
    dots = np.add.reduceat(dot.astype(np.int64), starts)
    if dots.max() > 1:
        return None
    digits = lengths - dots
    if digits.min() == 0:
        return None  # a lone point
    fraction = np.zeros(n, dtype=np.int64)
    dotted = dots == 1
    fraction[dotted] = ends[dotted] - np.flatnonzero(dot) - 1  # one point per dotted cell
    return _Numerals(cells, fraction, digits, int(fraction.max()))


def _scaled(numerals: _Numerals, scale: int) -> Int64s | None:
    """The cells as integers at ``scale`` (each has at most ``scale``
    decimals), or None when one needs more than MAX_DIGITS digits."""
    pad = scale - numerals.fraction
    if int((numerals.digits + pad).max()) > MAX_DIGITS:
        return None
    # The digits without the point, parsed by numpy's C text reader, then
    # padded to the scale: exact, every cell being digits and one point at most.
    whole = np.fromstring(",".join(numerals.cells).replace(".", ""), dtype=np.int64, sep=",")
    if len(whole) != len(pad):
        return None
    out: Int64s = whole * _POW10[pad]
    return out


def fixed_point(cells: Sequence[str], scale: int | None = None) -> tuple[Int64s, int] | None:
    """``cells`` as exact int64 fixed point, at ``scale`` or else at the most
    decimals among them: ``(values, scale)``; None when a cell is not a plain
    numeral, has more decimals than ``scale``, or does not fit in 18 digits."""
    numerals = _numerals(cells)
    if numerals is None:
        return None
    if scale is None:
        scale = numerals.decimals
    elif numerals.decimals > scale:
        return None
    values = _scaled(numerals, scale)
    return None if values is None else (values, scale)


@attrs.define(slots=True)
class FileState:
    """What one file's batches carry from one to the next."""

    prev: datetime | None = None  # the time of the last row taken
    prev_ns: int = -(2**63)
    exchange_ok: bool | None = None  # the exchange name checked, once per file


def _printable_name(value: str) -> bool:
    # bot4.model's check of an exchange name.
    return bool(value) and value.isprintable() and value == value.strip()


def _mark_ok(value: Decimal) -> bool:
    return value.is_finite() and value > 0  # bot4.model's check of a mark


def _rate_ok(value: Decimal) -> bool:
    return value.is_finite() and -1 < value < 1  # bot4.model's check of a funding rate


def _optional_values(
    cells: Sequence[str] | None, n: int, ok: Callable[[Decimal], bool]
) -> Sequence[Decimal | None] | None:
    """An optional column's values (None for a blank cell; all None without
    the column), converted once per distinct cell as ``MarketData(...)``
    would; None when a cell is not a number or fails ``ok``."""
    if cells is None:
        return list(repeat(None, n))
    values: dict[str, Decimal | None] = {}
    for cell in dict.fromkeys(cells):
        if not cell.strip():
            values[cell] = None
            continue
        try:
            value = Decimal(cell)
        except ArithmeticError:
            return None
        if not ok(value):
            return None
        values[cell] = value
    return list(map(values.__getitem__, cells))


def build_batch(
    name: str,
    lines: list[int],
    columns: Sequence[Sequence[str]],
    symbols: Sequence[str] | None,
    default_symbol: str,
    exchange: str,
    state: FileState,
    parse_time: Callable[[str], datetime],
    extras: tuple[Sequence[str] | None, Sequence[str] | None] | None = None,
) -> TickBatch | None:
    """The batch of these rows, or None when the rows must go through the
    validating path (a cell this path does not take, or any check failing).
    ``columns`` is (time, bid, ask, last, volume) cells; ``parse_time`` turns a
    time cell into a UTC datetime or raises. ``extras`` is the (mark,
    funding rate) cells of a file with either column (None for one it
    lacks). ``state`` is advanced only when a batch is returned."""
    if state.exchange_ok is None:
        state.exchange_ok = _printable_name(exchange)
    if not state.exchange_ok:
        return None
    times, bids, asks, lasts, volumes = columns
    n = len(times)
    # Prices and sizes first: the cheapest test that sends a batch elsewhere.
    prices = [_numerals(col) for col in (bids, asks, lasts)]
    sizes = _numerals(volumes)
    if sizes is None or any(p is None for p in prices):
        return None
    scale = max(p.decimals for p in prices if p is not None)
    scaled = [_scaled(p, scale) for p in prices if p is not None]
    size = _scaled(sizes, sizes.decimals)
    if size is None or any(s is None for s in scaled):
        return None
    bid, ask, last = (s for s in scaled if s is not None)
    if not ((bid > 0).all() and (ask > 0).all() and (last > 0).all() and (bid <= ask).all()):
        return None
    # Times: parsed once per distinct cell (several symbols share a second).
    moments: dict[str, datetime] = {}
    stamps: dict[str, int] = {}
    try:
        for cell in dict.fromkeys(times):
            moment = parse_time(cell)
            moments[cell] = moment
            stamps[cell] = (moment - _EPOCH) // _MICROSECOND * 1000
    except Exception:  # any refusal is reported, with its row, by the validating path
        return None
    ts_ns = np.fromiter(map(stamps.__getitem__, times), dtype=np.int64, count=n)
    if n and (ts_ns[0] < state.prev_ns or (ts_ns[1:] < ts_ns[:-1]).any()):
        return None
    if symbols is None:
        syms: Sequence[str] = list(repeat(default_symbol, n))
    else:
        distinct = dict.fromkeys(symbols)
        if any(s != s.strip() for s in distinct):
            syms = [s.strip() for s in symbols]
            distinct = dict.fromkeys(syms)
        else:
            syms = symbols
        if not all(_SYMBOL.match(s) for s in distinct):
            return None
    when = list(map(moments.__getitem__, times))
    marks: Sequence[Decimal | None] | None = None
    rates: Sequence[Decimal | None] | None = None
    if extras is not None:
        marks = _optional_values(extras[0], n, _mark_ok)
        rates = _optional_values(extras[1], n, _rate_ok)
        if marks is None or rates is None:
            return None
    try:
        ticks = trusted_market_data_batch(
            syms,
            exchange,
            list(map(Decimal, bids)),
            list(map(Decimal, asks)),
            list(map(Decimal, lasts)),
            list(map(Decimal, volumes)),
            when,
            ts_ns.tolist(),
            marks,
            rates,
            exact_floats(last, scale),
        )
    except ArithmeticError:  # not expected of a plain numeral; the reference decides
        return None
    if n:
        state.prev = when[-1]
        state.prev_ns = int(ts_ns[-1])
    first = lines[0] if lines else 0
    return TickBatch(name, first, ticks, ts_ns, bid, ask, last, scale, size, sizes.decimals)


# Doubles hold every integer below 2**53 exactly, and 10**k for k <= 22.
_EXACT_INT = 1 << 53
_EXACT_POWERS = 22


def exact_floats(units: Int64s, scale: int) -> list[float] | None:
    """``float(Decimal(u).scaleb(-scale))`` for each fixed-point ``u``: one
    IEEE division of two exact doubles, which rounds to nearest as
    ``float(Decimal)`` does, so the same double (tested). None when some
    ``|u|`` or the scale is beyond exact doubles: the ticks then compute
    their ``last_float`` on first read."""
    if not 0 <= scale <= _EXACT_POWERS:
        return None
    if len(units) and int(np.abs(units).max()) >= _EXACT_INT:
        return None
    floats: list[float] = (units.astype(np.float64) / float(10**scale)).tolist()
    return floats
