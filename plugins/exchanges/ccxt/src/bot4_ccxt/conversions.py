"""ccxt's records in bot4's terms: numbers, markets, tickers, orders.

Pure functions, no requests. ccxt's numbers (strings: the client runs with
``number = str``) as Decimal (:func:`_d`); a quantity and a price on a
market's grid, and as the text a request carries; a market's rules
(:class:`~bot4.contracts.MarketInfo`); a ticker as MarketData (the ``ccxt``
feed, :mod:`bot4_ccxt.feed`, converts with it too); an order record this
exchange object did not place as bot4's Order. ccxt counts contract markets
in contracts of ``contractSize`` base units: the functions that read an
amount take that ``size``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from bot4.contracts import MarketInfo
from bot4.model import MarketData, Order, OrderType, Side
from bot4_ccxt.triggers import trigger_kind

_ZERO = Decimal(0)


def _d(value: object) -> Decimal:
    """A ccxt number (a string: the client runs with ``number = str``) as Decimal."""
    if value is None:
        return _ZERO
    if isinstance(value, float):
        return Decimal(repr(value))
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return _ZERO


def _round_down(qty: Decimal, step: Decimal) -> Decimal:
    return (qty / step).to_integral_value(rounding="ROUND_DOWN") * step


def _round_half_even(price: Decimal, step: Decimal) -> Decimal:
    return (price / step).to_integral_value(rounding="ROUND_HALF_EVEN") * step


def _id_key(value: object) -> tuple[int, str]:
    text = str(value or "")
    return (int(text), "") if text.isdigit() else (0, text)


def _market_info(symbol: str, market: Mapping[str, Any], size: Decimal) -> MarketInfo | None:
    """The market's rules in base units (ccxt's amounts are in contracts of ``size``)."""
    precision = market.get("precision") or {}
    limits = (market.get("limits") or {}).get("amount") or {}
    price_step, qty_step = _step(precision.get("price")), _step(precision.get("amount"))
    if price_step is None or qty_step is None:
        return None
    qty_step *= size
    min_qty = _d(limits.get("min")) * size if limits.get("min") is not None else qty_step
    return MarketInfo(
        symbol, price_step, qty_step, max(min_qty, qty_step), str(market.get("quote") or "USDT")
    )


def _step(value: object) -> Decimal | None:
    """A precision as a step: ccxt gives a tick size (TICK_SIZE mode) or a number
    of decimals (DECIMAL_PLACES mode, a whole number >= 1)."""
    if value is None:
        return None
    step = _d(value)
    if step <= 0:
        return None
    if step >= 1 and step == step.to_integral_value() and step != 1:
        return Decimal(1).scaleb(-int(step))
    return step


def _market_data(exchange: str, symbol: str, t: Mapping[str, Any]) -> MarketData | None:
    bid, ask = _d(t.get("bid")), _d(t.get("ask"))
    last = _d(t.get("last")) or (bid + ask) / 2
    if bid <= 0 or ask <= 0 or bid > ask or last <= 0:
        return None
    stamp = t.get("timestamp")
    when = datetime.fromtimestamp(int(stamp) / 1000, UTC) if stamp else datetime.now(UTC)
    volume = _d(t.get("baseVolume"))
    return MarketData(
        symbol=symbol,
        exchange=exchange,
        bid=bid,
        ask=ask,
        last=last,
        volume=max(volume, _ZERO),
        timestamp=when,
    )


def _order_of(raw: Mapping[str, Any], symbol: str, coid: str, size: Decimal) -> Order:
    """Rebuild bot4's Order from the venue's record (an order this object did not place)."""
    kind = {
        "market": OrderType.MARKET,
        "limit": OrderType.LIMIT,
        "limit_maker": OrderType.LIMIT,
        "stop_loss": OrderType.STOP_LOSS,
        "stop": OrderType.STOP_LOSS,
        "stop_market": OrderType.STOP_LOSS,
        "take_profit": OrderType.TAKE_PROFIT,
        "take_profit_market": OrderType.TAKE_PROFIT,
    }.get(str(raw.get("type") or "").lower(), OrderType.LIMIT)
    # ccxt reads Binance's STOP_MARKET as "market": the kind is in the venue's fields.
    kind = trigger_kind(raw) or kind
    trigger = raw.get("triggerPrice") or raw.get("stopPrice")
    if kind in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT):
        price: Decimal | None = _d(trigger) or None
    elif kind is OrderType.LIMIT:
        price = _d(raw.get("price")) or None
    else:
        price = None
    if kind is not OrderType.MARKET and price is None:
        kind, price = OrderType.MARKET, None
    return Order(
        client_order_id=coid,
        symbol=symbol,
        side=Side(str(raw.get("side") or "buy").lower()),
        type=kind,
        qty=_d(raw.get("amount")) * size or Decimal(1),
        reduce_only=bool(raw.get("reduceOnly")),
        price=price,
        strategy="venue",
    )
