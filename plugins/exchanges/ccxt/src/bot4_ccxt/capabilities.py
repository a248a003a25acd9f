"""What a ccxt exchange object claims (:class:`bot4.contracts.Capability`).

The claim narrows in three steps (**Stop orders** in :mod:`bot4_ccxt.exchange`'s
docstring): :func:`_client_caps`, what ccxt's client for the venue can create;
then the connection (:mod:`bot4_ccxt.connection`, ``_base_caps``) drops the
triggered order types for a market type the venue's profile does not send
them for, and adds MARGIN for perpetuals; then :func:`_market_caps`, once the
markets are loaded, drops a triggered order type some traded market does not
list.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here

from bot4.contracts import Capability

# Everything a ccxt exchange object may claim; the steps above narrow it per venue.
_CAPS = frozenset(
    {
        Capability.MARKET_ORDERS,
        Capability.LIMIT_ORDERS,
        Capability.STOP_ORDERS,
        Capability.TAKE_PROFIT_ORDERS,
        Capability.POSITIONS,
        Capability.STREAMING,
        Capability.PARTIAL_FILLS,
    }
)
# A triggered order type, the ccxt ``has`` entry for it, and the venue's names of it
# in a market's order types (Binance's ``info.orderTypes``: spot, then USDⓈ-M).
_TRIGGERS = (
    (Capability.STOP_ORDERS, "createStopLossOrder", ("STOP_LOSS", "STOP_MARKET")),
    (Capability.TAKE_PROFIT_ORDERS, "createTakeProfitOrder", ("TAKE_PROFIT", "TAKE_PROFIT_MARKET")),
)


@functools.cache
def _client_caps(exchange: str) -> frozenset[Capability]:
    """What ccxt's client for ``exchange`` can do (no request is made)."""
    has = getattr(ccxt, exchange)().has
    return _CAPS - {cap for cap, key, _ in _TRIGGERS if not has.get(key)}


def _market_caps(caps: frozenset[Capability], markets: Sequence[Any]) -> frozenset[Capability]:
    """``caps`` less a triggered order type some market does not list."""
    missing = set()
    for market in markets:
        info = market.get("info") if isinstance(market, Mapping) else None
        types = info.get("orderTypes") if isinstance(info, Mapping) else None
        if isinstance(types, list):
            missing |= {cap for cap, _, names in _TRIGGERS if not set(names) & set(types)}
    return caps - missing
