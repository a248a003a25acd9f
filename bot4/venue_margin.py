"""What a venue reports of a held position's margin, checked before a fact
may use it: the liquidation price, the margin held, the margin balance, the
maintenance rate, the mark price and the funding paid.

The kernel's margin desk (:mod:`bot4.margin_desk`) reads the venue's margin
positions now and then (``fetch_margin_positions()``: the paper venue's
:class:`bot4_paper.margin_book.MarginState`, the ccxt plugin's
:class:`bot4_ccxt.perps.MarginPosition`) and keeps one :class:`VenueMargin`
per held symbol; the risk facts (:mod:`bot4.risk.facts`) take the venue's
figures from it and fall back to bot4's formula for anything missing.

A venue's answer is input from outside, so every figure is checked and a bad
one is dropped (the formula stands in), never trusted and never a crash:

* a number must be a finite Decimal (or int) within +/-1e15; a price (the
  liquidation price, the mark) must be above zero, a margin at least zero, a
  maintenance rate in [0, 1); a liquidation price of 0, NaN, a string, a
  negative number is no liquidation price;
* the answer must describe the position bot4 holds: a row that reports a
  quantity other than the tracker's (a venue lagging behind a fill) is not
  used at all, nor are two rows for one symbol (the desk trusts neither),
  and each view remembers the very Position object it was read against, so
  a fill (which replaces that object) retires it at once;
* a reported liquidation price is never farther from the entry than the
  margin balance allows (:meth:`VenueMargin.liquidation`): a long cannot be
  liquidated below ``entry - balance / |qty|`` (the price at which it has
  lost its whole balance), whatever the venue says; a farther figure is
  moved to that bound, so a venue cannot make the position look safer than
  its own collateral makes it.

What the desk read is published as ``exchange.margin`` (:func:`as_record`)
so that ``bot4 replay`` of a recording made against a live venue plays the
same figures back (:func:`from_record`, read as any venue row is).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from bot4.model import ZERO, Position

__all__ = [
    "MARGIN_TOPIC",
    "RecordedMargin",
    "VenueMargin",
    "as_record",
    "from_record",
    "read_venue_margin",
]

# Where the desk publishes what it read (a recording keeps it for replay).
MARGIN_TOPIC = "exchange.margin"

_LIMIT = Decimal(10) ** 15
_ONE = Decimal(1)


@attrs.frozen(slots=True, eq=False)
class VenueMargin:
    """One held position's margin as the venue reported it (None: not
    reported, or refused by the checks in the module docstring)."""

    symbol: str
    position: Position  # the tracker's position it was read against (by identity)
    liquidation_price: Decimal | None
    margin: Decimal | None  # margin held for the position (isolated: collateral)
    balance: Decimal | None  # its margin balance: isolated collateral, or the cross wallet
    maintenance_rate: Decimal | None  # maintenance margin / notional at the venue's mark
    mark: Decimal | None  # the venue's mark price when read ...
    mid: Decimal | None  # ... and the symbol's mid then (to carry the mark forward)
    funding_paid: Decimal | None  # funding the position paid so far (positive: paid)

    def describes(self, position: Position) -> bool:
        """This view was read against ``position`` (the tracker's current one)."""
        return self.position is position

    def liquidation(self) -> Decimal | None:
        """The venue's liquidation price, moved no farther from the entry than
        the margin balance allows (see the module docstring); None when the
        venue reported none."""
        liq = self.liquidation_price
        if liq is None:
            return None
        position = self.position
        size = abs(position.qty)
        if size == 0:
            return None
        balance = self.balance if self.balance is not None else self.margin
        if balance is None:
            balance = position.margin()
        reach = balance / size
        if position.qty > 0:
            bound = position.entry_price - reach
            return liq if liq >= bound else bound
        bound = position.entry_price + reach
        return liq if liq <= bound else bound

    def mark_at(self, mid: Decimal) -> Decimal | None:
        """The venue's mark carried to ``mid``: the mark when read plus the
        mid's move since (the mark-to-last basis moves slowly), None when the
        venue reported no mark or the result is not a positive price."""
        if self.mark is None:
            return None
        if self.mid is None or mid <= 0:
            return self.mark
        carried = self.mark + (mid - self.mid)
        return carried if carried > 0 else None


@attrs.frozen
class RecordedMargin:
    """A view as a recording keeps it: a venue row of its own shape."""

    symbol: str
    qty: Decimal
    liquidation_price: Decimal | None
    margin: Decimal | None
    balance: Decimal | None
    maintenance_rate: Decimal | None
    mark_price: Decimal | None
    funding_paid: Decimal | None


_FIELDS = ("liquidation_price", "margin", "balance", "maintenance_rate", "funding_paid")


def as_record(view: VenueMargin) -> dict[str, Any]:
    """A view as JSON-able text (Decimals as strings, None kept)."""
    out: dict[str, Any] = {"symbol": view.symbol, "qty": str(view.position.qty)}
    for name in _FIELDS:
        value = getattr(view, name)
        out[name] = None if value is None else str(value)
    out["mark_price"] = None if view.mark is None else str(view.mark)
    return out


def from_record(raw: Mapping[str, Any]) -> RecordedMargin:
    """:func:`as_record`'s text back as a row (ValueError when it is not one)."""

    def number(name: str) -> Decimal | None:
        value = raw.get(name)
        if value is None:
            return None
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{name} {value!r} is not a number") from None

    qty = number("qty")
    if qty is None or not isinstance(raw.get("symbol"), str):
        raise ValueError("a margin record needs a symbol and a qty")
    return RecordedMargin(
        symbol=raw["symbol"],
        qty=qty,
        liquidation_price=number("liquidation_price"),
        margin=number("margin"),
        balance=number("balance"),
        maintenance_rate=number("maintenance_rate"),
        mark_price=number("mark_price"),
        funding_paid=number("funding_paid"),
    )


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    else:
        return None  # floats, strings: a venue object gives Decimals
    try:
        if not number.is_finite() or abs(number) > _LIMIT:
            return None
    except InvalidOperation:
        return None
    return number


def _price(value: object) -> Decimal | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _amount(value: object) -> Decimal | None:
    number = _number(value)
    return number if number is not None and number >= 0 else None


def read_venue_margin(row: object, position: Position, mid: Decimal | None) -> VenueMargin | None:
    """One row of a venue's margin positions as a checked view of
    ``position`` (the tracker's, in the row's symbol); None when the row does
    not describe it. Reads either shape by attribute (the paper venue's
    MarginState, the ccxt plugin's MarginPosition); never raises."""
    try:
        return _read(row, position, mid)
    except Exception:  # an odd object from a plugin: no view, the formula stands
        return None


def _read(row: object, position: Position, mid: Decimal | None) -> VenueMargin | None:
    if position.qty == 0:
        return None
    if hasattr(row, "qty"):
        qty = _number(row.qty)
        if qty is None or qty != position.qty:
            return None  # another position than the one held (the venue lags a fill)
    mode = getattr(row, "mode", None)
    if mode is None:
        mode = getattr(row, "margin_mode", None)
    cross = mode == "cross"
    mark = _price(getattr(row, "mark", None))
    if mark is None:
        mark = _price(getattr(row, "mark_price", None))
    if hasattr(row, "collateral"):  # the paper venue: collateral is the cross wallet in cross
        collateral = _number(row.collateral)
        balance = collateral
        margin = None if cross else _amount(collateral)
    else:
        margin = _amount(getattr(row, "margin", None))
        balance = _number(row.balance) if hasattr(row, "balance") else margin
    rate: Decimal | None = None
    maintenance = _amount(getattr(row, "maintenance", None))
    if maintenance is not None and mark is not None:
        rate = maintenance / (abs(position.qty) * mark)
    elif hasattr(row, "maintenance_rate"):  # a recorded view
        rate = _number(row.maintenance_rate)
    if rate is not None and not ZERO <= rate < _ONE:
        rate = None
    funding = _number(getattr(row, "funding_paid", None))
    return VenueMargin(
        symbol=position.symbol,
        position=position,
        liquidation_price=_price(getattr(row, "liquidation_price", None)),
        margin=margin,
        balance=balance,
        maintenance_rate=rate,
        mark=mark,
        mid=mid if mid is not None and mid > 0 else None,
        funding_paid=funding,
    )
