"""The fixed-point units of :class:`bot4.portfolio.PortfolioTracker`, and the
conversions between them and Decimal.

The tracker keeps every figure as a Python ``int`` counting a fixed unit (the
scale; the table and the rounding rules are in :mod:`bot4.portfolio`'s
docstring). This module holds the scales (``QTY_SCALE``, ``PRICE_SCALE``,
``MONEY_SCALE`` and their powers of ten) and the conversions at the edges:

* in: :func:`_money` (checks a Decimal input), :func:`_units` and
  :func:`_units_exp` (a Decimal to units, floor or ceiling, with the
  exponent hint for output), :func:`_price_bounds` (a price as floor and
  ceiling), :func:`_exp`;
* out: :func:`_to_decimal` (units to an exact Decimal with the decimals
  the inputs would have given);
* :func:`_round_half_even`, the one rounding division of a partial close.

It imports only :mod:`bot4.model`. :mod:`bot4.portfolio` imports these by
name, so its hot methods (``apply``, ``mark``) call them as plain module
globals, as when they were defined there, and re-exports the public scales.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

from bot4.model import ZERO, to_decimal

__all__ = ["MONEY_SCALE", "PRICE_SCALE", "QTY_SCALE"]

QTY_SCALE = 18  # decimals of a quantity unit
PRICE_SCALE = 12  # decimals of a price unit
MONEY_SCALE = QTY_SCALE + PRICE_SCALE  # qty units * price units = money units
_Q = 10**QTY_SCALE
_P = 10**PRICE_SCALE
_M = 10**MONEY_SCALE
# The cost share leaving with a partial close is rounded half-even to 1e-12
# of the quote (as the Decimal tracker did), in money units.
_SHARE_UNIT = 10 ** (MONEY_SCALE - 12)
_SHARE_EXP = -12

# Conversions in and out are exact: enough digits for any scaled figure.
_EXACT = decimal.Context(prec=200, rounding=decimal.ROUND_FLOOR, traps=[decimal.Inexact])


def _money(value: object, name: str) -> Decimal:
    dec = to_decimal(value)
    if not isinstance(dec, Decimal) or not dec.is_finite():
        raise ValueError(f"{name} must be a finite decimal number, not {value!r}")
    return dec


# Decimals of a fraction whose reduced denominator is the key (2^a 5^b).
_DECIMALS: dict[int, int] = {1: 0}


def _decimals(den: int) -> int:
    known = _DECIMALS.get(den)
    if known is None:
        known, power = 0, 1
        while power % den:
            known += 1
            power *= 10
        if len(_DECIMALS) < 4096:  # the denominators a session sees are few
            _DECIMALS[den] = known
    return known


def _exp(value: Decimal) -> int:
    """The exponent hint of ``value``: minus its decimals (trailing zeros of
    the Decimal's own exponent are not kept; output keeps the value exact)."""
    return -_decimals(value.as_integer_ratio()[1])


def _units(value: Decimal, scale: int, *, up: bool) -> int:
    """``value`` in units of 1e-``scale``, exact when it fits, else rounded
    up (``up``) or down."""
    power: int = 10**scale
    num, den = value.as_integer_ratio()
    whole, rest = divmod(num * power, den)  # floor
    return whole + 1 if rest and up else whole


def _units_exp(value: Decimal, power: int, *, up: bool) -> tuple[int, int, bool]:
    """(units of 1/``power``, exponent hint, exact) of ``value``, in one
    conversion: floor, or ceiling when ``up``."""
    num, den = value.as_integer_ratio()
    whole, rest = divmod(num * power, den)
    return (whole + 1 if rest and up else whole), -_decimals(den), not rest


def _price_bounds(value: Decimal) -> tuple[int, int]:
    """A price as (floor, ceiling) in price units; equal when exact."""
    # as_integer_ratio and int division: about half the cost of scaleb + int.
    num, den = value.as_integer_ratio()
    low, rest = divmod(num * _P, den)  # floor
    return low, low + 1 if rest else low


def _to_decimal(units: int, scale: int, exp: int = 0) -> Decimal:
    """An exact Decimal of ``units`` * 1e-``scale`` with at least ``-exp``
    decimals (the exponent the Decimal arithmetic of the inputs would give;
    more decimals when the value needs them). Zero is plain ``0``."""
    if not units:
        return ZERO
    if exp < -scale:
        exp = -scale
    drop = scale + exp  # trailing digits that may go
    if drop > 0:
        step = 10**drop
        if units % step == 0:
            return Decimal(units // step).scaleb(exp, _EXACT)
        while drop > 0 and units % 10 == 0:
            units //= 10
            drop -= 1
            scale -= 1
    return Decimal(units).scaleb(-scale, _EXACT)


def _round_half_even(num: int, den: int) -> int:
    """num / den (den > 0) rounded half-even to an integer."""
    q, r = divmod(num, den)
    twice = 2 * r
    if twice > den or (twice == den and q % 2):
        q += 1
    return q
