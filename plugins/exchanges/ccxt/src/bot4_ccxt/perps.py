"""Linear perpetuals through ccxt: bot4's names for them and the venue's positions.

**Naming.** A USDT-margined linear perpetual is ``BASE-QUOTE-PERP`` in bot4
(``BTC-USDT-PERP``) and ``BASE/QUOTE:QUOTE`` in ccxt (``BTC/USDT:USDT``); a spot
market is ``BASE-QUOTE`` and ``BASE/QUOTE``. Only perpetuals settled in their
quote currency are named (inverse and dated contracts are left out): their
quantity is in the base asset like spot's, their margin and PnL in the quote.

**Quantities.** bot4 counts in the base asset. ccxt counts a contract market in
contracts of ``contractSize`` base units (OKX's BTC-USDT-SWAP: 0.01 BTC; Binance
and Bybit: 1), so every amount sent is divided by it and every amount read
multiplied; a market's steps and minimum are in base units.

**Positions** come from the venue (``fetch_positions``) as :class:`MarginPosition`:
signed quantity, entry, leverage, and what only the venue knows exactly:
liquidation price, margin held, mark price, margin mode. ``Position`` (bot4's
model) carries the first three.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from bot4.model import Position

__all__ = ["MARGIN_MODES", "MarginPosition", "bot4_symbol", "contract_size", "margin_position"]

MARGIN_MODES = ("isolated", "cross")
PERP_SUFFIX = "-PERP"
_PART = re.compile(r"^[A-Z0-9]{1,20}$")
_ZERO = Decimal(0)
_ONE = Decimal(1)


def _dec(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        out = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        return None
    return out if out.is_finite() else None


def bot4_symbol(market: Mapping[str, Any], kind: str) -> str | None:
    """bot4's name of a ccxt market of type ``kind`` ("spot", "swap"); None if
    bot4 does not trade it (inactive, inverse, dated, another type)."""
    if market.get("active") is False:
        return None
    base, quote = str(market.get("base") or "").upper(), str(market.get("quote") or "").upper()
    if not (_PART.match(base) and _PART.match(quote)):
        return None
    if kind == "spot":
        return f"{base}-{quote}" if market.get("spot") else None
    settle = str(market.get("settle") or "").upper()
    if market.get("swap") and market.get("linear") and settle == quote:
        return f"{base}-{quote}{PERP_SUFFIX}"
    return None


def contract_size(market: Mapping[str, Any]) -> Decimal:
    """Base units per ccxt amount unit (1 for spot)."""
    if not market.get("contract"):
        return _ONE
    size = _dec(market.get("contractSize"))
    return size if size is not None and size > 0 else _ONE


@attrs.frozen
class MarginPosition:
    """A perpetual position as the venue reports it (None: the venue did not say)."""

    symbol: str
    qty: Decimal  # signed, base units
    entry_price: Decimal
    leverage: Decimal
    margin_mode: str | None
    liquidation_price: Decimal | None
    margin: Decimal | None  # collateral held for it (isolated) or its initial margin
    mark_price: Decimal | None
    unrealized_pnl: Decimal | None

    def position(self) -> Position:
        return Position(
            symbol=self.symbol, qty=self.qty, entry_price=self.entry_price, leverage=self.leverage
        )


def margin_position(symbol: str, raw: Mapping[str, Any], size: Decimal) -> MarginPosition | None:
    """A ccxt position structure as a MarginPosition; None when flat."""
    contracts = _dec(raw.get("contracts")) or _ZERO
    qty = abs(contracts) * size
    if qty == 0:
        return None
    side = str(raw.get("side") or "").lower()
    if side == "short" or (side not in ("long", "short") and contracts < 0):
        qty = -qty
    leverage = _dec(raw.get("leverage"))
    margin = _dec(raw.get("collateral"))
    if margin is None or margin == 0:
        margin = _dec(raw.get("initialMargin"))
    liq = _dec(raw.get("liquidationPrice"))
    mode = raw.get("marginMode")
    return MarginPosition(
        symbol=symbol,
        qty=qty,
        entry_price=max(_dec(raw.get("entryPrice")) or _ZERO, _ZERO),
        leverage=leverage if leverage is not None and leverage > 0 else _ONE,
        margin_mode=str(mode).lower() if mode else None,
        liquidation_price=liq if liq is not None and liq > 0 else None,
        margin=margin,
        mark_price=_dec(raw.get("markPrice")),
        unrealized_pnl=_dec(raw.get("unrealizedPnl")),
    )
