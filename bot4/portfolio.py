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

Exactness. Each position carries its *cost basis* (signed ``qty * price``
summed over the fills that opened it) rather than an average price. When part
of a position is closed, the share of the cost that leaves with it is
``cost * closed / |qty|``: that one division may round (half-even, to 12
decimal places), but the rounded amount is both booked as realised and removed
from the cost, so nothing is lost. Hence, exactly, for every sequence of fills::

    realised + unrealised(mark) == sum(sell qty*price) - sum(buy qty*price) + qty*mark

and a flat position has a cost of exactly zero. ``Position.entry_price`` in a
snapshot is ``cost / qty`` rounded; ``Portfolio.unrealized_pnl`` computed from
it can therefore differ from :attr:`PortfolioTracker.unrealized_pnl` in the
34th digit. Prefer the tracker's figures when exactness matters.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from decimal import Decimal
from types import MappingProxyType

from bot4.model import (
    ONE,
    ZERO,
    Fill,
    MarketData,
    Portfolio,
    Position,
    to_decimal,
    trusted_portfolio,
)

__all__ = ["PortfolioTracker"]

# A private context so the result never depends on what a caller did to the
# thread's decimal context. 34 digits (IEEE decimal128) leaves room for
# quantities and prices with 8 decimals each without rounding a product.
_CTX = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN)
# The cost share leaving with a partial close is rounded to this step, so that
# realised PnL keeps a short, fixed number of decimals and sums of it stay
# exact even in the default 28-digit context callers use.
_SHARE_STEP = Decimal("1e-12")
_NEVER = Decimal("Infinity")


def _money(value: object, name: str) -> Decimal:
    dec = to_decimal(value)
    if not isinstance(dec, Decimal) or not dec.is_finite():
        raise ValueError(f"{name} must be a finite decimal number, not {value!r}")
    return dec


class _Book:
    """Mutable state of one symbol; the frozen Position is built from it lazily."""

    __slots__ = ("cached", "cost", "leverage", "qty", "realized", "stop_loss")

    def __init__(self) -> None:
        self.qty = ZERO
        self.cost = ZERO  # signed: positive for a long, negative for a short
        self.realized = ZERO
        self.leverage = ONE
        self.stop_loss: Decimal | None = None
        self.cached: Position | None = None


class PortfolioTracker:
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
        "_fees",
        "_marks",
        "_on_peak",
        "_peak",
        "_peak_alert",
        "_realized",
        "_snapshot",
        "_starting_cash",
    )

    def __init__(self, cash: Decimal | int | str = ZERO) -> None:
        start = _money(cash, "cash")
        self._starting_cash = start
        self._cash = start
        self._realized = ZERO
        self._fees = ZERO
        self._books: dict[str, _Book] = {}
        self._marks: dict[str, Decimal] = {}
        self._peak = max(start, ZERO)
        # A watcher (the journal) is told when the peak passes _peak_alert;
        # without one the alert level is infinite and the test never passes.
        self._peak_alert = _NEVER
        self._on_peak: Callable[[Decimal], Decimal] | None = None
        self._snapshot: Portfolio | None = None

    # --- figures ----------------------------------------------------------------

    @property
    def starting_cash(self) -> Decimal:
        return self._starting_cash

    @property
    def cash(self) -> Decimal:
        """``starting_cash + realized_pnl - fees``."""
        return self._cash

    @property
    def realized_pnl(self) -> Decimal:
        return self._realized

    @property
    def fees(self) -> Decimal:
        return self._fees

    @property
    def peak_equity(self) -> Decimal:
        return self._peak

    def qty(self, symbol: str) -> Decimal:
        """Signed net quantity (positive long, negative short, zero flat)."""
        book = self._books.get(symbol)
        return book.qty if book else ZERO

    def cost(self, symbol: str) -> Decimal:
        """Signed cost basis of the open position (zero when flat)."""
        book = self._books.get(symbol)
        return book.cost if book else ZERO

    def mark_price(self, symbol: str) -> Decimal | None:
        return self._marks.get(symbol)

    def unrealized_pnl(self, symbol: str | None = None) -> Decimal:
        """Exact unrealised PnL of one symbol, or of all when ``symbol`` is None.
        A position never marked is valued at its own entry (zero PnL)."""
        if symbol is not None:
            book = self._books.get(symbol)
            return self._upnl(symbol, book) if book else ZERO
        return sum((self._upnl(s, b) for s, b in self._books.items()), ZERO)

    @property
    def equity(self) -> Decimal:
        return self._cash + self.unrealized_pnl()

    def margin_used(self) -> Decimal:
        """Initial margin of open positions: ``|cost| / leverage`` summed."""
        return sum(
            (_CTX.divide(abs(b.cost), b.leverage) for b in self._books.values() if b.qty),
            ZERO,
        )

    def position(self, symbol: str) -> Position | None:
        """The open position in ``symbol`` or None when flat."""
        book = self._books.get(symbol)
        if book is None or not book.qty:
            return None
        if book.cached is None:
            book.cached = Position(
                symbol=symbol,
                qty=book.qty,
                entry_price=_CTX.divide(book.cost, book.qty),
                leverage=book.leverage,
                realized_pnl=book.realized,
                stop_loss=book.stop_loss,
            )
        return book.cached

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
        return book.realized if book else ZERO

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
        book = self._books.get(fill.symbol)
        if book is None:
            book = self._books[fill.symbol] = _Book()
        sign = fill.side.sign
        qty, price = fill.qty, fill.price
        realized = ZERO
        opened = False

        if book.qty == 0 or (book.qty > 0) == (sign > 0):
            # Open or add: the cost basis grows by the fill's notional.
            book.cost = _CTX.add(book.cost, _CTX.multiply(sign * qty, price))
            book.qty = _CTX.add(book.qty, sign * qty)
            opened = True
        else:
            held = abs(book.qty)
            closing = min(qty, held)
            if closing == held:
                share = book.cost  # the whole basis leaves: no division, no rounding
            else:
                share = _CTX.divide(_CTX.multiply(book.cost, closing), held).quantize(
                    _SHARE_STEP, context=_CTX
                )
            # Value received for the closed part minus its share of the cost:
            # a long sells (sign -1) and receives closing*price; a short buys
            # back (sign +1) and pays it.
            realized = _CTX.subtract(_CTX.multiply(-sign * closing, price), share)
            book.cost = _CTX.subtract(book.cost, share)
            book.qty = _CTX.add(book.qty, sign * closing)
            rest = qty - closing
            if rest:
                # Flip: what is left of the fill opens a position the other way.
                book.cost = _CTX.multiply(sign * rest, price)
                book.qty = sign * rest
                opened = True

        if leverage is not None:
            book.leverage = _money(leverage, "leverage")
            if book.leverage <= 0:
                raise ValueError(f"leverage must be positive, not {leverage!r}")
        if book.qty == 0:
            book.cost = ZERO
            book.stop_loss = None
        elif opened and stop_loss is not None:
            book.stop_loss = stop_loss
        book.realized = _CTX.add(book.realized, realized)
        book.cached = None

        self._realized = _CTX.add(self._realized, realized)
        self._fees = _CTX.add(self._fees, fill.fee)
        self._cash = _CTX.subtract(_CTX.add(self._cash, realized), fill.fee)
        if fill.symbol not in self._marks:
            # Until the first tick, value the symbol at the price it traded.
            self._marks[fill.symbol] = price
        self._touch()
        return realized

    def restore_peak(self, peak: Decimal) -> None:
        """After a restart: the high-water mark is at least ``peak`` (the one
        journaled before the crash, unrealised gains included), never lower
        than the one the replayed fills give."""
        peak = _money(peak, "peak")
        if peak > self._peak:
            self._peak = peak
            self._snapshot = None

    def watch_peak(self, callback: Callable[[Decimal], Decimal] | None) -> None:
        """Call ``callback(peak)`` when the peak equity rises past the level
        the previous call returned (the first call: past the current peak).
        It returns the next level: a watcher that journals the peak rounded
        up is told again only once the true peak passes what it wrote."""
        self._on_peak = callback
        self._peak_alert = self._peak if callback is not None else _NEVER

    def set_stop_loss(self, symbol: str, price: Decimal | None) -> None:
        """Record (or clear) the protective stop shown on the open position."""
        book = self._books.get(symbol)
        if book is None or not book.qty:
            return
        book.stop_loss = price
        book.cached = None
        self._snapshot = None

    def mark(self, symbol: str, price: Decimal) -> None:
        """Value ``symbol`` at ``price`` from now on."""
        if self._marks.get(symbol) == price:
            return
        self._marks[symbol] = price
        book = self._books.get(symbol)
        if book is None or not book.qty:
            # Nothing held in the symbol: its mark is not in equity, so the peak
            # cannot move; only the snapshot (which lists every mark) is stale.
            self._snapshot = None
            return
        self._touch()

    def on_market_data(self, tick: MarketData) -> None:
        """Mark the tick's symbol at its mid: the last trade bounces between bid
        and ask, and that bounce is not a change in what the position is worth."""
        self.mark(tick.symbol, tick.mid)

    def adjust_cash(self, amount: Decimal) -> None:
        """Deposit (positive) or withdraw (negative); moves the starting cash too,
        so ``cash == starting_cash + realized_pnl - fees`` keeps holding."""
        amount = _money(amount, "amount")
        self._starting_cash += amount
        self._cash += amount
        self._touch()

    def snapshot(self) -> Portfolio:
        """An immutable :class:`Portfolio`. Cached until the next fill or mark
        change, so asking on every tick costs nothing when nothing moved."""
        if self._snapshot is None:
            # Trusted: cash and peak are finite Decimals by construction (see
            # trusted_portfolio); the peak is clamped here as Portfolio requires.
            self._snapshot = trusted_portfolio(
                self._cash,
                MappingProxyType(self.positions()),
                MappingProxyType(dict(self._marks)),
                max(self._peak, ZERO),
            )
        return self._snapshot

    # --- internals --------------------------------------------------------------

    def _upnl(self, symbol: str, book: _Book) -> Decimal:
        if not book.qty:
            return ZERO
        mark = self._marks.get(symbol)
        if mark is None:
            return ZERO
        return _CTX.subtract(_CTX.multiply(book.qty, mark), book.cost)

    def _touch(self) -> None:
        self._snapshot = None
        equity = self.equity
        if equity > self._peak:
            self._peak = equity
            if equity > self._peak_alert and self._on_peak is not None:
                self._peak_alert = self._on_peak(equity)
