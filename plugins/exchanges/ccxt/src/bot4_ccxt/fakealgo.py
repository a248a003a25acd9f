"""The fake USDⓈ-M futures venue's Algo Service: Binance's endpoints for
conditional orders (``STOP_MARKET``, ``TAKE_PROFIT_MARKET``), which ccxt's
``binanceusdm`` sends a ``stopLossPrice``/``takeProfitPrice`` order to::

    POST   /fapi/v1/algoOrder       algoType=CONDITIONAL, type, side, quantity or
                                    closePosition=true, triggerPrice, workingType
                                    (CONTRACT_PRICE default, MARK_PRICE), reduceOnly,
                                    clientAlgoId (up to 36 of [.A-Z:/a-z0-9_-])
    GET    /fapi/v1/algoOrder       by algoId or clientAlgoId (-2013 when unknown)
    DELETE /fapi/v1/algoOrder       a waiting order (-2011 otherwise)
    GET    /fapi/v1/openAlgoOrders, /fapi/v1/allAlgoOrders

An algo order's ``algoStatus`` is ``NEW`` while it waits, ``TRIGGERED`` once
its market order is in the engine (``actualOrderId``, an ordinary order with
an id and a client id of the venue's, found by ``GET /fapi/v1/order``),
``FINISHED`` when that order is done, ``CANCELED`` or ``REJECTED`` (no
position to close, or the engine refused the order). As on Binance, the
margin is checked when the order triggers, not when it is placed; one whose
trigger price is already reached is refused (-2021).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from bot4.errors import OrderNotFound
from bot4.model import OrderType, Side
from bot4_ccxt.fakebinance import _ApiError, _ms, _num
from bot4_ccxt.fakeconditional import (
    CANCELED,
    REJECTED,
    TRIGGERED,
    WAITING,
    Conditional,
    reached,
)

if TYPE_CHECKING:
    from bot4_ccxt.fakefutures import FakeBinanceFutures

__all__ = ["AlgoService"]

_TYPES = {"STOP_MARKET": OrderType.STOP_LOSS, "TAKE_PROFIT_MARKET": OrderType.TAKE_PROFIT}
_NAMES = {v: k for k, v in _TYPES.items()}
_WORKING = {"CONTRACT_PRICE": "last", "MARK_PRICE": "mark"}
_CLIENT_ID = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
Handler = Callable[[Mapping[str, str]], object]


class AlgoService:
    """The algo endpoints of one fake futures venue (see the module docstring)."""

    def __init__(self, venue: FakeBinanceFutures) -> None:
        self.venue = venue
        self._next_id = 1000  # algoIds: a sequence of their own, as on Binance

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("POST", "/fapi/v1/algoOrder"): self.new_order,
            ("GET", "/fapi/v1/algoOrder"): self.query,
            ("DELETE", "/fapi/v1/algoOrder"): self.cancel,
            ("GET", "/fapi/v1/openAlgoOrders"): self.open_orders,
            ("GET", "/fapi/v1/allAlgoOrders"): self.all_orders,
        }

    def new_order(self, params: Mapping[str, str]) -> object:
        venue = self.venue
        symbol = venue._symbol(params)
        assert symbol is not None
        if params.get("algoType") != "CONDITIONAL":
            raise _ApiError(400, -1102, "Mandatory parameter 'algoType' was not sent.")
        kind = _TYPES.get(params.get("type", ""))
        if kind is None:
            raise _ApiError(400, -1116, "Invalid orderType (STOP_MARKET, TAKE_PROFIT_MARKET here)")
        side_raw = params.get("side", "")
        if side_raw not in ("BUY", "SELL"):
            raise _ApiError(400, -1117, "Invalid side.")
        coid = params.get("clientAlgoId") or f"fakealgo-{self._next_id}"
        if not _CLIENT_ID.match(coid):
            raise _ApiError(400, -4015, "Client order id is not valid.")
        if coid in venue.conditionals:
            raise _ApiError(400, -4116, "ClientOrderId is duplicated.")
        watch = _WORKING.get(params.get("workingType", "CONTRACT_PRICE"))
        if watch is None:
            raise _ApiError(400, -1102, "workingType must be MARK_PRICE or CONTRACT_PRICE.")
        close = params.get("closePosition", "false").lower() == "true"
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        if close and (reduce_only or "quantity" in params):
            raise _ApiError(400, -4138, "Reduce only must be true with closePosition equals true")
        market = venue.engine.markets[symbol]
        try:
            trigger = Decimal(params["triggerPrice"])
            qty = None if close else Decimal(params["quantity"])
        except KeyError as exc:
            missing = exc.args[0]
            raise _ApiError(400, -1102, f"Mandatory parameter '{missing}' was not sent.") from None
        except InvalidOperation:
            raise _ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        if qty is not None and (qty < market.min_qty or (qty / market.qty_increment) % 1):
            raise _ApiError(400, -1013, "Filter failure: LOT_SIZE")
        if trigger <= 0 or (trigger / market.price_increment) % 1:
            raise _ApiError(400, -1013, "Filter failure: PRICE_FILTER")
        side = Side(side_raw.lower())
        now = venue._trigger_price(symbol, watch)
        if now is not None and reached(kind, side, trigger, now):
            raise _ApiError(400, -2021, "Order would immediately trigger.")
        stamp = _ms(venue.engine.now)
        order = Conditional(
            order_id=self._next_id,
            coid=coid,
            symbol=symbol,
            side=side,
            kind=kind,
            qty=qty,
            trigger=trigger,
            watch=watch,
            reduce_only=reduce_only,
            created=stamp,
            updated=stamp,
        )
        self._next_id += 1
        venue.conditionals.add(order)
        return self.json(order)

    def _find(self, params: Mapping[str, str]) -> Conditional:
        order_id = params.get("algoId")
        found = self.venue.conditionals.get(
            params.get("clientAlgoId"), int(order_id) if order_id and order_id.isdigit() else None
        )
        if found is None:
            raise _ApiError(400, -2013, "Order does not exist.")
        return found

    def query(self, params: Mapping[str, str]) -> object:
        return self.json(self._find(params))

    def cancel(self, params: Mapping[str, str]) -> object:
        try:
            order = self._find(params)
        except _ApiError:
            raise _ApiError(400, -2011, "Unknown order sent.") from None
        if order.status != WAITING:
            raise _ApiError(400, -2011, "Unknown order sent.")
        order.status = CANCELED
        order.updated = self.venue.server_time()
        return {
            "algoId": order.order_id,
            "clientAlgoId": order.coid,
            "code": "200",
            "msg": "success",
        }

    def open_orders(self, params: Mapping[str, str]) -> object:
        symbol = self.venue._symbol(params, required=False)
        return [self.json(c) for c in self.venue.conditionals.waiting(symbol)]

    def all_orders(self, params: Mapping[str, str]) -> object:
        symbol = self.venue._symbol(params)
        return [self.json(c) for c in self.venue.conditionals if c.symbol == symbol]

    def json(self, order: Conditional) -> dict[str, Any]:
        """An algo order as Binance's ``GET /fapi/v1/algoOrder`` answers it."""
        venue = self.venue
        status = {WAITING: "NEW", CANCELED: "CANCELED", REJECTED: "REJECTED"}.get(order.status)
        actual_id, actual_price = "", "0"
        if order.actual is not None:
            try:
                state = venue.engine.order_state(order.actual, order.symbol)
            except OrderNotFound:
                state = None
            actual_id = str(venue._ids.get(order.actual, ""))
            if state is not None and state.avg_price is not None:
                actual_price = _num(state.avg_price)
            status = "TRIGGERED" if state is not None and state.status.is_open else "FINISHED"
        elif order.status == TRIGGERED:
            status = "TRIGGERING"
        return {
            "algoId": order.order_id,
            "clientAlgoId": order.coid,
            "algoType": "CONDITIONAL",
            "orderType": _NAMES[order.kind],
            "symbol": venue._vsym(order.symbol),
            "side": order.side.name,
            "positionSide": "BOTH",
            "timeInForce": "GTC",
            "quantity": _num(order.qty) if order.qty is not None else "0",
            "algoStatus": status,
            "actualOrderId": actual_id,
            "actualPrice": actual_price,
            "triggerPrice": _num(order.trigger),
            "price": "0",
            "icebergQuantity": None,
            "selfTradePreventionMode": "NONE",
            "workingType": {v: k for k, v in _WORKING.items()}[order.watch],
            "priceMatch": "NONE",
            "closePosition": order.qty is None,
            "priceProtect": False,
            "reduceOnly": order.reduce_only,
            "createTime": order.created,
            "updateTime": order.updated,
            "triggerTime": order.triggered_at,
            "goodTillDate": 0,
        }
