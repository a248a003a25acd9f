"""The trading rules of the paper venue's markets: the default markets, the
rounding of quantities and prices, and the rules of a symbol first seen in
the feed.

:class:`~bot4_paper.engine.PaperEngine` rounds every order with
:func:`round_qty` (DOWN, never trade more than asked) and :func:`round_price`
(HALF-EVEN) to its market's increments, and, when it infers markets, makes a
symbol's :class:`~bot4.contracts.MarketInfo` from its first tick with
:func:`_infer_market`. Pure functions of their arguments; the engine
re-exports the public names (``bot4_paper.engine.round_qty`` and the rest).
"""

from __future__ import annotations

import decimal
from collections.abc import Mapping
from decimal import Decimal

from bot4.contracts import MarketInfo
from bot4.model import MarketData

__all__ = ["DEFAULT_MARKETS", "round_price", "round_qty"]

DEFAULT_MARKETS: Mapping[str, MarketInfo] = {
    "BTC-USDT": MarketInfo("BTC-USDT", Decimal("0.01"), Decimal("0.0001"), Decimal("0.0001")),
    "ETH-USDT": MarketInfo("ETH-USDT", Decimal("0.01"), Decimal("0.001"), Decimal("0.001")),
}


def round_qty(qty: Decimal, increment: Decimal) -> Decimal:
    """Round a quantity DOWN to a multiple of ``increment``."""
    return (qty / increment).to_integral_value(decimal.ROUND_DOWN) * increment


def round_price(price: Decimal, increment: Decimal) -> Decimal:
    """Round a price HALF-EVEN to a multiple of ``increment``."""
    return (price / increment).to_integral_value(decimal.ROUND_HALF_EVEN) * increment


def _infer_market(tick: MarketData) -> MarketInfo:
    """Trading rules for a symbol not configured: price increment from the
    quote's decimals (at least 0.01, at most 1e-8), qty increment 1e-6."""
    exponents = [int(p.as_tuple().exponent) for p in (tick.bid, tick.ask, tick.last)]
    exp = max(-8, min([-2, *exponents]))
    step = Decimal(1).scaleb(exp)
    quote = tick.symbol.split("-")[1]
    return MarketInfo(tick.symbol, step, Decimal("0.000001"), Decimal("0.000001"), quote)
