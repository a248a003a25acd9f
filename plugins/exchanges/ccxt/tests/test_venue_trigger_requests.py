"""Stop-loss, take-profit and add-margin requests on perpetuals, built by
ccxt's own code for Binance USDⓈ-M and Bybit v5 and read off the HTTP layer,
offline (:mod:`bot4_ccxt.offline`): where each venue files conditional
orders, which parameters carry the trigger, and how bot4 finds, lists and
cancels them and adds margin."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.offline import COID, KEY, Answer, Recorder, Request, make, order, run, signed_hmac
from bot4_ccxt.offline import perp_market as perp
from bot4_ccxt.offline import spot_market as spot

from bot4.contracts import Capability
from bot4.errors import InvalidOrder
from bot4.model import OrderStatus, OrderType, Side

SYM = "BTC-USDT-PERP"
STOP = Decimal("49000")
TAKE = Decimal("52000")


def stop(kind: OrderType = OrderType.STOP_LOSS, **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "side": Side.SELL,
        "type": kind,
        "price": STOP if kind is OrderType.STOP_LOSS else TAKE,
        "reduce_only": True,
        **kw,
    }
    return order(SYM, **fields)


def _position(req: Request) -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "positionSide": "BOTH",
        "positionAmt": "0.05",
        "entryPrice": "50000",
        "markPrice": "50000",
        "unRealizedProfit": "0",
        "liquidationPrice": "44000",
        "isolatedMargin": "600",
        "isolatedWallet": "600",
        "notional": "2500",
        "marginType": "isolated",
        "leverage": "5",
        "initialMargin": "500",
        "maintMargin": "12.5",
        "updateTime": 1,
    }


# --- Binance USDⓈ-M: the Algo Service ------------------------------------------------------


def _algo_answer() -> tuple[Callable[[Request], Answer], dict[str, dict[str, Any]]]:
    algos: dict[str, dict[str, Any]] = {}

    def answer(req: Request) -> Answer:
        p = req.params
        if req.path == "/fapi/v1/algoOrder" and req.method == "POST":
            algos[p["clientAlgoId"]] = {
                "algoId": 3358,
                "clientAlgoId": p["clientAlgoId"],
                "algoType": "CONDITIONAL",
                "orderType": p["type"],
                "symbol": p["symbol"],
                "side": p["side"],
                "positionSide": "BOTH",
                "timeInForce": "GTC",
                "quantity": p["quantity"],
                "algoStatus": "NEW",
                "actualOrderId": "",
                "actualPrice": "0",
                "triggerPrice": p["triggerPrice"],
                "price": "0",
                "workingType": p.get("workingType", "CONTRACT_PRICE"),
                "closePosition": False,
                "priceProtect": False,
                "reduceOnly": p.get("reduceOnly") == "true",
                "createTime": 1,
                "updateTime": 1,
                "triggerTime": 0,
            }
            return 200, algos[p["clientAlgoId"]]
        if req.path == "/fapi/v1/algoOrder" and req.method == "GET":
            found = algos.get(p.get("clientAlgoId", ""))
            if found is None:
                return 400, {"code": -2013, "msg": "Order does not exist."}
            return 200, found
        if req.path == "/fapi/v1/algoOrder" and req.method == "DELETE":
            algos[p["clientAlgoId"]]["algoStatus"] = "CANCELED"
            return 200, {
                "algoId": 3358,
                "clientAlgoId": p["clientAlgoId"],
                "code": "200",
                "msg": "success",
            }
        if req.path == "/fapi/v1/openAlgoOrders":
            return 200, [a for a in algos.values() if a["algoStatus"] == "NEW"]
        if req.path == "/fapi/v1/openOrders":
            return 200, []
        if req.path == "/fapi/v1/order" and req.method == "GET" and p.get("orderId") == "77":
            return 200, {
                "symbol": "BTCUSDT",
                "orderId": 77,
                "clientOrderId": "venue-own-id",
                "price": "0",
                "avgPrice": "48990",
                "origQty": "0.05",
                "executedQty": "0.05",
                "cumQuote": "2449.5",
                "status": "FILLED",
                "type": "MARKET",
                "side": "SELL",
                "reduceOnly": True,
                "positionSide": "BOTH",
                "time": 2,
                "updateTime": 2,
            }
        if req.path == "/fapi/v1/positionMargin":
            return 200, {
                "amount": float(p["amount"]),
                "code": 200,
                "msg": "Successfully modify position margin.",
                "type": 1,
            }
        if req.path.endswith("/leverageBracket"):
            return 200, [{"symbol": "BTCUSDT", "brackets": []}]
        if "positionRisk" in req.path:
            return 200, [_position(req)]
        raise AssertionError(f"unexpected {req.method} {req.path}")

    return answer, algos


def _usdm(monkeypatch: pytest.MonkeyPatch, **config: Any) -> tuple[CcxtExchange, Recorder, Any]:
    answer, algos = _algo_answer()
    ex, rec = make(
        "binanceusdm", "swap", lambda c: [perp(c, "BTCUSDT")], answer, monkeypatch, **config
    )
    return ex, rec, algos


def test_binanceusdm_stops_go_to_the_algo_service(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec, _ = _usdm(monkeypatch)
    assert {Capability.STOP_ORDERS, Capability.TAKE_PROFIT_ORDERS} <= ex.capabilities

    async def go() -> None:
        state = await ex.place_order(stop())
        assert state.status is OrderStatus.NEW
        assert state.order.type is OrderType.STOP_LOSS
        tp = await ex.place_order(stop(OrderType.TAKE_PROFIT, client_order_id="s1-tp-5"))
        assert tp.order.price == TAKE
        found = await ex.fetch_order(SYM, COID)
        assert (found.order.type, found.order.price) == (OrderType.STOP_LOSS, STOP)
        assert {s.order.client_order_id for s in await ex.fetch_open_orders(SYM)} == {
            COID,
            "s1-tp-5",
        }
        assert (await ex.cancel_order(SYM, COID)).status is OrderStatus.CANCELED

    run(go)
    sl, tp = rec.of("POST", "/fapi/v1/algoOrder")
    assert sl.params["algoType"] == "CONDITIONAL"
    assert sl.params["type"] == "STOP_MARKET"
    assert sl.params["side"] == "SELL"
    assert Decimal(sl.params["triggerPrice"]) == 49000
    assert sl.params["quantity"] == "0.05"
    assert sl.params["reduceOnly"] == "true"
    assert sl.params["workingType"] == "MARK_PRICE"  # the default trigger_price: mark
    assert sl.params["clientAlgoId"] == COID
    assert "closePosition" not in sl.params
    assert "stopPrice" not in sl.params
    assert sl.headers["X-MBX-APIKEY"] == KEY
    assert signed_hmac(sl)
    assert tp.params["type"] == "TAKE_PROFIT_MARKET"
    assert Decimal(tp.params["triggerPrice"]) == 52000
    assert not rec.of("POST", "/fapi/v1/order")  # conditional orders never go there
    # The look-up before sending, and fetch_order, ask the Algo Service by clientAlgoId.
    looks = rec.of("GET", "/fapi/v1/algoOrder")
    assert looks[0].params["clientAlgoId"] == COID
    assert rec.of("GET", "/fapi/v1/openAlgoOrders")[0].params["symbol"] == "BTCUSDT"
    assert rec.of("DELETE", "/fapi/v1/algoOrder")[0].params["clientAlgoId"] == COID
    # An exit stop changes neither leverage nor margin type.
    assert not rec.of("POST", "/fapi/v1/leverage")


def test_binanceusdm_last_price_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec, _ = _usdm(monkeypatch, trigger_price="last")
    run(lambda: ex.place_order(stop()))
    assert rec.of("POST", "/fapi/v1/algoOrder")[0].params["workingType"] == "CONTRACT_PRICE"


def test_binanceusdm_triggered_stop_reads_its_placed_order(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec, algos = _usdm(monkeypatch)

    async def go() -> None:
        await ex.place_order(stop())
        algos[COID].update(algoStatus="FINISHED", actualOrderId="77", actualPrice="48990")
        state = await ex.fetch_order(SYM, COID)
        assert state.status is OrderStatus.FILLED
        assert state.filled_qty == Decimal("0.05")
        assert state.avg_price == Decimal("48990")
        # The placed order's fills belong to the stop.
        assert ex._coids[(SYM, "77")] == COID

    run(go)
    assert rec.of("GET", "/fapi/v1/order")[0].params["orderId"] == "77"


def test_binanceusdm_add_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec, _ = _usdm(monkeypatch)
    liq = run(lambda: ex.add_margin(SYM, Decimal("100.009")))
    assert liq == Decimal(44000)
    [req] = rec.of("POST", "/fapi/v1/positionMargin")
    assert req.params["type"] == "1"  # 1 adds, 2 reduces
    assert req.params["symbol"] == "BTCUSDT"
    assert Decimal(req.params["amount"]) == Decimal("100")  # rounded down to a cent
    assert signed_hmac(req)


# --- Bybit v5: conditional orders ----------------------------------------------------------


def _bybit_answer() -> tuple[Callable[[Request], Answer], dict[str, dict[str, Any]]]:
    placed: dict[str, dict[str, Any]] = {}

    def ok(result: Any) -> Answer:
        return 200, {"retCode": 0, "retMsg": "OK", "result": result, "time": 1}

    def answer(req: Request) -> Answer:
        p = req.params
        if req.path in ("/v5/order/realtime", "/v5/order/history"):
            rows = [
                r
                for r in placed.values()
                if (p.get("orderFilter") == "StopOrder") == bool(r["triggerPrice"])
                and p.get("orderLinkId", r["orderLinkId"]) == r["orderLinkId"]
            ]
            return ok({"category": p.get("category"), "list": rows})
        if req.path == "/v5/order/create":
            placed[p["orderLinkId"]] = {
                "orderId": "2002",
                "orderLinkId": p["orderLinkId"],
                "symbol": p["symbol"],
                "side": p["side"],
                "orderType": p["orderType"],
                "price": "0",
                "qty": p["qty"],
                "cumExecQty": "0",
                "orderStatus": "Untriggered",
                "reduceOnly": p.get("reduceOnly") == "True",
                "triggerPrice": p.get("triggerPrice", ""),
                "triggerDirection": int(p.get("triggerDirection", "0")),
                "triggerBy": p.get("triggerBy", ""),
                "stopOrderType": "Stop",
                "createdTime": "1",
                "updatedTime": "1",
            }
            return ok({"orderId": "2002", "orderLinkId": p["orderLinkId"]})
        if req.path == "/v5/order/cancel":
            placed[p["orderLinkId"]]["orderStatus"] = "Deactivated"
            return ok({"orderId": "2002", "orderLinkId": p["orderLinkId"]})
        if req.path in ("/v5/account/set-margin-mode", "/v5/position/set-leverage"):
            return ok({})
        if req.path == "/v5/position/add-margin":
            return ok({"symbol": "BTCUSDT", "liqPrice": "44000", "positionBalance": "600"})
        if req.path == "/v5/position/list":
            return ok(
                {
                    "category": "linear",
                    "list": [
                        {
                            "symbol": "BTCUSDT",
                            "side": "Buy",
                            "size": "0.05",
                            "avgPrice": "50000",
                            "tradeMode": 1,
                            "leverage": "5",
                            "markPrice": "50000",
                            "liqPrice": "44000",
                            "positionIM": "500",
                            "positionBalance": "600",
                            "positionIdx": 0,
                            "createdTime": "1",
                            "updatedTime": "1",
                        }
                    ],
                }
            )
        raise AssertionError(f"unexpected {req.method} {req.path}")

    return answer, placed


def _bybit(monkeypatch: pytest.MonkeyPatch, kind: str = "swap") -> tuple[CcxtExchange, Recorder]:
    answer, _ = _bybit_answer()
    markets = (
        (lambda c: [perp(c, "BTCUSDT")]) if kind == "swap" else (lambda c: [spot(c, "BTCUSDT")])
    )
    return make("bybit", kind, markets, answer, monkeypatch)


def test_bybit_conditional_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = _bybit(monkeypatch)
    assert {Capability.STOP_ORDERS, Capability.TAKE_PROFIT_ORDERS} <= ex.capabilities

    async def go() -> None:
        state = await ex.place_order(stop())
        assert state.status is OrderStatus.NEW  # Untriggered
        assert (state.order.type, state.order.price) == (OrderType.STOP_LOSS, STOP)
        await ex.place_order(stop(OrderType.TAKE_PROFIT, client_order_id="s1-tp-5"))
        assert {s.order.client_order_id for s in await ex.fetch_open_orders(SYM)} == {
            COID,
            "s1-tp-5",
        }
        assert (await ex.cancel_order(SYM, COID)).status is OrderStatus.CANCELED

    run(go)
    sl, tp = rec.of("POST", "/v5/order/create")
    assert sl.params["category"] == "linear"
    assert sl.params["orderType"] == "Market"
    assert sl.params["side"] == "Sell"
    assert Decimal(sl.params["triggerPrice"]) == 49000
    assert sl.params["triggerDirection"] == "2"  # a sell stop triggers on a fall
    assert sl.params["triggerBy"] == "MarkPrice"
    assert sl.params["reduceOnly"] == "True"
    assert sl.params["orderLinkId"] == COID
    assert sl.headers.get("X-BAPI-API-KEY") == KEY
    assert signed_hmac(sl)
    assert tp.params["triggerDirection"] == "1"  # a sell take-profit on a rise
    assert Decimal(tp.params["triggerPrice"]) == 52000
    # Looked up (before sending, and after: create answers ids only) among
    # the conditional orders: orderFilter=StopOrder.
    looks = rec.of("GET", "/v5/order/realtime")
    assert looks[0].params == {
        "category": "linear",
        "symbol": "BTCUSDT",
        "orderLinkId": COID,
        "orderFilter": "StopOrder",
    }
    listed = [r.params for r in looks if "orderLinkId" not in r.params]
    assert {"category": "linear", "symbol": "BTCUSDT", "orderFilter": "StopOrder"} in listed
    cancel = rec.of("POST", "/v5/order/cancel")[0]
    assert (cancel.params["orderLinkId"], cancel.params["category"]) == (COID, "linear")


def test_bybit_entry_stop_is_not_reduce_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """ccxt's stopLossPrice would make it reduce-only: bot4 sends triggerPrice."""
    ex, rec = _bybit(monkeypatch)
    entry = stop(side=Side.BUY, reduce_only=False, price=Decimal(51000), leverage=Decimal(5))
    run(lambda: ex.place_order(entry))
    create = rec.of("POST", "/v5/order/create")[0]
    assert create.params["triggerDirection"] == "1"  # a buy stop triggers on a rise
    assert create.params.get("reduceOnly", "False") == "False"


def test_bybit_add_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = _bybit(monkeypatch)
    assert run(lambda: ex.add_margin(SYM, Decimal(100))) == Decimal(44000)
    [req] = rec.of("POST", "/v5/position/add-margin")
    assert req.params == {
        "category": "linear",
        "symbol": "BTCUSDT",
        "margin": "100",
        "positionIdx": "0",
    }
    assert signed_hmac(req)


def test_bybit_spot_holds_its_stops_in_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bybit spot conditional orders are filed differently (not tested): no claim."""
    ex, rec = _bybit(monkeypatch, "spot")
    assert Capability.STOP_ORDERS not in ex.capabilities
    with pytest.raises(InvalidOrder, match="STOP_ORDERS"):
        run(lambda: ex.place_order(order("BTC-USDT", side=Side.SELL, type=OrderType.STOP_LOSS)))
    assert not rec.of("POST", "/v5/order/create")
