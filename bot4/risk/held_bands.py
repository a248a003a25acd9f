"""The price bands a policy keeps for its held symbols, and when to make another.

A band (:mod:`bot4.risk.band`) answers the ticks of a held symbol priced
inside it without asking the engine. :class:`HeldBands` keeps one per symbol
and does the bookkeeping around them: a band is made from a tick that asked
the engine and got no action (:meth:`~HeldBands.make`), dropped when a tick
leaves it or what it was made from changes (:meth:`~HeldBands.drop`; a fill,
for a band tied to the book's cash: :meth:`~HeldBands.fill_seen`; a new
policy: :meth:`~HeldBands.reset`), and a
symbol whose bands answer nothing waits longer and longer (up to
``BAND_BACKOFF_MAX`` ticks) before the next is worked out. The answers are
the engine's either way: a band only saves asking it.
:meth:`bot4.risk.policy.RiskPolicy.on_tracked_tick` reads :attr:`~HeldBands.bands`
itself (the same dict, on every held tick) and calls the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Protocol

from bot4.model import MarketData, Portfolio, Position
from bot4.risk import band as bands
from bot4.risk.breaker import Breaker
from bot4.risk.expr import QuietRange
from bot4.risk.firing import is_quiet
from bot4.venue_margin import VenueMargin

__all__ = ["BAND_BACKOFF_MAX", "Book", "HeldBands"]

# The most ticks a symbol waits before another band is worked out after
# bands that answered nothing (see HeldBands.drop).
BAND_BACKOFF_MAX = 64


class Book(Protocol):
    """What :meth:`RiskPolicy.on_tracked_tick` reads of a
    :class:`~bot4.portfolio.PortfolioTracker`."""

    def position(self, symbol: str) -> Position | None: ...

    def snapshot(self) -> Portfolio: ...


class HeldBands:
    """The bands of one policy's held symbols."""

    __slots__ = ("_breaker", "_mmr", "_ranges", "bands", "waits")

    def __init__(self, breaker: Breaker) -> None:
        # symbol -> band, and symbol -> [ticks to wait before working out
        # another, back-off].
        self.bands: dict[str, bands.Band] = {}
        self.waits: dict[str, list[int]] = {}
        self._breaker = breaker
        # Of the policy in force (reset): its tick stage's quiet ranges when
        # it can have bands at all, and its maintenance margin rate.
        self._ranges: tuple[QuietRange, ...] | None = None
        self._mmr: Decimal | None = None

    def reset(self, ranges: tuple[QuietRange, ...] | None, mmr: Decimal | None) -> None:
        """A new policy: no band of the old one stands."""
        self.bands.clear()
        self.waits.clear()
        self._ranges = ranges
        self._mmr = mmr

    def fill_seen(self) -> None:
        """A fill moves cash and a position: a band tied to the book's cash
        and positions ends; one on the equity or the symbol alone checks what
        a fill changes (the equity, its own position) on every tick."""
        held = self.bands
        for symbol in [s for s, b in held.items() if b.book == "book"]:
            del held[symbol]

    def drop(self, symbol: str, band: bands.Band) -> None:
        """End ``symbol``'s band (a tick left it, or the book changed under it)."""
        del self.bands[symbol]
        wait = self.waits.setdefault(symbol, [0, 1])
        # A band that answered no tick was work for nothing (the price keeps
        # leaving it, or the book keeps changing under it): wait longer
        # before the next one. The answers are the engine's either way.
        wait[1] = 1 if band.hits else min(wait[1] * 2, BAND_BACKOFF_MAX)
        wait[0] = wait[1] - 1

    def make(
        self,
        symbol: str,
        tick: MarketData,
        portfolio: Portfolio,
        book: Book,
        facts: Mapping[str, object] | None,
        venues: Mapping[str, VenueMargin],
    ) -> None:
        """Work out ``symbol``'s band from ``tick``, which the engine answered
        with no action (``facts`` are the tick's, ``venues`` the policy's
        ``venue_margins``), unless the symbol is waiting."""
        wait = self.waits.get(symbol)
        if wait is not None and wait[0] > 0:
            wait[0] -= 1
            return
        ranges = self._ranges
        position = portfolio.positions.get(symbol)
        if ranges is None or position is None:
            return
        try:
            band = bands.compute(
                symbol,
                tick,
                position,
                portfolio,
                # A Book without cash, peak_equity or mark_price raises in
                # compute (caught below: no band), so a band only exists for
                # a book that has them, and holds() may read them.
                book,  # type: ignore[arg-type]
                self._breaker.tripped,
                self._mmr,
                ranges,
                is_quiet,
                venues.get(symbol),
                facts,
            )
        except Exception:  # no band (fail safe): the engine answers every tick
            band = None
        if band is None:
            wait = self.waits.setdefault(symbol, [0, 1])
            wait[1] = min(wait[1] * 2, BAND_BACKOFF_MAX)
            wait[0] = wait[1] - 1
            return
        self.bands[symbol] = band
