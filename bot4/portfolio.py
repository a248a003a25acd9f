"""Book-keeping for one account: fills in, a :class:`bot4.model.Portfolio` out.

:class:`PortfolioTracker` nets fills per symbol (open, add, reduce, close,
flip), keeps realised PnL, fees and cash, the marks used to value open
positions and the peak equity used for drawdown. The paper exchange and the
kernel both use it, so the two always agree on the arithmetic.

Accounting model (perpetual-style, quote currency)::

    cash       = starting_cash + realised_pnl - fees
    unrealised = sum(qty * mark - cost)          over open positions
    equity     = cash + unrealised

Positions are margined, not bought, so opening one does not move cash; only
realised PnL and fees do.

This module holds the tracker's arithmetic (netting, marking, valuing, the
peak) and re-exports the public scales, so ``from bot4.portfolio import ...``
stays the one import. It is built from three modules that import only
:mod:`bot4.model`:

* :mod:`bot4.portfolio_units`: the scales and the fixed-point conversions
  in and out (:func:`~bot4.portfolio_units._to_decimal` and the rest),
  imported here by name so the hot methods call them as module globals;
* :mod:`bot4.portfolio_book`: ``_Book``, the mutable record of one symbol;
* :mod:`bot4.portfolio_activity`: ``ActivityLedger``, the tracker's base
  class keeping the daily facts (``activity``) from the fills.

Fixed point inside, Decimal at the edges. Every figure is a Python ``int``
counting a fixed unit (the scale), so a mark costs a few integer operations
and no Decimal arithmetic:

    quantity          1e-18 of a unit        (``QTY_SCALE``: wei-sized lots fit)
    price, mark       1e-12 of the quote     (``PRICE_SCALE``)
    money             1e-30 of the quote     (``MONEY_SCALE`` = the two above:
                      cost, cash, fees, PnL, margin, equity, peak)

and ``qty * price`` is an exact product in money units. Unrealised PnL and
equity are maintained incrementally: a mark of a held symbol moves the total
by ``qty * (new - old)``, O(1) whatever the number of positions; a mark of a
symbol not held only records the Decimal (for the snapshot's ``marks``).
Figures leave as exact Decimals (``_to_decimal``) with as many decimals
as the inputs' significant ones, so ``snapshot()`` and the properties equal
what the former all-Decimal tracker gave, to the last digit (only trailing
zeros an input carried, ``0.0100``, are not repeated in the output).

Rounding, only for inputs finer than the scale, always against the account
(toward the safe side of a limit): a price with more than 12 decimals is
rounded up on a buy fill and down on a sell fill; a mark is kept both floored
and ceiled, a long valued at the floor and a short at the ceiling (equity
never above the exact figure); a fee finer than 1e-30 is rounded up; cash
(start, deposits, withdrawals) is rounded down; a restored peak is rounded up
(drawdown never below the exact figure); margin ``|cost| / leverage`` is
rounded up. A fill quantity with more than 18 decimals is refused
(ValueError): rounding it would make the book disagree with the venue.
``tests/test_guarantees/test_fixed_point.py`` checks all of this against an
exact reference over random fills and marks.

Exactness. Each position carries its *cost basis* (signed ``qty * price``
summed over the fills that opened it) rather than an average price. When part
of a position is closed, the share of the cost that leaves with it is
``cost * closed / |qty|``: that one division may round (half-even, to 12
decimal places), but the rounded amount is both booked as realised and removed
from the cost, so nothing is lost. Hence, exactly, for every sequence of fills
at prices within the scale::

    realised + unrealised(mark) == sum(sell qty*price) - sum(buy qty*price) + qty*mark

and a flat position has a cost of exactly zero. ``Position.entry_price`` in a
snapshot is ``cost / qty`` rounded to 34 digits; ``Portfolio.unrealized_pnl``
computed from it can therefore differ from
:attr:`PortfolioTracker.unrealized_pnl` in the 34th digit. Prefer the
tracker's figures when exactness matters.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal
from types import MappingProxyType

from bot4.model import ZERO, Fill, MarketData, Portfolio, Position, trusted_portfolio
from bot4.portfolio_activity import ActivityLedger
from bot4.portfolio_book import _Book
from bot4.portfolio_units import (
    _M,
    _P,
    _Q,
    _SHARE_EXP,
    _SHARE_UNIT,
    MONEY_SCALE,
    PRICE_SCALE,
    QTY_SCALE,
    _exp,
    _money,
    _price_bounds,
    _round_half_even,
    _to_decimal,
    _units,
    _units_exp,
)

__all__ = ["MONEY_SCALE", "PRICE_SCALE", "QTY_SCALE", "PortfolioTracker"]

# Entry price (cost / qty) is the one figure computed in Decimal: 34 digits.
_CTX = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN)


class PortfolioTracker(ActivityLedger):
    """Applies fills and marks; answers with exact Decimal figures.

    Typical use::

        t = PortfolioTracker(cash=Decimal("10000"))
        t.apply(fill, leverage=Decimal(5))
        t.on_market_data(tick)          # marks the symbol at the tick's mid
        snapshot = t.snapshot()          # bot4.model.Portfolio
    """

    __slots__ = (
        "_books",
        "_cash",
        "_cash_dec",
        "_cash_exp",
        "_equity_dec",
        "_fees",
        "_fees_exp",
        "_margin",
        "_marks",
        "_on_peak",
        "_peak",
        "_peak_alert",
        "_peak_dec",
        "_positions_view",
        "_realized",
        "_realized_exp",
        "_snapshot",
        "_starting_cash",
        "_upnl",
    )

    def __init__(self, cash: Decimal | int | str = ZERO) -> None:
        start = _money(cash, "cash")
        self._starting_cash = start
        self._cash = _units(start, MONEY_SCALE, up=False)  # money units
        self._cash_exp = min(0, _exp(start))
        self._cash_dec: Decimal | None = None
        # equity as a Decimal, built when asked (the report asks every tick)
        # and kept until a fill or a mark of a held symbol moves it.
        self._equity_dec: Decimal | None = None
        self._realized = 0
        self._realized_exp = 0
        self._fees = 0
        self._fees_exp = 0
        self._upnl = 0  # sum of the books' upnl: kept, never re-summed
        self._margin = 0  # sum of the books' margin
        self._books: dict[str, _Book] = {}
        self._marks: dict[str, Decimal] = {}
        self._peak = max(self._cash, 0)
        self._peak_dec: Decimal | None = None
        # A watcher (the journal) is told when the peak passes _peak_alert.
        self._peak_alert = self._peak
        self._on_peak: Callable[[Decimal], Decimal] | None = None
        self._snapshot: Portfolio | None = None
        # The snapshot's positions, kept until a fill or a stop changes one:
        # a mark builds a new snapshot but not the positions mapping.
        self._positions_view: MappingProxyType[str, Position] | None = None
        super().__init__()  # the daily facts (ActivityLedger)

    # --- figures ----------------------------------------------------------------

    @property
    def starting_cash(self) -> Decimal:
        return self._starting_cash

    @property
    def cash(self) -> Decimal:
        """``starting_cash + realized_pnl - fees``."""
        dec = self._cash_dec
        if dec is None:
            dec = self._cash_dec = _to_decimal(self._cash, MONEY_SCALE, self._cash_exp)
        return dec

    @property
    def realized_pnl(self) -> Decimal:
        return _to_decimal(self._realized, MONEY_SCALE, self._realized_exp)

    @property
    def fees(self) -> Decimal:
        return _to_decimal(self._fees, MONEY_SCALE, self._fees_exp)

    @property
    def peak_equity(self) -> Decimal:
        dec = self._peak_dec
        if dec is None:
            dec = self._peak_dec = _to_decimal(self._peak, MONEY_SCALE, self._cash_exp)
        return dec

    def peak_units(self) -> int:
        """The peak equity in money units (1e-``MONEY_SCALE``), exactly
        ``peak_equity``: for integer comparisons on every tick."""
        return self._peak

    def qty(self, symbol: str) -> Decimal:
        """Signed net quantity (positive long, negative short, zero flat)."""
        book = self._books.get(symbol)
        if book is None or not book.qty:
            return ZERO
        return _to_decimal(book.qty, QTY_SCALE, book.qty_exp)

    def holds(self, symbol: str) -> bool:
        """Whether a position is open in ``symbol`` (no Decimal built)."""
        book = self._books.get(symbol)
        return book is not None and book.qty != 0

    def cost(self, symbol: str) -> Decimal:
        """Signed cost basis of the open position (zero when flat)."""
        book = self._books.get(symbol)
        if book is None or not book.cost:
            return ZERO
        return _to_decimal(book.cost, MONEY_SCALE, book.cost_exp)

    def mark_price(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol)

    def unrealized_pnl(self, symbol: str | None = None) -> Decimal:
        """Exact unrealised PnL of one symbol, or of all when ``symbol`` is None.
        A position never marked is valued at its own entry (zero PnL)."""
        if symbol is not None:
            book = self._books.get(symbol)
            if book is None or not book.qty:
                return ZERO
            return _to_decimal(book.upnl, MONEY_SCALE, book.cost_exp)
        return _to_decimal(self._upnl, MONEY_SCALE, self._cash_exp)

    @property
    def equity(self) -> Decimal:
        """``cash + unrealized_pnl()``: maintained, not summed, so O(1)."""
        dec = self._equity_dec
        if dec is None:
            dec = self._equity_dec = _to_decimal(
                self._cash + self._upnl, MONEY_SCALE, self._cash_exp
            )
        return dec

    def equity_units(self) -> int:
        """Equity in money units (1e-``MONEY_SCALE``), for integer comparisons."""
        return self._cash + self._upnl

    def margin_units(self) -> int:
        """Initial margin of open positions in money units, rounded up."""
        return self._margin

    def margin_used(self) -> Decimal:
        """Initial margin of open positions: ``|cost| / leverage`` summed, each
        rounded up to the money unit."""
        return _to_decimal(self._margin, MONEY_SCALE, self._cash_exp)

    def position(self, symbol: str) -> Position | None:
        """The open position in ``symbol`` or None when flat."""
        book = self._books.get(symbol)
        if book is None or not book.qty:
            return None
        if book.cached is None:
            qty = _to_decimal(book.qty, QTY_SCALE, book.qty_exp)
            book.cached = Position(
                symbol=symbol,
                qty=qty,
                entry_price=_CTX.divide(_to_decimal(book.cost, MONEY_SCALE, book.cost_exp), qty),
                leverage=book.leverage,
                realized_pnl=_to_decimal(book.realized, MONEY_SCALE, book.realized_exp),
                stop_loss=book.stop_loss,
            )
        return book.cached

    def holds_any(self) -> bool:
        """Whether any position is open (no Position built)."""
        return any(book.qty for book in self._books.values())

    def positions(self) -> dict[str, Position]:
        """Open positions by symbol (a fresh dict; Position objects are shared
        and immutable)."""
        out: dict[str, Position] = {}
        for symbol, book in self._books.items():
            if book.qty:
                pos = self.position(symbol)
                assert pos is not None
                out[symbol] = pos
        return out

    def realized_pnl_of(self, symbol: str) -> Decimal:
        book = self._books.get(symbol)
        if book is None:
            return ZERO
        return _to_decimal(book.realized, MONEY_SCALE, book.realized_exp)

    # --- updates ----------------------------------------------------------------

    def apply(
        self,
        fill: Fill,
        *,
        leverage: Decimal | None = None,
        stop_loss: Decimal | None = None,
    ) -> Decimal:
        """Net one fill into the book; returns the PnL it realised (fee excluded).

        ``leverage`` (default: keep the position's, 1 for a new one) applies to
        the whole position after the fill, as on venues where leverage is a
        per-symbol setting. ``stop_loss`` is recorded on the position when the
        fill opens or adds to it, and cleared when the position goes flat.
        """
        if leverage is not None:
            lev = _money(leverage, "leverage")
            if lev <= 0:
                raise ValueError(f"leverage must be positive, not {leverage!r}")
        symbol = fill.symbol
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = _Book()
        sign = fill.side.sign
        qty_dec, price_dec = fill.qty, fill.price
        qty, qexp, exact = _units_exp(qty_dec, _Q, up=False)
        if not exact:
            raise ValueError(f"fill quantity {qty_dec} has more than {QTY_SCALE} decimals")
        # Against the account: a buy pays the price rounded up, a sell gets it
        # rounded down (exact for any price of at most 12 decimals).
        price, pexp, _ = _units_exp(price_dec, _P, up=sign > 0)
        realized = 0
        realized_exp = 0
        opened = False
        fresh = False  # a new position: from flat, or the rest of a flip
        held = book.qty

        if held == 0 or (held > 0) == (sign > 0):
            # Open or add: the cost basis grows by the fill's notional.
            book.cost += sign * qty * price
            book.cost_exp = min(book.cost_exp, qexp + pexp)
            book.qty += sign * qty
            book.qty_exp = min(book.qty_exp, qexp)
            opened = True
            fresh = held == 0
        else:
            size = abs(held)
            closing = min(qty, size)
            if closing == size:
                share = book.cost  # the whole basis leaves: no division, no rounding
            else:
                share = _round_half_even(book.cost * closing, size * _SHARE_UNIT) * _SHARE_UNIT
                book.cost_exp = min(book.cost_exp, _SHARE_EXP)
            # Value received for the closed part minus its share of the cost:
            # a long sells (sign -1) and receives closing*price; a short buys
            # back (sign +1) and pays it.
            realized = -sign * closing * price - share
            realized_exp = min(qexp + pexp, book.cost_exp)
            book.cost -= share
            book.qty += sign * closing
            rest = qty - closing
            if rest:
                # Flip: what is left of the fill opens a position the other way.
                book.cost = sign * rest * price
                book.cost_exp = qexp + pexp
                book.qty = sign * rest
                book.qty_exp = qexp
                opened = True
                fresh = True

        if leverage is not None:
            book.leverage = lev
            book.lev_num, book.lev_den = lev.as_integer_ratio()
        if book.qty == 0:
            book.cost = 0
            book.cost_exp = 0
            book.stop_loss = None
        elif opened and stop_loss is not None:
            book.stop_loss = stop_loss
        if realized:
            book.realized += realized
            book.realized_exp = min(book.realized_exp, realized_exp)
            self._realized += realized
            self._realized_exp = min(self._realized_exp, realized_exp)
        fee, fexp, _ = _units_exp(fill.fee, _M, up=True)
        if fee:
            self._fees += fee
            if fexp < self._fees_exp:
                self._fees_exp = fexp
        self._cash += realized - fee
        cash_exp = min(self._realized_exp, self._fees_exp)
        if cash_exp < self._cash_exp:
            self._cash_exp = cash_exp
        self._cash_dec = None
        book.cached = None
        self._positions_view = None

        realized_dec = _to_decimal(realized, MONEY_SCALE, realized_exp) if realized else ZERO
        self._note_activity(fill, symbol, realized_dec, fresh, flat=book.qty == 0)

        mark = self._marks.get(symbol)
        if mark is None:
            # Until the first tick, value the symbol at the price it traded.
            mark = self._marks[symbol] = price_dec
        self._revalue(book, mark)
        self._touch()
        return realized_dec

    def copy(self) -> PortfolioTracker:
        """An independent tracker in the same state (books, marks, cash,
        peak, the day's activity), without the peak watcher: the session
        report keeps one, moved by the events it is delivered, so that its
        figures are the book as of each event rather than as of whenever its
        task ran."""
        twin = PortfolioTracker.__new__(PortfolioTracker)
        for name in PortfolioTracker.__slots__:
            setattr(twin, name, getattr(self, name))
        books: dict[str, _Book] = {}
        for symbol, book in self._books.items():
            copy = books[symbol] = _Book.__new__(_Book)
            for name in _Book.__slots__:
                setattr(copy, name, getattr(book, name))
        twin._books = books
        twin._marks = dict(self._marks)
        self._copy_activity_to(twin)
        twin._on_peak = None
        twin._snapshot = None
        twin._positions_view = None
        return twin

    def restore_peak(self, peak: Decimal) -> None:
        """After a restart: the high-water mark is at least ``peak`` (the one
        journaled before the crash, unrealised gains included), never lower
        than the one the replayed fills give."""
        units = _units(_money(peak, "peak"), MONEY_SCALE, up=True)
        if units > self._peak:
            self._peak = units
            self._peak_dec = None
            self._snapshot = None

    def watch_peak(self, callback: Callable[[Decimal], Decimal] | None) -> None:
        """Call ``callback(peak)`` when the peak equity rises past the level
        the previous call returned (the first call: past the current peak).
        It returns the next level: a watcher that journals the peak rounded
        up is told again only once the true peak passes what it wrote."""
        self._on_peak = callback
        self._peak_alert = self._peak

    def set_stop_loss(self, symbol: str, price: Decimal | None) -> None:
        """Record (or clear) the protective stop shown on the open position."""
        book = self._books.get(symbol)
        if book is None or not book.qty:
            return
        book.stop_loss = price
        book.cached = None
        self._positions_view = None
        self._snapshot = None

    def mark(self, symbol: str, price: Decimal) -> None:
        """Value ``symbol`` at ``price`` from now on: O(1), the marked
        position's PnL replaces its old share of the total."""
        marks = self._marks
        if marks.get(symbol) == price:
            return
        marks[symbol] = price
        self._snapshot = None
        book = self._books.get(symbol)
        if book is None:
            return
        qty = book.qty
        if not qty:
            # Nothing held in the symbol: its mark is not in equity, so the peak
            # cannot move; the fixed-point mark is taken when a fill opens one.
            return
        # _price_bounds and the upnl of _revalue, inlined: this is every tick
        # of a held symbol.
        num, den = price.as_integer_ratio()
        low, rest = divmod(num * _P, den)
        book.mark_dec = price
        book.mark_lo = low
        book.mark_hi = high = low + 1 if rest else low
        upnl = qty * (low if qty > 0 else high) - book.cost
        self._upnl += upnl - book.upnl
        book.upnl = upnl
        self._equity_dec = None
        equity = self._cash + self._upnl
        if equity > self._peak:
            self._peak_rises(equity)

    def on_market_data(self, tick: MarketData) -> None:
        """Mark the tick's symbol at its mid: the last trade bounces between bid
        and ask, and that bounce is not a change in what the position is worth."""
        self.mark(tick.symbol, tick.mid)

    def adjust_cash(self, amount: Decimal) -> None:
        """Deposit (positive) or withdraw (negative); moves the starting cash too,
        so ``cash == starting_cash + realized_pnl - fees`` keeps holding."""
        amount = _money(amount, "amount")
        self._starting_cash += amount
        self._cash += _units(amount, MONEY_SCALE, up=False)
        self._cash_exp = min(self._cash_exp, _exp(amount))
        self._cash_dec = None
        self._touch()

    def snapshot(self) -> Portfolio:
        """An immutable :class:`Portfolio`. Cached until the next fill or mark
        change, so asking on every tick costs nothing when nothing moved."""
        if self._snapshot is None:
            # Trusted: cash and peak are finite Decimals by construction (see
            # trusted_portfolio); the peak is never negative here.
            view = self._positions_view
            if view is None:
                view = self._positions_view = MappingProxyType(self.positions())
            self._snapshot = trusted_portfolio(
                self.cash,
                view,
                MappingProxyType(dict(self._marks)),
                self.peak_equity,
                self.activity,
            )
        return self._snapshot

    # --- internals --------------------------------------------------------------

    def _revalue(self, book: _Book, mark: Decimal) -> None:
        """Value ``book`` at ``mark``: its upnl, margin and their totals."""
        if book.mark_dec is not mark:
            book.mark_lo, book.mark_hi = _price_bounds(mark)
            book.mark_dec = mark
        qty = book.qty
        # A long is worth the floor of an inexact mark, a short the ceiling.
        upnl = qty * (book.mark_lo if qty > 0 else book.mark_hi) - book.cost if qty else 0
        self._upnl += upnl - book.upnl
        book.upnl = upnl
        margin = -((-abs(book.cost) * book.lev_den) // book.lev_num)  # ceiling
        self._margin += margin - book.margin
        book.margin = margin

    def _touch(self) -> None:
        self._snapshot = None
        self._equity_dec = None
        equity = self._cash + self._upnl
        if equity > self._peak:
            self._peak_rises(equity)

    def _peak_rises(self, equity: int) -> None:
        self._peak = equity
        self._peak_dec = None
        if equity > self._peak_alert and self._on_peak is not None:
            level = self._on_peak(self.peak_equity)
            # The next alert when the peak passes ``level``: in units, the
            # floor of it (equity > level exactly when units > floor).
            self._peak_alert = _units(_money(level, "peak alert"), MONEY_SCALE, up=False)
