"""Held-position monitoring by price band.

On most ticks of a held symbol no tick rule is anywhere near firing (the
liquidation ladder is rungs away, the drawdown far from its limit), yet asking
durable-rules costs the facts, a message and the engine. A *band* is the
closed price range ``[low, high]`` around the current price in which, with
everything but the symbol's price held still, no tick rule can fire. A tick
inside it is answered ``[]`` after one comparison (and a few identity checks
that the band still describes the book); a tick outside it goes to the engine
as before, and a fresh band is worked out from that tick.

How a band is made (:func:`compute`), and why it is safe:

* Only a tick stage whose every rule is ``fact op constant`` has one (the
  stage's ``quiet`` ranges, see :func:`bot4.risk.expr.quiet_ranges`, already
  narrowed inward by more than a double can be off). Each fact a rule reads
  must be one whose dependence on the price is known: the price itself
  (``market.last``), a linear function of it (``position.notional``,
  ``portfolio.equity``, ``portfolio.gross_exposure``,
  ``portfolio.free_margin``), the drawdown (a function of equity), the
  liquidation distance (``(p - liq) / p`` for a long, ``(liq - p) / p`` for a
  short, 0 past it), or a value the price does not move (cash, peak, the
  position's quantity, entry, leverage, liquidation price: the formula's, or
  the venue's as the margin desk last read it). Anything else (bid, ask, mid
  or mark, which are not functions of the last price; the margin facts
  ``position.margin``, ``position.margin_ratio``, ``position.funding_paid``,
  left out rather than modelled; windows, which move with time; pack facts;
  booleans such as ``breaker.tripped``; a compound condition) gives no band:
  every tick asks the engine (fail safe).
* Each of those facts is continuous in the price, so it can only leave its
  quiet range at a price where it equals a bound. Those prices are solved in
  doubles; the band runs between the nearest below and above the current
  price, each edge moved inward by :data:`BAND_MARGIN` (relative). A tick
  within that margin of where a bound is crossed therefore takes the engine
  path, which confirms every firing exactly in Decimal.
* Both edges are then checked with the real fact builder
  (:func:`bot4.risk.facts.tick_facts`, Decimal) and the same quiet test the
  engine path uses; a band whose edge fails is dropped, not repaired.
* The band never spans more than :data:`BAND_SPAN` times the price either way
  (a price a million times off is a different market, and must stay above zero
  for the liquidation distance).

What a band depends on, and so what ends it (:meth:`Band.holds`): the policy
in force (a reload drops every band), the position object (a fill in the
symbol replaces it), the venue's margin view of it (``Band.venue``, the very
object: every refresh of the venue's figures replaces it, and the policy
checks it before :meth:`Band.holds`), the breaker state, and, when a rule reads a portfolio
fact, the peak equity and either the book's equity (when the portfolio facts
read are equity, drawdown and peak alone: an equity range) or the book's cash,
the symbol's own mark (which must be in the band too) and every other held
position and its mark, and the book's initial margin (which a new position
elsewhere moves). Any fill also drops every band that ties itself to the book
(``RiskPolicy.on_fill``); an equity band needs no such help (a fill
elsewhere moves only the equity, which it checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Protocol

import attrs

from bot4.model import (
    ZERO,
    MarketData,
    Portfolio,
    Position,
    trusted_market_data,
    trusted_portfolio,
)
from bot4.portfolio import MONEY_SCALE, PortfolioTracker
from bot4.risk.expr import QuietRange
from bot4.risk.facts import portfolio_facts, tick_facts
from bot4.venue_margin import VenueMargin

# Relative distance kept from every solved edge: far above the error of the
# double arithmetic that solves it (a few ulps, 2**-52 each), far below any
# price move that matters. A tick that close to an edge asks the engine.
BAND_MARGIN = 1e-9
# The band stays within [price / BAND_SPAN, price * BAND_SPAN].
BAND_SPAN = 1e6
_MONEY = 10**MONEY_SCALE  # a PortfolioTracker's money unit is 1 / _MONEY

# Facts the price does not move while the band stands (the position and the
# book are checked unchanged by Band.holds).
_CONSTANT = frozenset(
    {
        "position.qty",
        "position.entry_price",
        "position.leverage",
        "liquidation.price",
        "portfolio.cash",
        "portfolio.peak_equity",
    }
)
# Facts computed from the book (cash, peak, every position and mark).
_PORTFOLIO = frozenset(
    {
        "portfolio.cash",
        "portfolio.equity",
        "portfolio.peak_equity",
        "portfolio.drawdown",
        "portfolio.gross_exposure",
        "portfolio.free_margin",
    }
)
# Portfolio facts that are functions of equity and peak alone.
_EQUITY = frozenset({"portfolio.equity", "portfolio.drawdown", "portfolio.peak_equity"})
# Every fact a band can be worked out for.
SUPPORTED = _CONSTANT | _PORTFOLIO | {"market.last", "position.notional", "liquidation.distance"}


class Book(Protocol):
    """What a band reads of a :class:`~bot4.portfolio.PortfolioTracker` to
    know it still describes the book."""

    @property
    def cash(self) -> Decimal: ...

    @property
    def peak_equity(self) -> Decimal: ...

    @property
    def equity(self) -> Decimal: ...

    def margin_used(self) -> Decimal: ...

    def mark_price(self, symbol: str) -> Decimal | None: ...

    def position(self, symbol: str) -> Position | None: ...


@attrs.define(slots=True)
class Band:
    """Ticks of ``symbol`` priced in ``[low, high]`` fire no tick rule, while
    :meth:`holds` is true."""

    symbol: str
    low: Decimal
    high: Decimal
    position: Position  # the very object the book gave: a fill replaces it
    tripped: bool
    # When a rule reads a portfolio fact: "equity" (only equity, drawdown or
    # peak are read: the book's equity must stay in [equity_low,
    # equity_high]) or "book" (cash, the symbol's mark and every other
    # position and mark must stay as they were); "" when none is read.
    book: str
    equity_low: Decimal | None = None
    equity_high: Decimal | None = None
    cash: Decimal | None = None
    margin: Decimal | None = None  # initial margin of every position: a new one moves it
    peak: Decimal | None = None  # the book's peak when the band was made ...
    peak_max: Decimal | None = None  # ... and the highest it may reach meanwhile
    others: tuple[tuple[str, Decimal | None, Position | None], ...] = ()
    hits: int = 0  # ticks answered by the band (for the policy's back-off)
    # The venue's view of the position's margin the facts were built with
    # (its liquidation price replaces the formula's): the very object, which
    # the margin desk replaces at every refresh; the caller checks it.
    venue: VenueMargin | None = None
    # An equity band over a PortfolioTracker: its equity and peak bounds in
    # the tracker's money units, (equity low, equity high, peak, peak max),
    # each rounded inward (ceil a low bound, floor a high one). The
    # tracker's equity and peak are exactly integers of that unit, so
    # ``ceil(L * 10**S) <= u`` holds exactly when ``L <= u / 10**S``: the
    # same answers as the Decimal bounds without a Decimal per tick.
    units: tuple[int, int, int, int] | None = None

    def holds(self, book: Book, tripped: bool) -> bool:
        """The inputs the band was worked out from are unchanged (the
        position's identity is checked by the caller, first)."""
        if tripped is not self.tripped:
            return False
        if not self.book:
            return True
        units = self.units
        if units is not None and type(book) is PortfolioTracker:
            equity = book.equity_units()
            return units[2] <= book.peak_units() <= units[3] and units[0] <= equity <= units[1]
        peak = book.peak_equity
        if not self.peak <= peak <= self.peak_max:  # type: ignore[operator]
            return False
        if self.book == "equity":
            return self.equity_low <= book.equity <= self.equity_high  # type: ignore[operator]
        mark = book.mark_price(self.symbol)
        if mark is None or not self.low <= mark <= self.high:
            return False
        if book.cash != self.cash or book.margin_used() != self.margin:
            return False
        for symbol, other_mark, position in self.others:
            if book.position(symbol) is not position or book.mark_price(symbol) != other_mark:
                return False
        return True


def _at_price(tick: MarketData, price: Decimal) -> MarketData:
    """``tick`` with bid, ask and last at ``price`` (a finite Decimal above
    zero, as a band edge is): valid as ``MarketData(...)`` would check it, so
    built without the validators, which cost more than the facts it feeds."""
    return trusted_market_data(
        tick.symbol, tick.exchange, price, price, price, tick.volume, tick.timestamp, tick.ts_ns
    )


def supported(ranges: tuple[QuietRange, ...] | None, windows: tuple[str, ...]) -> bool:
    """Whether a tick stage can have bands at all."""
    return ranges is not None and not windows and all(r.fact in SUPPORTED for r in ranges)


def _linear(f0: float, slope: float, p0: float, low: float, high: float) -> list[float]:
    """Prices where ``f0 + slope * (p - p0)`` equals ``low`` or ``high``."""
    if slope == 0:
        return []
    return [p0 + (low - f0) / slope, p0 + (high - f0) / slope]


def _criticals(
    r: QuietRange, facts: Mapping[str, object], p0: float, qty: float, peak: float
) -> list[float]:
    """The prices at which fact ``r.fact`` can equal a bound of its range
    (continuity: it cannot leave the range anywhere else)."""
    name, low, high = r.fact, r.low, r.high
    if name in _CONSTANT:
        return []
    if name == "market.last":
        return [low, high]
    if name == "position.notional":
        return _linear(float(facts[name]), abs(qty), p0, low, high)  # type: ignore[arg-type]
    if name in ("portfolio.equity", "portfolio.free_margin"):
        return _linear(float(facts[name]), qty, p0, low, high)  # type: ignore[arg-type]
    if name == "portfolio.gross_exposure":
        return _linear(float(facts[name]), abs(qty), p0, low, high)  # type: ignore[arg-type]
    if name == "portfolio.drawdown":
        # (peak - equity) / peak below the peak, 0 at or above it (and 0
        # throughout when the peak is not positive): a bound c is met where
        # equity = peak * (1 - c).
        if peak <= 0:
            return []
        equity = float(facts["portfolio.equity"])  # type: ignore[arg-type]
        if qty == 0:
            return []
        return [p0 + (peak * (1 - c) - equity) / qty for c in (low, high)]
    if name == "liquidation.distance":
        # A long's (p - liq) / p = c  <=>  p = liq / (1 - c); a short's
        # (liq - p) / p = c  <=>  p = liq / (1 + c). Both are listed (a
        # crossing too many only narrows the band); a bound of 0 gives liq,
        # where the distance leaves 0.
        liq = float(facts["liquidation.price"])  # type: ignore[arg-type]
        return [liq / d for c in (low, high) for d in (1 - c, 1 + c) if d != 0]
    raise ValueError(f"no band for fact {name}")  # supported() refuses it first


def _interval(
    ranges: tuple[QuietRange, ...], facts: Mapping[str, object], p0: float, qty: float, peak: float
) -> tuple[float, float]:
    """The prices between the nearest crossings below and above ``p0``."""
    below, above = p0 / BAND_SPAN, p0 * BAND_SPAN
    for r in ranges:
        for c in _criticals(r, facts, p0, qty, peak):
            if not math.isfinite(c):
                continue
            if c <= p0 and c > below:
                below = c
            if c >= p0 and c < above:
                above = c
    return below, above


def compute(
    symbol: str,
    tick: MarketData,
    position: Position,
    portfolio: Portfolio,
    book: Book,
    tripped: bool,
    mmr: Decimal | None,
    ranges: tuple[QuietRange, ...],
    quiet: Callable[[tuple[QuietRange, ...], Mapping[str, object]], bool],
    venue: VenueMargin | None = None,
    facts: Mapping[str, object] | None = None,
) -> Band | None:
    """The band around ``tick.last``, or None when there is none (the price
    is not quiet, an edge fails its check, a fact is out of reach). The
    caller has checked :func:`supported`; ``quiet`` is the engine path's
    own quiet test; ``venue`` the venue's margin view the facts use;
    ``facts`` those the engine path just built from these very arguments
    (``tick_facts`` and more), else they are built here."""
    last = tick.last
    reads_book = any(r.fact in _PORTFOLIO for r in ranges)
    if portfolio.mark(symbol) != last:
        return None  # the model moves the mark and the last price together
    if facts is None:
        facts = tick_facts(tick, position, portfolio, tripped, mmr, venue)
    if not quiet(ranges, facts):
        return None
    p0 = float(last)
    qty = float(position.qty)
    peak = max(portfolio.peak_equity, ZERO)
    if reads_book and all(r.fact in _EQUITY or r.fact not in _PORTFOLIO for r in ranges):
        return _equity_band(
            symbol, tick, position, portfolio, book, tripped, mmr, ranges, quiet, facts, venue
        )
    low, high = _interval(ranges, facts, p0, qty, float(peak))
    # The book raises its peak whenever equity passes it. A band that reads
    # the drawdown allows for a peak up to M = equity / (1 - limit / 2) (half
    # the drawdown limit of rally), so a rally does not end it at once; its
    # low side is then where the drawdown from M reaches the limit.
    peak_max = peak
    limit = next((r.high for r in ranges if r.fact == "portfolio.drawdown"), None)
    if reads_book and limit is not None and 0 < limit < 1:
        equity = float(facts["portfolio.equity"])  # type: ignore[arg-type]
        top = equity / (1 - limit / 2)
        if top > float(peak):
            peak_max = Decimal(top)
            low2, high2 = _interval(ranges, facts, p0, qty, top)
            low, high = max(low, low2), min(high, high2)
    low *= 1 + BAND_MARGIN
    high *= 1 - BAND_MARGIN
    if not (0 < low <= p0 <= high and math.isfinite(high)):
        return None
    band_low, band_high = Decimal(low), Decimal(high)
    if not band_low <= last <= band_high:
        return None
    # Every fact is monotone in the price and in the peak: quiet at the four
    # corners, quiet throughout.
    for edge in (band_low, band_high):
        edge_tick = _at_price(tick, edge)
        marks = dict(portfolio.marks)
        marks[symbol] = edge
        for corner_peak in (peak, peak_max) if peak_max != peak else (peak,):
            edge_book = trusted_portfolio(
                portfolio.cash, portfolio.positions, marks, corner_peak, portfolio.activity
            )
            edge_facts = tick_facts(edge_tick, position, edge_book, tripped, mmr, venue)
            if not quiet(ranges, edge_facts):
                return None
    if not reads_book:
        return Band(symbol, band_low, band_high, position, tripped, book="", venue=venue)
    others = tuple(
        (other, book.mark_price(other), book.position(other))
        for other in portfolio.positions
        if other != symbol
    )
    return Band(
        symbol,
        band_low,
        band_high,
        position,
        tripped,
        book="book",
        cash=book.cash,
        margin=book.margin_used(),
        peak=book.peak_equity,
        peak_max=peak_max,
        others=others,
        venue=venue,
    )


def _peak_allowance(ranges: tuple[QuietRange, ...], equity: float, peak: float) -> float:
    """The highest peak a band allows for (see :func:`compute`)."""
    limit = next((r.high for r in ranges if r.fact == "portfolio.drawdown"), None)
    if limit is not None and 0 < limit < 1:
        return max(peak, equity / (1 - limit / 2))
    return peak


def _equity_band(
    symbol: str,
    tick: MarketData,
    position: Position,
    portfolio: Portfolio,
    book: Book,
    tripped: bool,
    mmr: Decimal | None,
    ranges: tuple[QuietRange, ...],
    quiet: Callable[[tuple[QuietRange, ...], Mapping[str, object]], bool],
    facts: Mapping[str, object],
    venue: VenueMargin | None = None,
) -> Band | None:
    """A band for a stage whose portfolio facts are equity, drawdown and peak
    alone: a price range for the symbol's own facts, and an equity range for
    the book's, so that other symbols' marks and fills elsewhere (which move
    only the equity) do not end it. The book's equity (cost-based) and the
    facts' (entry-based) agree to ~1e-27 of the book's exposure; the equity
    edges keep BAND_MARGIN x max(|equity|, peak, 1) inward, far above that."""
    last = tick.last
    p0 = float(last)
    qty = float(position.qty)
    local = tuple(r for r in ranges if r.fact not in _PORTFOLIO)
    low, high = _interval(local, facts, p0, qty, 0.0)
    low *= 1 + BAND_MARGIN
    high *= 1 - BAND_MARGIN
    if not (0 < low <= p0 <= high and math.isfinite(high)):
        return None
    band_low, band_high = Decimal(low), Decimal(high)
    if not band_low <= last <= band_high:
        return None
    # The symbol's own facts at the price edges, the book as it is.
    for edge in (band_low, band_high):
        edge_tick = _at_price(tick, edge)
        if not quiet(ranges, tick_facts(edge_tick, position, portfolio, tripped, mmr, venue)):
            return None
    equity_d = facts["portfolio.equity"]
    assert isinstance(equity_d, Decimal)
    equity = float(equity_d)
    peak = max(portfolio.peak_equity, ZERO)
    peak_max = Decimal(_peak_allowance(ranges, equity, float(peak)))
    peak_max = max(peak_max, peak)
    span = BAND_SPAN * max(abs(equity), float(peak), 1.0)
    below, above = equity - span, equity + span
    for r in ranges:
        if r.fact == "portfolio.equity":
            crossings = [r.low, r.high]
        elif r.fact == "portfolio.drawdown":
            crossings = [
                float(pk) * (1 - c) for pk in (peak, peak_max) if pk > 0 for c in (r.low, r.high)
            ]
        else:
            continue
        for c in crossings:
            if c <= equity and c > below:
                below = c
            if c >= equity and c < above:
                above = c
    margin = BAND_MARGIN * max(abs(equity), float(peak), 1.0)
    below, above = (
        below + max(margin, abs(below) * BAND_MARGIN),
        above - max(margin, abs(above) * BAND_MARGIN),
    )
    if not below <= equity <= above:
        return None
    equity_low, equity_high = Decimal(below), Decimal(above)
    # The book's facts at the equity edges and both peaks (cash moved by the
    # difference), the symbol's price as it is: each is monotone in equity
    # and in the peak, so quiet at the corners is quiet throughout.
    # Only the portfolio facts differ from the centre's there (the others are
    # of the tick, the position and the venue's view, all as they are), so
    # the centre's facts with the edge book's portfolio facts over them are
    # exactly what tick_facts would build for it.
    for edge in (equity_low, equity_high):
        cash = portfolio.cash + (edge - equity_d)
        for corner_peak in (peak, peak_max) if peak_max != peak else (peak,):
            edge_book = trusted_portfolio(
                cash, portfolio.positions, portfolio.marks, corner_peak, portfolio.activity
            )
            if not quiet(ranges, {**facts, **portfolio_facts(edge_book)}):
                return None
    units = None
    if type(book) is PortfolioTracker:
        units = (
            _units_ceil(equity_low),
            _units_floor(equity_high),
            book.peak_units(),
            _units_floor(peak_max),
        )
    return Band(
        symbol,
        band_low,
        band_high,
        position,
        tripped,
        book="equity",
        equity_low=equity_low,
        equity_high=equity_high,
        peak=book.peak_equity,
        peak_max=peak_max,
        venue=venue,
        units=units,
    )


def _units_floor(value: Decimal) -> int:
    """``floor(value * 10**MONEY_SCALE)``, exactly."""
    num, den = value.as_integer_ratio()
    units: int = (num * _MONEY) // den
    return units


def _units_ceil(value: Decimal) -> int:
    """``ceil(value * 10**MONEY_SCALE)``, exactly."""
    num, den = value.as_integer_ratio()
    units: int = -((-num * _MONEY) // den)
    return units
