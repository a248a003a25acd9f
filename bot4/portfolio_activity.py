"""The daily facts of :class:`bot4.portfolio.PortfolioTracker`, from its fills.

:class:`ActivityLedger` is the part of the tracker that keeps what a
:class:`bot4.model.Activity` shows: the UTC day of the last fill and the
realised PnL minus fees of that day's fills, the losing streak (fills in a
row that closed at a loss; a profit resets it, a fill that realises nothing
leaves it), and when each open position opened. Every figure comes from the
fills' own event times, never the clock, so a restart that replays the
journal's fills restores it exactly.

The tracker's ``apply`` calls :meth:`ActivityLedger._note_activity` once per
fill; ``snapshot`` reads :attr:`ActivityLedger.activity`, built once per
change and cached. A base class of the tracker, with slots of its own, so
these are the tracker's own methods and fields, bound and read as before
(no extra object or lookup on a fill). It imports only :mod:`bot4.model`.
"""

from __future__ import annotations

import decimal
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType

from bot4.model import ZERO, Activity, Fill

__all__ = ["ActivityLedger"]

# The day's realised PnL adds money figures of at most 30 decimals: at 100
# digits the sum is exact for any amount below 10**70.
_DAY_CTX = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_EVEN)
_DAY_NS = 86_400 * 10**9
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _fill_ns(fill: Fill) -> int:
    """The fill's event time in ns since the epoch (exact integer arithmetic)."""
    return (fill.timestamp - _EPOCH) // _MICROSECOND * 1000


class ActivityLedger:
    """The day's realised PnL, the losing streak and the positions' open times."""

    __slots__ = ("_activity", "_day", "_day_realized", "_opened", "_streak")

    def __init__(self) -> None:
        # The daily facts (bot4.model.Activity), from the fills' own times.
        self._day = -1
        self._day_realized = ZERO
        self._streak = 0
        self._opened: dict[str, int] = {}
        self._activity: Activity | None = None

    def _note_activity(
        self, fill: Fill, symbol: str, realized: Decimal, fresh: bool, *, flat: bool
    ) -> None:
        ts = _fill_ns(fill)
        day = ts // _DAY_NS
        if day != self._day:
            self._day, self._day_realized = day, ZERO
        self._day_realized = _DAY_CTX.add(self._day_realized, _DAY_CTX.subtract(realized, fill.fee))
        if realized < 0:
            self._streak += 1
        elif realized > 0:
            self._streak = 0
        if flat:
            self._opened.pop(symbol, None)
        elif fresh:
            self._opened[symbol] = ts
        self._activity = None

    @property
    def activity(self) -> Activity:
        """The daily facts' figures (see :class:`bot4.model.Activity`)."""
        if self._activity is None:
            self._activity = Activity(
                self._day, self._day_realized, self._streak, MappingProxyType(dict(self._opened))
            )
        return self._activity

    def _copy_activity_to(self, twin: ActivityLedger) -> None:
        """Give ``twin`` (made without ``__init__``) the same facts, its own
        dict of open times; the cached Activity is immutable and shared."""
        for name in ActivityLedger.__slots__:
            setattr(twin, name, getattr(self, name))
        twin._opened = dict(self._opened)
