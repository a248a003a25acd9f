"""The per-symbol record of :class:`bot4.portfolio.PortfolioTracker`.

:class:`_Book` is the tracker's mutable state of one symbol, every figure in
the fixed-point units of :mod:`bot4.portfolio_units` (quantity, cost basis,
realised PnL, margin, the mark as floor and ceiling, the unrealised PnL it
adds to the tracker's total) beside the exponents the Decimal outputs are
built with. The tracker alone writes it, in ``apply``, ``mark`` and
``_revalue``; the frozen :class:`~bot4.model.Position` a snapshot shows is
built from it when asked and cached on it until the next change.

It imports only :mod:`bot4.model`; :mod:`bot4.portfolio` imports it by name.
"""

from __future__ import annotations

from decimal import Decimal

from bot4.model import ONE, Position


class _Book:
    """Mutable state of one symbol in fixed point; the frozen Position is
    built from it lazily."""

    __slots__ = (
        "cached",
        "cost",
        "cost_exp",
        "lev_den",
        "lev_num",
        "leverage",
        "margin",
        "mark_dec",
        "mark_hi",
        "mark_lo",
        "qty",
        "qty_exp",
        "realized",
        "realized_exp",
        "stop_loss",
        "upnl",
    )

    def __init__(self) -> None:
        self.qty = 0  # quantity units, signed
        self.qty_exp = 0  # the exponent of the Decimal quantity (for output)
        self.cost = 0  # money units, signed: positive for a long
        self.cost_exp = 0
        self.realized = 0  # money units
        self.realized_exp = 0
        self.leverage = ONE
        self.lev_num, self.lev_den = 1, 1  # leverage as a fraction
        self.margin = 0  # money units: ceil(|cost| / leverage)
        self.mark_dec: Decimal | None = None  # the mark the two bounds are of
        self.mark_lo = 0  # price units
        self.mark_hi = 0
        self.upnl = 0  # money units: qty * mark - cost, in the tracker's total
        self.stop_loss: Decimal | None = None
        self.cached: Position | None = None
