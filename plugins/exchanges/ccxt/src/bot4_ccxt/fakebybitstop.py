"""The fake Bybit v5 venue's conditional orders (``/v5/order/create`` with
``triggerPrice``): placed, found by ``orderLinkId`` or ``orderId``, listed
and shown as Bybit shows them (:class:`bot4_ccxt.fakebybit.FakeBybit`'s
docstring has the rules; :mod:`bot4_ccxt.fakeconditional` triggers them)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from bot4.model import ZERO, OrderType, Side
from bot4_ccxt.fakebinance import _ApiError, _num, _venue_symbol
from bot4_ccxt.fakeconditional import CANCELED, REJECTED, WAITING, Conditional, reached

if TYPE_CHECKING:
    from bot4_ccxt.fakebybit import FakeBybit

__all__ = ["BybitStopOrders"]


class BybitStopOrders:
    """The conditional orders of one fake Bybit venue."""

    def __init__(self, venue: FakeBybit) -> None:
        self.venue = venue

    def create(self, params: Mapping[str, Any], binance: Mapping[str, str]) -> object:
        """A conditional order (module docstring): waits outside the engine."""
        venue = self.venue
        if venue.spot:
            raise _ApiError(200, -1102, "spot conditional orders are not supported by this fake")
        symbol = venue._symbol(binance)
        assert symbol is not None
        if binance["type"] != "MARKET":
            raise _ApiError(200, -1102, "this fake venue's conditional orders are Market orders")
        side = Side.BUY if binance["side"] == "BUY" else Side.SELL
        direction = str(params.get("triggerDirection", ""))
        if direction not in ("1", "2"):
            raise _ApiError(200, -1102, "triggerDirection must be 1 (rise) or 2 (fall)")
        watch = {"LastPrice": "last", "MarkPrice": "mark", "IndexPrice": "mark"}.get(
            str(params.get("triggerBy") or "LastPrice")
        )
        if watch is None:
            raise _ApiError(200, -1102, "triggerBy must be LastPrice, MarkPrice or IndexPrice")
        # A fall sells at a stop (buys at a take-profit); a rise the other way round.
        falls = direction == "2"
        kind = OrderType.STOP_LOSS if falls == (side is Side.SELL) else OrderType.TAKE_PROFIT
        market = venue.engine.markets[symbol]
        try:
            trigger, qty = Decimal(str(params["triggerPrice"])), Decimal(binance["quantity"])
        except (ArithmeticError, KeyError):
            raise _ApiError(200, -1102, "triggerPrice and qty must be numbers") from None
        if qty < market.min_qty or (qty / market.qty_increment) % 1:
            raise _ApiError(200, -1013, "Qty invalid")
        if trigger <= 0 or (trigger / market.price_increment) % 1:
            raise _ApiError(200, -1013, "triggerPrice invalid")
        link = binance["newClientOrderId"] or f"fake-{len(venue._ids) + 1}"
        if link in venue._ids:
            raise _ApiError(200, 110072, "OrderLinkedID is duplicate")
        now = venue._trigger_price(symbol, watch)
        if now is not None and reached(kind, side, trigger, now):
            code, want = (110093, "Falling") if falls else (110092, "Rising")
            sign = ">=" if falls else "<="
            raise _ApiError(
                200, code, f"expect {want}, but trigger_price[{trigger}] {sign} current[{now}]"
            )
        order_id = venue._register(link)
        stamp = venue._times[link]
        venue.conditionals.add(
            Conditional(
                order_id=order_id,
                coid=link,
                symbol=symbol,
                side=side,
                kind=kind,
                qty=qty,
                trigger=trigger,
                watch=watch,
                reduce_only=binance["reduceOnly"] == "true",
                created=stamp,
                updated=stamp,
            )
        )
        return {"orderId": str(order_id), "orderLinkId": link}

    def find(self, params: Mapping[str, Any]) -> Conditional | None:
        venue = self.venue
        order_id = str(params.get("orderId") or "")
        return venue.conditionals.get(
            str(params.get("orderLinkId") or "") or None,
            int(order_id) if order_id.isdigit() else None,
        )

    def row(self, cond: Conditional) -> dict[str, Any]:
        """A conditional order as Bybit lists it, triggered or not."""
        venue = self.venue
        if cond.actual is not None:
            row = venue._order_v5(venue.engine.order_state(cond.actual, cond.symbol))
        else:
            row = {
                "orderId": str(cond.order_id),
                "orderLinkId": cond.coid,
                "symbol": _venue_symbol(cond.symbol),
                "side": "Buy" if cond.side is Side.BUY else "Sell",
                "orderType": "Market",
                "price": "0",
                "qty": _num(cond.qty or ZERO),
                "cumExecQty": "0",
                "cumExecValue": "0",
                "cumExecFee": "0",
                "avgPrice": "",
                "leavesQty": _num(cond.qty or ZERO) if cond.status == WAITING else "0",
                "orderStatus": {
                    WAITING: "Untriggered",
                    CANCELED: "Deactivated",
                    REJECTED: "Rejected",
                }.get(cond.status, "Triggered"),
                "timeInForce": "IOC",
                "reduceOnly": cond.reduce_only,
                "closeOnTrigger": False,
                "positionIdx": 0,
                "createdTime": str(cond.created),
                "updatedTime": str(cond.updated),
            }
        falls = (cond.kind is OrderType.STOP_LOSS) == (cond.side is Side.SELL)
        row.update(
            {
                "triggerPrice": _num(cond.trigger),
                "triggerDirection": 2 if falls else 1,
                "triggerBy": "MarkPrice" if cond.watch == "mark" else "LastPrice",
                "stopOrderType": "Stop",
            }
        )
        return row

    def rows(self, params: Mapping[str, Any], open_only: bool) -> list[dict[str, Any]]:
        venue = self.venue
        by_id = bool(params.get("orderLinkId") or params.get("orderId"))
        if by_id:
            found = self.find(params)
            conds = [found] if found is not None else []
        else:
            symbol = venue._symbol(params, required=False)
            conds = [c for c in venue.conditionals if symbol is None or c.symbol == symbol]
        rows = [self.row(c) for c in conds]
        done = ("Filled", "Cancelled", "Deactivated", "Rejected")
        if open_only:
            return [r for r in rows if by_id or r["orderStatus"] not in done]
        return [r for r in rows if r["orderStatus"] in done]
