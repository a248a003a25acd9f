"""Stop-loss and take-profit orders through ccxt, per venue: how bot4's
``STOP_LOSS``/``TAKE_PROFIT`` orders are sent, found and read back.

bot4's stop and take-profit orders are market orders triggered at their
price: a sell stop when the price falls to it, a sell take-profit when it
rises to it (buys the other way round). ccxt's unified parameters carry them,
but each venue files them differently (``VenueProfile.trigger_orders``):

``unified`` (Binance spot, OKX)
    ``stopLossPrice`` / ``takeProfitPrice``; found, listed and cancelled like
    any order.
``binance_algo`` (Binance USDⓈ-M)
    ``stopLossPrice`` / ``takeProfitPrice`` with ``workingType`` and
    ``reduceOnly``: ccxt sends ``STOP_MARKET`` / ``TAKE_PROFIT_MARKET`` to the
    Algo Service (``POST /fapi/v1/algoOrder``, the client id as
    ``clientAlgoId``, the price as ``triggerPrice``; Binance moved conditional
    orders there in December 2025 and refuses them on ``/fapi/v1/order``).
    Found, listed and cancelled with ``params={"trigger": True}``
    (``/fapi/v1/algoOrder``, ``/fapi/v1/openAlgoOrders``). A triggered algo
    order names the ordinary order it placed (``actualOrderId``), which holds
    the fills: bot4 reads that order for the status and the filled quantity
    and books its fills under the stop's client id. ``closePosition`` is not
    used: the kernel sizes every protective order to the position.
``bybit_conditional`` (Bybit v5 linear)
    ``triggerPrice`` with ``triggerDirection`` (``descending`` for a sell
    stop, ``ascending`` for a sell take-profit), ``triggerBy`` and
    ``reduceOnly`` on ``/v5/order/create`` (ccxt's ``stopLossPrice`` would
    make every such order reduce-only; an entry stop must not be). Found and
    listed with ``params={"trigger": True}`` (``orderFilter=StopOrder``),
    cancelled like any order; once triggered it is the same order.

**Trigger price** (config ``trigger_price``): ``mark`` (default: Binance
``MARK_PRICE``, Bybit ``MarkPrice``), the price the venue liquidates on, so a
stop and the liquidation it guards against watch one price and a wick of the
venue's last trade does not set the stop off; or ``last`` (``CONTRACT_PRICE``,
``LastPrice``: the venues' own default, the price of the last trade).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from bot4.model import Order, OrderType, Side
from bot4_ccxt.venues import VenueProfile

__all__ = [
    "TRIGGER_PRICES",
    "TRIGGER_TYPES",
    "actual_order_id",
    "lookup_params",
    "merged_with_actual",
    "order_params",
    "separate",
    "trigger_kind",
]

TRIGGER_TYPES = (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT)
TRIGGER_PRICES = ("mark", "last")
_WORKING_TYPE = {"mark": "MARK_PRICE", "last": "CONTRACT_PRICE"}
_TRIGGER_BY = {"mark": "MarkPrice", "last": "LastPrice"}


def _text(value: Decimal) -> str:
    out = format(value, "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def _falls(kind: OrderType, side: Side) -> bool:
    """Whether a ``side`` order of ``kind`` triggers on a falling price."""
    return (kind is OrderType.STOP_LOSS) == (side is Side.SELL)


def order_params(
    profile: VenueProfile | None, order: Order, watch: str, swap: bool
) -> tuple[str, dict[str, Any]]:
    """ccxt's order type and params for ``order`` (its client id aside)."""
    if order.type is OrderType.MARKET:
        return "market", {}
    if order.type is OrderType.LIMIT:
        return "limit", {}
    assert order.price is not None
    price = _text(order.price)
    style = profile.trigger_orders if profile is not None else "unified"
    if style == "bybit_conditional" and swap:
        direction = "descending" if _falls(order.type, order.side) else "ascending"
        return "market", {
            "triggerPrice": price,
            "triggerDirection": direction,
            "triggerBy": _TRIGGER_BY[watch],
        }
    key = "stopLossPrice" if order.type is OrderType.STOP_LOSS else "takeProfitPrice"
    params: dict[str, Any] = {key: price}
    if style == "binance_algo" and swap:
        params["workingType"] = _WORKING_TYPE[watch]
    return "market", params


def lookup_params(profile: VenueProfile | None, trigger: bool, swap: bool) -> dict[str, Any]:
    """What ccxt needs to find, list or cancel a trigger order on this venue."""
    if not trigger or not swap or profile is None or profile.trigger_orders == "unified":
        return {}
    return {"trigger": True}


def separate(profile: VenueProfile | None, swap: bool) -> bool:
    """Whether the venue files trigger orders apart (looked up on their own)."""
    return bool(lookup_params(profile, True, swap))


def trigger_kind(raw: Mapping[str, Any]) -> OrderType | None:
    """STOP_LOSS or TAKE_PROFIT for a ccxt record of a trigger order, else None.

    ccxt reports Binance's ``STOP_MARKET`` as type ``market``, so the kind is
    read from the venue's own fields: Binance's ``type``/``orderType``,
    Bybit's ``triggerDirection`` against the side."""
    info = raw.get("info") if isinstance(raw.get("info"), Mapping) else {}
    assert isinstance(info, Mapping)
    name = str(info.get("orderType") or info.get("type") or raw.get("type") or "").upper()
    if name.startswith("TAKE_PROFIT"):
        return OrderType.TAKE_PROFIT
    if name in ("STOP", "STOP_MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT"):
        return OrderType.STOP_LOSS
    if raw.get("takeProfitPrice") and not raw.get("stopLossPrice"):
        return OrderType.TAKE_PROFIT
    trigger = raw.get("triggerPrice") or raw.get("stopPrice")
    if not trigger or str(trigger) in ("0", "0.0"):
        return None
    direction = str(info.get("triggerDirection") or "")
    side = Side.BUY if str(raw.get("side") or "").lower() == "buy" else Side.SELL
    if direction in ("1", "2"):
        falls = direction == "2"
        return OrderType.STOP_LOSS if falls == (side is Side.SELL) else OrderType.TAKE_PROFIT
    return OrderType.STOP_LOSS


def actual_order_id(raw: Mapping[str, Any]) -> str | None:
    """The ordinary order a triggered Binance algo order placed (None: none yet)."""
    info = raw.get("info") if isinstance(raw.get("info"), Mapping) else {}
    assert isinstance(info, Mapping)
    value = str(info.get("actualOrderId") or "")
    return value if value and value != "0" else None


def merged_with_actual(algo: Mapping[str, Any], actual: Mapping[str, Any]) -> dict[str, Any]:
    """A triggered algo order's record with its placed order's status and fills."""
    out = dict(algo)
    for key in ("status", "filled", "cost", "average", "remaining"):
        out[key] = actual.get(key)
    return out
