"""Every ccxt call bot4 makes, built by ccxt's own code for each supported venue
and read off the HTTP layer, offline.

The plugin runs unchanged with test keys; only ccxt's ``fetch`` (the last step,
after the venue's ``sign()``) is replaced by a recorder that keeps the signed
request and answers what the venue would (its JSON, its error codes, which
ccxt's own ``handle_errors`` maps). Markets are given to ccxt directly, so no
market listing is fetched. A venue whose request ccxt builds differently
(another parameter name, an id the venue refuses, a missing category) fails
here rather than in a live session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.offline import (
    COID,
    KEY,
    Answer,
    Request,
    make,
    order,
    run,
)
from bot4_ccxt.offline import perp_market as _perp
from bot4_ccxt.offline import signed_hmac as _signed_hmac
from bot4_ccxt.offline import spot_market as _spot
from bot4_ccxt.venues import PROFILES, decode_coid, encode_coid

from bot4.contracts import Capability, Exchange
from bot4.errors import ConfigError, ExchangeRefused
from bot4.model import OrderStatus, OrderType, Side

# --- client order ids ------------------------------------------------------------------------


@pytest.mark.parametrize("venue", sorted(PROFILES))
@pytest.mark.parametrize(
    "coid",
    ["s1-t-4", "s1-r-123456", "hx-1", "a_b.c:d/e", "Z-Z", "x" * 40, "é-1", "sess-2026-12-01-t-99"],
)
def test_client_ids_are_valid_on_the_venue_and_read_back(venue: str, coid: str) -> None:
    profile = PROFILES[venue]
    sent = encode_coid(profile, coid)
    assert sent == encode_coid(profile, coid)  # deterministic: recovery finds it again
    if profile.coid_int:
        assert isinstance(sent, int)
        assert 0 < sent < 2**31
        return
    assert isinstance(sent, str)
    assert re.fullmatch(f"[{profile.coid_chars}]{{1,{profile.coid_max}}}", sent), sent
    back = decode_coid(profile, sent)
    if back is not None:
        assert back == coid
    else:
        assert sent.startswith("h")  # a digest: only ids seen by this process read back
    # Different ids never share a venue id.
    assert encode_coid(profile, coid + "0") != sent


def test_okx_ids_are_letters_and_digits() -> None:
    assert encode_coid(PROFILES["okx"], "s1-t-4") == "s1Z2DtZ2D4"
    assert encode_coid(PROFILES["binance"], "s1-t-4") == "s1-t-4"
    assert encode_coid(PROFILES["bybit"], "s1-t-4") == "s1-t-4"


def test_untested_venue_is_refused_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"not one bot4 has tested.*allow_untested"):
        CcxtExchange.from_config({"exchange": "kucoin"})
    assert CcxtExchange.from_config({"exchange": "kucoin", "allow_untested": True})
    with pytest.raises(ConfigError, match="binanceusdm"):
        CcxtExchange.from_config({"exchange": "binance", "type": "swap"})
    with pytest.raises(ConfigError, match="BTC-USDT-PERP"):
        CcxtExchange.from_config({"exchange": "bybit", "type": "swap", "symbols": ["BTC-USDT"]})


# --- Binance spot ------------------------------------------------------------------------


def _binance_order(req: Request, path_prefix: str) -> dict[str, Any]:
    return {
        "symbol": "BTCUSDT",
        "orderId": 7,
        "clientOrderId": req.params.get("newClientOrderId", req.params.get("origClientOrderId")),
        "price": req.params.get("price", "50000"),
        "origQty": req.params.get("quantity", "0.05"),
        "executedQty": "0",
        "cummulativeQuoteQty": "0",
        "status": "NEW",
        "type": req.params.get("type", "LIMIT"),
        "side": req.params.get("side", "BUY"),
        "timeInForce": "GTC",
        "reduceOnly": req.params.get("reduceOnly") == "true",
        "time": 1,
        "updateTime": 1,
    }


def _binance_answer(prefix: str) -> Callable[[Request], Answer]:
    placed: dict[str, dict[str, Any]] = {}

    def answer(req: Request) -> Answer:
        if req.path == f"{prefix}/order" and req.method == "GET":
            found = placed.get(req.params.get("origClientOrderId", ""))
            if found is None:
                return 400, {"code": -2013, "msg": "Order does not exist."}
            return 200, found
        if req.path == f"{prefix}/order" and req.method == "POST":
            placed[req.params["newClientOrderId"]] = _binance_order(req, prefix)
            return 200, placed[req.params["newClientOrderId"]]
        if req.path == f"{prefix}/order" and req.method == "DELETE":
            out = dict(placed[req.params["origClientOrderId"]], status="CANCELED")
            return 200, out
        if req.path.endswith("/marginType"):
            return 200, {"code": 200, "msg": "success"}
        if req.path.endswith("/leverage"):
            return 200, {"symbol": "BTCUSDT", "leverage": int(req.params["leverage"])}
        if req.path.endswith("/leverageBracket"):  # ccxt reads the tiers with positions
            return 200, [
                {
                    "symbol": "BTCUSDT",
                    "brackets": [
                        {
                            "bracket": 1,
                            "initialLeverage": 125,
                            "notionalCap": 50000,
                            "notionalFloor": 0,
                            "maintMarginRatio": 0.004,
                            "cum": 0,
                        }
                    ],
                }
            ]
        if "positionRisk" in req.path:
            return 200, [
                {
                    "symbol": "BTCUSDT",
                    "positionSide": "BOTH",
                    "positionAmt": "0.05",
                    "entryPrice": "50000",
                    "markPrice": "50100",
                    "unRealizedProfit": "5",
                    "liquidationPrice": "45200",
                    "isolatedMargin": "505",
                    "isolatedWallet": "500",
                    "notional": "2505",
                    "marginType": "isolated",
                    "leverage": "5",
                    "initialMargin": "501",
                    "maintMargin": "12.5",
                    "updateTime": 1,
                }
            ]
        raise AssertionError(f"unexpected {req.method} {req.path}")

    return answer


def test_binance_spot_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = make(
        "binance", "spot", lambda c: [_spot(c, "BTCUSDT")], _binance_answer("/api/v3"), monkeypatch
    )

    async def go() -> None:
        state = await ex.place_order(order("BTC-USDT", leverage=Decimal(3), reduce_only=True))
        assert state.order.client_order_id == COID
        assert state.status is OrderStatus.NEW
        assert (await ex.fetch_order("BTC-USDT", COID)).order.client_order_id == COID
        assert (await ex.cancel_order("BTC-USDT", COID)).status is OrderStatus.CANCELED

    run(go)
    look, place = rec.of("GET", "/api/v3/order")[0], rec.of("POST", "/api/v3/order")[0]
    assert look.params["origClientOrderId"] == COID
    assert look.params["symbol"] == "BTCUSDT"
    assert place.params["newClientOrderId"] == COID
    assert place.params["quantity"] == "0.05"
    assert place.params["price"] == "50000"
    assert "reduceOnly" not in place.params
    assert "leverage" not in place.params
    assert place.headers["X-MBX-APIKEY"] == KEY
    assert _signed_hmac(place)
    assert rec.of("DELETE", "/api/v3/order")[0].params["origClientOrderId"] == COID
    assert not [r for r in rec.requests if "leverage" in r.path or "margin" in r.path.lower()]


# --- Binance USDⓈ-M ----------------------------------------------------------------------


def test_binanceusdm_perp_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = make(
        "binanceusdm",
        "swap",
        lambda c: [_perp(c, "BTCUSDT")],
        _binance_answer("/fapi/v1"),
        monkeypatch,
    )

    async def go() -> None:
        markets = await ex.fetch_markets()
        assert list(markets) == ["BTC-USDT-PERP"]
        await ex.place_order(order("BTC-USDT-PERP", leverage=Decimal(5)))
        exit_ = order("BTC-USDT-PERP", client_order_id="s1-x-5", side=Side.SELL, reduce_only=True)
        await ex.place_order(exit_)
        [pos] = await ex.fetch_margin_positions()
        assert (pos.qty, pos.leverage, pos.liquidation_price) == (
            Decimal("0.05"),
            Decimal(5),
            Decimal(45200),
        )
        assert pos.margin_mode == "isolated"
        assert pos.mark_price == Decimal(50100)
        assert [p.qty for p in await ex.fetch_positions()] == [Decimal("0.05")]

    run(go)
    assert rec.of("POST", "/fapi/v1/marginType")[0].params["marginType"] == "ISOLATED"
    assert rec.of("POST", "/fapi/v1/leverage")[0].params["leverage"] == "5"
    entry, exit_ = rec.of("POST", "/fapi/v1/order")
    assert entry.params["newClientOrderId"] == COID
    assert "reduceOnly" not in entry.params
    assert exit_.params["newClientOrderId"] == "s1-x-5"
    assert exit_.params["reduceOnly"] == "true"
    # Margin type and leverage are set once, before the first entry; the exit sets nothing.
    paths = [r.path for r in rec.requests if r.method == "POST"]
    assert paths == ["/fapi/v1/marginType", "/fapi/v1/leverage", "/fapi/v1/order", "/fapi/v1/order"]
    assert rec.of("GET", "/fapi/v1/order")[0].params["origClientOrderId"] == COID


# --- Bybit v5 ----------------------------------------------------------------------------


def _bybit_answer() -> tuple[Callable[[Request], Answer], dict[str, dict[str, Any]]]:
    placed: dict[str, dict[str, Any]] = {}

    def ok(result: Any) -> Answer:
        return 200, {"retCode": 0, "retMsg": "OK", "result": result, "time": 1}

    def answer(req: Request) -> Answer:
        p = req.params
        if req.path in ("/v5/order/realtime", "/v5/order/history"):
            hit = placed.get(p.get("orderLinkId", ""))
            return ok({"category": p.get("category"), "list": [hit] if hit else []})
        if req.path == "/v5/order/create":
            placed[p["orderLinkId"]] = {
                "orderId": "1001",
                "orderLinkId": p["orderLinkId"],
                "symbol": p["symbol"],
                "side": p["side"],
                "orderType": p["orderType"],
                "price": p.get("price", "0"),
                "qty": p["qty"],
                "cumExecQty": "0",
                "orderStatus": "New",
                "reduceOnly": p.get("reduceOnly") == "True",
                "createdTime": "1",
                "updatedTime": "1",
            }
            return ok({"orderId": "1001", "orderLinkId": p["orderLinkId"]})
        if req.path == "/v5/order/cancel":
            placed[p["orderLinkId"]]["orderStatus"] = "Cancelled"
            return ok({"orderId": "1001", "orderLinkId": p["orderLinkId"]})
        if req.path in ("/v5/account/set-margin-mode", "/v5/position/set-leverage"):
            return ok({})
        if req.path == "/v5/position/list":
            return ok(
                {
                    "category": "linear",
                    "list": [
                        {
                            "symbol": "BTCUSDT",
                            "side": "Sell",
                            "size": "0.05",
                            "avgPrice": "50000",
                            "positionValue": "2500",
                            "tradeMode": 1,
                            "leverage": "5",
                            "markPrice": "49900",
                            "liqPrice": "54700",
                            "positionIM": "500",
                            "positionMM": "12.5",
                            "positionBalance": "500",
                            "unrealisedPnl": "5",
                            "positionIdx": 0,
                            "createdTime": "1",
                            "updatedTime": "1",
                        }
                    ],
                }
            )
        raise AssertionError(f"unexpected {req.method} {req.path}")

    return answer, placed


@pytest.mark.parametrize("kind", ["spot", "swap"])
def test_bybit_requests(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    answer, placed = _bybit_answer()
    symbol = "BTC-USDT" if kind == "spot" else "BTC-USDT-PERP"
    ex, rec = make(
        "bybit",
        kind,
        lambda c: [_spot(c, "BTCUSDT")] if kind == "spot" else [_perp(c, "BTCUSDT")],
        answer,
        monkeypatch,
    )
    category = "spot" if kind == "spot" else "linear"

    async def go() -> None:
        state = await ex.place_order(order(symbol, leverage=Decimal("5.7")))
        assert state.order.client_order_id == COID
        found = await ex.fetch_order(symbol, COID)  # the look-up ccxt's fetch_order refuses
        assert found.order.client_order_id == COID
        assert found.status is OrderStatus.NEW
        assert (await ex.cancel_order(symbol, COID)).status is OrderStatus.CANCELED
        if kind == "swap":
            [pos] = await ex.fetch_margin_positions()
            assert pos.qty == Decimal("-0.05")
            assert pos.liquidation_price == Decimal(54700)

    run(go)
    looks = rec.of("GET", "/v5/order/realtime")
    assert looks[0].params == {"category": category, "symbol": "BTCUSDT", "orderLinkId": COID}
    assert rec.of("GET", "/v5/order/history")[0].params["orderLinkId"] == COID
    create = rec.of("POST", "/v5/order/create")[0]
    assert create.params["orderLinkId"] == COID
    assert create.params["category"] == category
    assert create.headers.get("X-BAPI-API-KEY") == KEY
    assert _signed_hmac(create)
    cancel = rec.of("POST", "/v5/order/cancel")[0]
    assert cancel.params["orderLinkId"] == COID
    assert cancel.params["category"] == category
    lev = rec.of("POST", "/v5/position/set-leverage")
    if kind == "swap":
        assert rec.of("POST", "/v5/account/set-margin-mode")[0].params == {
            "setMarginMode": "ISOLATED_MARGIN"
        }
        assert lev[0].params["buyLeverage"] == lev[0].params["sellLeverage"] == "5"
        assert lev[0].params["category"] == "linear"
        assert rec.of("GET", "/v5/position/list")[0].params["category"] == "linear"
    else:
        assert not lev
    assert placed[COID]["orderStatus"] == "Cancelled"


def test_bybit_reduce_only_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    answer, _ = _bybit_answer()
    ex, rec = make("bybit", "swap", lambda c: [_perp(c, "BTCUSDT")], answer, monkeypatch)
    exit_ = order(
        "BTC-USDT-PERP", side=Side.SELL, type=OrderType.MARKET, price=None, reduce_only=True
    )
    run(lambda: ex.place_order(exit_))
    create = rec.of("POST", "/v5/order/create")[0]
    assert create.params["reduceOnly"] == "True"
    assert not rec.of("POST", "/v5/position/set-leverage")  # an exit changes no leverage


# --- OKX ---------------------------------------------------------------------------------


def _okx_answer() -> Callable[[Request], Answer]:
    placed: dict[str, dict[str, Any]] = {}

    def ok(data: Any) -> Answer:
        return 200, {"code": "0", "msg": "", "data": data}

    def answer(req: Request) -> Answer:
        p = req.params
        if req.path == "/api/v5/trade/order" and req.method == "GET":
            hit = placed.get(p.get("clOrdId", ""))
            if hit is None:
                return 200, {"code": "51603", "msg": "Order does not exist", "data": []}
            return ok([hit])
        if req.path == "/api/v5/trade/batch-orders":  # ccxt places OKX orders this way
            placed[p["clOrdId"]] = {
                "instId": p["instId"],
                "ordId": "555",
                "clOrdId": p["clOrdId"],
                "px": p.get("px", ""),
                "sz": p["sz"],
                "ordType": p["ordType"],
                "side": p["side"],
                "state": "live",
                "accFillSz": "0",
                "avgPx": "",
                "tdMode": p["tdMode"],
                "reduceOnly": p.get("reduceOnly", "false"),
                "cTime": "1",
                "uTime": "1",
            }
            return ok([{"ordId": "555", "clOrdId": p["clOrdId"], "sCode": "0", "sMsg": ""}])
        if req.path == "/api/v5/trade/cancel-order":
            placed[p["clOrdId"]]["state"] = "canceled"
            return ok([{"ordId": "555", "clOrdId": p["clOrdId"], "sCode": "0", "sMsg": ""}])
        if req.path == "/api/v5/account/set-leverage":
            return ok([{"instId": p["instId"], "lever": p["lever"], "mgnMode": p["mgnMode"]}])
        if req.path == "/api/v5/account/positions":
            return ok(
                [
                    {
                        "instId": "BTC-USDT-SWAP",
                        "instType": "SWAP",
                        "mgnMode": "isolated",
                        "posSide": "net",
                        "pos": "5",
                        "avgPx": "50000",
                        "lever": "5",
                        "liqPx": "45300",
                        "markPx": "50050",
                        "margin": "500",
                        "imr": "",
                        "mmr": "12.5",
                        "notionalUsd": "2502",
                        "upl": "2.5",
                        "ccy": "USDT",
                        "cTime": "1",
                        "uTime": "1",
                    }
                ]
            )
        raise AssertionError(f"unexpected {req.method} {req.path}")

    return answer


@pytest.mark.parametrize("kind", ["spot", "swap"])
def test_okx_requests(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    symbol = "BTC-USDT" if kind == "spot" else "BTC-USDT-PERP"
    ex, rec = make(
        "okx",
        kind,
        lambda c: (
            [_spot(c, "BTC-USDT")] if kind == "spot" else [_perp(c, "BTC-USDT-SWAP", 0.01, 0.01)]
        ),
        _okx_answer(),
        monkeypatch,
    )
    venue_id = "s1Z2DtZ2D4"

    async def go() -> None:
        if kind == "swap":
            info = (await ex.fetch_markets())[symbol]
            assert info.qty_increment == Decimal("0.0001")  # 0.01 contracts of 0.01 BTC
        state = await ex.place_order(order(symbol, leverage=Decimal(5)))
        assert state.order.client_order_id == COID
        again = await ex.fetch_order(symbol, COID)
        assert again.order.client_order_id == COID
        assert again.order.qty == Decimal("0.05")
        assert (await ex.cancel_order(symbol, COID)).status is OrderStatus.CANCELED
        if kind == "swap":
            [pos] = await ex.fetch_margin_positions()
            assert pos.qty == Decimal("0.05")  # 5 contracts of 0.01 BTC
            assert pos.liquidation_price == Decimal(45300)
            assert pos.margin == Decimal("502.5")  # ccxt's collateral: margin + upl

    run(go)
    look = rec.of("GET", "/api/v5/trade/order")[0]
    assert look.params["clOrdId"] == venue_id
    place = rec.of("POST", "/api/v5/trade/batch-orders")[0]
    assert place.params["clOrdId"] == venue_id
    assert place.params["clOrdId"].isalnum()
    assert place.headers.get("OK-ACCESS-KEY") == KEY
    assert "OK-ACCESS-SIGN" in place.headers
    assert rec.of("POST", "/api/v5/trade/cancel-order")[0].params["clOrdId"] == venue_id
    if kind == "swap":
        assert place.params["sz"] == "5"
        assert place.params["tdMode"] == "isolated"
        levs = rec.of("POST", "/api/v5/account/set-leverage")
        assert all(r.params["mgnMode"] == "isolated" for r in levs)
        assert levs[-1].params["lever"] == "5"
        assert rec.of("GET", "/api/v5/account/positions")[0].params["instId"] == "BTC-USDT-SWAP"
    else:
        assert place.params["sz"] == "0.05"
        assert place.params["tdMode"] == "cash"


def test_okx_reduce_only_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = make(
        "okx", "swap", lambda c: [_perp(c, "BTC-USDT-SWAP", 0.01, 0.01)], _okx_answer(), monkeypatch
    )
    run(lambda: ex.place_order(order("BTC-USDT-PERP", side=Side.SELL, reduce_only=True)))
    place = rec.of("POST", "/api/v5/trade/batch-orders")[0]
    assert place.params["reduceOnly"] == "True"
    assert place.params["tdMode"] == "isolated"
    assert not rec.of("POST", "/api/v5/account/set-leverage")


# --- Kraken ------------------------------------------------------------------------------


def test_kraken_userref_is_an_integer(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = encode_coid(PROFILES["kraken"], COID)
    orders: dict[str, dict[str, Any]] = {}

    def answer(req: Request) -> Answer:
        if req.path == "/0/private/OpenOrders" or req.path == "/0/private/ClosedOrders":
            key = "open" if "Open" in req.path else "closed"
            return 200, {"error": [], "result": {key: dict(orders)}}
        if req.path == "/0/private/AddOrder":
            orders["OABC-1"] = {
                "userref": int(req.params["userref"]),
                "status": "open",
                "opentm": 1.0,
                "descr": {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "price": "50000"},
                "vol": req.params["volume"],
                "vol_exec": "0",
                "cost": "0",
                "fee": "0",
            }
            return 200, {
                "error": [],
                "result": {"txid": ["OABC-1"], "descr": {"order": "buy 0.05 XBTUSD @ limit 50000"}},
            }
        raise AssertionError(f"unexpected {req.method} {req.path}")

    ex, rec = make(
        "kraken",
        "spot",
        lambda c: [_spot(c, "XXBTZUSD", "BTC", "USD")],
        answer,
        monkeypatch,
        currency="USD",
    )
    # What ccxt's kraken fetch_markets indexes: order records name the altname.
    ex._client.options["marketsByAltname"] = {"XBTUSD": ex._client.markets["BTC/USD"]}

    async def go() -> None:
        await ex.place_order(order("BTC-USD"))
        found = await ex.fetch_order("BTC-USD", COID)
        assert found.order.client_order_id == COID

    run(go)
    add = rec.of("POST", "/0/private/AddOrder")[0]
    assert add.params["userref"] == str(ref)
    assert "cl_ord_id" not in add.params
    assert "userref" in rec.of("POST", "/0/private/OpenOrders")[0].params
    assert isinstance(ref, int)


def test_profiles_cover_the_readme() -> None:
    """Every supported venue has its tested line (the README lists them)."""
    assert {"binance", "binanceusdm", "bybit", "okx"} <= set(PROFILES)
    for p in PROFILES.values():
        assert p.tested, p.exchange


def test_bad_type_and_margin_mode_are_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="'type': 'futures' must be spot or swap"):
        CcxtExchange.from_config({"exchange": "bybit", "type": "futures"})
    with pytest.raises(ConfigError, match="'margin_mode': 'portfolio' must be isolated or cross"):
        CcxtExchange.from_config({"exchange": "bybit", "type": "swap", "margin_mode": "portfolio"})


def test_spot_claims_no_margin_and_refuses_leverage(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = make(
        "binance", "spot", lambda c: [_spot(c, "BTCUSDT")], _binance_answer("/api/v3"), monkeypatch
    )
    assert Capability.MARGIN not in ex.capabilities

    async def go() -> None:
        with pytest.raises(ExchangeRefused, match="type: swap"):
            await ex.set_leverage("BTC-USDT", Decimal(3))
        with pytest.raises(ExchangeRefused, match="type: swap"):
            await ex.set_margin_mode("BTC-USDT", "isolated")

    run(go)
    assert rec.requests == []  # nothing reached the venue


def test_the_contract_default_refuses_without_margin() -> None:
    """bot4.contracts.Exchange: set_leverage/set_margin_mode refuse unless overridden."""
    from bot4_paper import PaperExchange

    class NoMargin(PaperExchange):
        name = "nomargin"

    plain = NoMargin([])

    async def go() -> None:
        with pytest.raises(ExchangeRefused, match=r"needs Capability\.MARGIN"):
            await Exchange.set_leverage(plain, "BTC-USDT", Decimal(2))
        with pytest.raises(ExchangeRefused, match=r"needs Capability\.MARGIN"):
            await Exchange.set_margin_mode(plain, "BTC-USDT", "cross")

    run(go)


def test_swap_claims_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    answer, _ = _bybit_answer()
    ex, _rec = make("bybit", "swap", lambda c: [_perp(c, "BTCUSDT")], answer, monkeypatch)
    assert Capability.MARGIN in ex.capabilities
    # Bybit perps take conditional orders (tests/test_venue_trigger_requests.py).
    assert Capability.STOP_ORDERS in ex.capabilities


def test_bybit_spot_market_buy_is_in_the_base_asset(monkeypatch: pytest.MonkeyPatch) -> None:
    """bot4's qty is base units; ccxt must not send it as a quote amount."""
    answer, _ = _bybit_answer()
    ex, rec = make("bybit", "spot", lambda c: [_spot(c, "BTCUSDT")], answer, monkeypatch)
    run(lambda: ex.place_order(order("BTC-USDT", type=OrderType.MARKET, price=None)))
    create = rec.of("POST", "/v5/order/create")[0]
    assert create.params["orderType"] == "Market"
    assert create.params["qty"] == "0.05"
    assert create.params["marketUnit"] == "baseCoin"


def test_okx_spot_market_buy_is_in_the_base_asset(monkeypatch: pytest.MonkeyPatch) -> None:
    ex, rec = make("okx", "spot", lambda c: [_spot(c, "BTC-USDT")], _okx_answer(), monkeypatch)
    run(lambda: ex.place_order(order("BTC-USDT", type=OrderType.MARKET, price=None)))
    place = rec.of("POST", "/api/v5/trade/batch-orders")[0]
    assert place.params["ordType"] == "market"
    assert place.params["sz"] == "0.05"
    assert place.params["tgtCcy"] == "base_ccy"  # OKX sizes spot market buys in quote otherwise
