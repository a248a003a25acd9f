"""The report's mutable state per series: the open sample bucket, the open
round trip (and what the report reads of a tracker, :class:`Book`), and how
a report that follows its own book reads equity in that book's integer
units (:class:`bot4.report.SessionReport` is the one user).

They change on every tick, so they are slotted objects updated in place, not
frozen values allocated per tick. An equity bucket of a following report
(a :class:`_Bucket` of integers) holds the book's integer money units: compared
exactly as the Decimals they stand for, and turned into the same floats
(:func:`_money_float`), but without building a Decimal per tick.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

from bot4.model import ZERO, Fill
from bot4.portfolio import MONEY_SCALE
from bot4.summary import EquitySample, PriceSample, TradeRecord

_MONEY_UNIT: int = 10**MONEY_SCALE  # a PortfolioTracker's equity_units() per unit of money


def _money_float(units: int) -> float:
    """``float(equity)`` of the Decimal a tracker's equity units stand for:
    the same float, int / int being correctly rounded as float(Decimal) is."""
    return units / _MONEY_UNIT


def _units_of(value: Decimal) -> int | None:
    """``value`` in money units when it is a whole number of them, else None."""
    num, den = value.as_integer_ratio()
    units, rest = divmod(num * _MONEY_UNIT, den)
    return None if rest else units


class _Bucket:
    """The open bucket of one series. Mutable and slotted: it changes on every
    tick, and allocating a fresh object per tick is what we must not do.

    Its values are Decimals (prices, or equity read from a tracker), or, in
    the equity bucket of a report that follows its own book, the book's
    integer money units (compared exactly as the Decimals they stand for).
    Such a bucket also keeps the state whose drawdown was last worked out:
    the drawdown ``(peak - equity) / peak`` never rises while the peak stays
    and equity does not fall (each Decimal step rounds monotonically), so a
    state at ``checked_peak`` with equity at or above ``checked`` cannot beat
    ``drawdown``, and the Decimal division is done only at a new low."""

    __slots__ = ("checked", "checked_peak", "drawdown", "high", "index", "last", "low", "ts")

    def __init__(self, index: int, ts: int, value: Decimal | int, drawdown: Decimal = ZERO) -> None:
        self.index = index
        self.ts = ts
        self.last = self.low = self.high = value
        self.drawdown = drawdown
        self.checked_peak: int | None = None  # None: no drawdown worked out yet
        self.checked = 0

    def add(self, ts: int, value: Decimal | int) -> None:
        self.ts = ts
        self.last = value
        if value < self.low:
            self.low = value
        elif value > self.high:
            self.high = value

    def price(self) -> PriceSample:
        return PriceSample(self.ts, float(self.last), float(self.low), float(self.high))

    def equity(self, money: Callable[[Any], float] = float) -> EquitySample:
        """The sample; ``money`` turns the bucket's equity values into floats."""
        return EquitySample(
            self.ts, money(self.last), money(self.low), money(self.high), float(self.drawdown)
        )


class Book(Protocol):
    """What the report reads of :class:`bot4.portfolio.PortfolioTracker`."""

    @property
    def equity(self) -> Decimal: ...

    @property
    def peak_equity(self) -> Decimal: ...

    @property
    def starting_cash(self) -> Decimal: ...

    @property
    def fees(self) -> Decimal: ...


class _Trip:
    """The open round trip of one symbol (see :mod:`bot4.report` for what a
    trade is)."""

    __slots__ = ("cash", "fees", "opened", "qty")

    def __init__(self) -> None:
        self.qty = ZERO  # signed net quantity
        self.cash = ZERO  # sells minus buys since the trip opened
        self.fees = ZERO
        self.opened = 0

    def apply(self, fill: Fill, ts: int) -> TradeRecord | None:
        """Take ``fill`` (at event time ``ts``); the trade it closes, if any."""
        sign = fill.side.sign
        qty, price, fee = fill.qty, fill.price, fill.fee
        if self.qty == 0 or (self.qty > 0) == (sign > 0):
            if self.qty == 0:
                self.opened = ts
            self.qty += sign * qty
            self.cash -= sign * qty * price
            self.fees += fee
            return None
        closing = min(qty, abs(self.qty))
        closing_fee = fee if closing == qty else fee * closing / qty
        self.qty += sign * closing
        self.cash -= sign * closing * price
        self.fees += closing_fee
        if self.qty != 0:
            return None
        closed = TradeRecord(fill.symbol, self.opened, ts, self.cash - self.fees)
        rest = qty - closing
        if rest:
            # A flip: the rest of the fill opens the next trip.
            self.qty = sign * rest
            self.cash = -sign * rest * price
            self.fees = fee - closing_fee
            self.opened = ts
        else:
            self.cash = self.fees = ZERO
        return closed
