"""A local exchange server that speaks Bybit's v5 REST API for USDT linear
perpetuals (``category=linear``), for ccxt's ``bybit`` client: the same paper
engine, margin model (:mod:`bot4.margin`), funding, liquidation and fault
injection as :class:`~bot4_ccxt.fakefutures.FakeBinanceFutures`, behind Bybit's
wire format::

    with FakeBybit() as venue:              # BTC-USDT-PERP, venue symbol BTCUSDT
        venue.push(tick)
        venue.inject("POST", "/v5/order/create", "500", process=True)

Endpoints::

    GET  /v5/market/time, /v5/market/instruments-info, /v5/market/tickers
    POST /v5/order/create, /v5/order/cancel          (orderLinkId, category)
    GET  /v5/asset/coin/query-info (ccxt loads currencies with the markets),
         /v5/order/realtime, /v5/order/history, /v5/execution/list,
         /v5/account/wallet-balance, /v5/position/list
    POST /v5/position/set-leverage, /v5/account/set-margin-mode,
         /v5/position/add-margin                     (margin > 0: added to an isolated position)

**Conditional orders** (``/v5/order/create`` with ``triggerPrice``,
``triggerDirection`` 1 rise / 2 fall, ``triggerBy`` LastPrice (default) or
MarkPrice; :mod:`bot4_ccxt.fakeconditional`) are ``Untriggered`` until a quote
reaches the trigger, then the same order (``orderId``, ``orderLinkId``) is a
market order in the engine; cancelled before that they are ``Deactivated``. One
whose trigger is already reached is refused (110092 rising, 110093 falling).
``/v5/order/realtime`` lists them only under ``orderFilter=StopOrder`` (what
ccxt sends for ``params={"trigger": True}``), ``/v5/order/history`` under
``StopOrder`` or with no filter (all kinds, as Bybit documents). Their
handlers are :mod:`bot4_ccxt.fakebybitstop`.

Signed requests carry ``X-BAPI-API-KEY``, ``X-BAPI-TIMESTAMP``,
``X-BAPI-RECV-WINDOW`` and ``X-BAPI-SIGN``, the HMAC-SHA256 of timestamp, key,
window and the query string (GET) or the JSON body (POST). Errors are HTTP 200
with Bybit's ``retCode``: 10001 parameters, 10002 timestamp, 10003 key, 10004
signature, 10006 rate limit (HTTP 429 here, with ``Retry-After``), 110001 no
such order, 110007 insufficient balance, 110017 reduce-only, 110043 leverage
not modified. As on Bybit, ``orderLinkId`` is at most 36 characters of
letters, digits, ``-`` and ``_``; ``create`` answers only the ids; an
execution list page holds at most 100 rows; the margin mode is the unified
account's (every symbol).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from bot4_paper.engine import PaperEngine

from bot4.errors import OrderNotFound
from bot4.model import ZERO, OrderState, OrderStatus, OrderType
from bot4_ccxt.fakeconditional import CANCELED, WAITING, Conditional
from bot4_ccxt.fakefutures import FakeBinanceFutures
from bot4_ccxt.fakeserver import _ApiError
from bot4_ccxt.fakewire import _ms, _num, _venue_symbol

__all__ = ["BYBIT_ORDER_TYPES", "FakeBybit"]

BYBIT_ORDER_TYPES = ("LIMIT", "MARKET")
_LINK_ID = re.compile(r"^[A-Za-z0-9_-]{1,36}$")
# Binance codes the shared handlers raise, as Bybit's.
_CODES = {
    -1003: 10006,
    -1021: 10002,
    -1022: 10004,
    -2015: 10003,
    -2011: 110001,
    -2013: 110001,
    -2022: 110017,
}
_STATUS = {
    OrderStatus.NEW: "New",
    OrderStatus.PARTIALLY_FILLED: "PartiallyFilled",
    OrderStatus.FILLED: "Filled",
    OrderStatus.CANCELED: "Cancelled",
    OrderStatus.REJECTED: "Rejected",
}


class FakeBybit(FakeBinanceFutures):
    """A Bybit v5 linear REST server (see the module docstring)."""

    def __init__(
        self, engine: PaperEngine | None = None, *, category: str = "linear", **kwargs: Any
    ) -> None:
        kwargs.setdefault("order_types", BYBIT_ORDER_TYPES)
        kwargs.setdefault("default_leverage", Decimal(10))
        if category == "spot" and engine is None:
            engine = PaperEngine()  # BTC-USDT, ETH-USDT
        super().__init__(engine, **kwargs)
        # "linear" (perpetuals) or "spot": one category per venue object; a spot
        # account sells only what it holds (``holdings`` plus its fills).
        self.category = category
        self.spot = category == "spot"
        from bot4_ccxt.fakebybitstop import BybitStopOrders  # it builds on this class

        self.stops = BybitStopOrders(self)

    # --- wire format ----------------------------------------------------------------

    def _error(self, err: _ApiError) -> tuple[int, object]:
        code = err.code if err.code > 0 else _CODES.get(err.code)  # > 0: Bybit's own
        if code is None:
            code = 110007 if "insufficient" in err.msg.lower() else 10001
        status = 429 if code == 10006 else 200
        return status, {
            "retCode": code,
            "retMsg": err.msg,
            "result": {},
            "time": self.server_time(),
        }

    def _ok(self, result: object) -> object:
        return {
            "retCode": 0,
            "retMsg": "OK",
            "result": result,
            "retExtInfo": {},
            "time": self.server_time(),
        }

    def _check_signature(self, req: Any, query: str, body: str, params: Mapping[str, str]) -> None:
        if req.headers.get("X-BAPI-API-KEY") != self.api_key:
            raise _ApiError(200, -2015, "API key is invalid.")
        stamp = req.headers.get("X-BAPI-TIMESTAMP", "")
        window = req.headers.get("X-BAPI-RECV-WINDOW", "5000")
        payload = query if req.command == "GET" else body
        want = hmac.new(
            self.secret.encode(), f"{stamp}{self.api_key}{window}{payload}".encode(), hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(want, req.headers.get("X-BAPI-SIGN", "")):
            raise _ApiError(200, -1022, "error sign! origin_string[...]")
        try:
            at, recv = int(stamp), int(window)
        except ValueError:
            raise _ApiError(200, -1021, "invalid timestamp") from None
        now = self.server_time()
        if at >= now + 1000 or now - at > recv:
            raise _ApiError(
                200, -1021, "invalid request, please check your server timestamp or recv_window"
            )

    def _route(self, method: str, path: str, query: str, body: str, req: Any) -> object:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        if body:
            try:
                params.update(json.loads(body))
            except ValueError:
                raise _ApiError(200, -1102, "request body is not JSON") from None
        public = {
            ("GET", "/v5/market/time"): self._time,
            ("GET", "/v5/market/instruments-info"): self._instruments,
            ("GET", "/v5/market/tickers"): self._tickers_v5,
        }
        signed = {
            ("GET", "/v5/asset/coin/query-info"): self._coins,
            ("POST", "/v5/order/create"): self._create,
            ("POST", "/v5/order/cancel"): self._cancel_v5,
            ("GET", "/v5/order/realtime"): self._realtime,
            ("GET", "/v5/order/history"): self._history,
            ("GET", "/v5/execution/list"): self._executions,
            ("GET", "/v5/account/wallet-balance"): self._wallet_balance,
            ("GET", "/v5/position/list"): self._positions_v5,
            ("POST", "/v5/position/set-leverage"): self._set_leverage_v5,
            ("POST", "/v5/account/set-margin-mode"): self._set_margin_mode_v5,
            ("POST", "/v5/position/add-margin"): self._add_margin_v5,
        }
        key = (method, path)
        if key in public:
            with self.lock:
                return self._ok(public[key](params))
        if key in signed:
            self._check_signature(req, query, body, params)
            with self.lock:
                return self._ok(signed[key](params))
        raise _ApiError(404, -1000, f"no endpoint {method} {path} on this fake venue")

    def _linear(self, params: Mapping[str, Any]) -> None:
        if params.get("category") != self.category:
            raise _ApiError(
                200, -1102, f"category {params.get('category')!r}: only {self.category} here"
            )

    # --- public ---------------------------------------------------------------------

    def _time(self, params: Mapping[str, Any]) -> object:
        now = self.server_time()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    def _instruments(self, params: Mapping[str, Any]) -> object:
        if params.get("category") != self.category:
            return {"category": params.get("category"), "list": [], "nextPageCursor": ""}
        if self.spot:
            return self._spot_instruments()
        rows = []
        for symbol, m in sorted(self.engine.markets.items()):
            base, quote = symbol.split("-")[:2]
            rows.append(
                {
                    "symbol": _venue_symbol(symbol),
                    "contractType": "LinearPerpetual",
                    "status": "Trading",
                    "baseCoin": base,
                    "quoteCoin": quote,
                    "settleCoin": quote,
                    "launchTime": "1585526400000",
                    "deliveryTime": "0",
                    "deliveryFeeRate": "",
                    "priceScale": "2",
                    "leverageFilter": {
                        "minLeverage": "1",
                        "maxLeverage": _num(self.tiers[0].max_leverage),
                        "leverageStep": "0.01",
                    },
                    "priceFilter": {
                        "minPrice": _num(m.price_increment),
                        "maxPrice": "1999999.80",
                        "tickSize": _num(m.price_increment),
                    },
                    "lotSizeFilter": {
                        "maxOrderQty": "1000",
                        "maxMktOrderQty": "1000",
                        "minOrderQty": _num(m.min_qty),
                        "qtyStep": _num(m.qty_increment),
                        "postOnlyMaxOrderQty": "1000",
                        "minNotionalValue": "0",
                    },
                    "unifiedMarginTrade": True,
                    "fundingInterval": 480,
                    "copyTrading": "both",
                }
            )
        return {"category": self.category, "list": rows, "nextPageCursor": ""}

    def _spot_instruments(self) -> object:
        rows = []
        for symbol, m in sorted(self.engine.markets.items()):
            base, quote = symbol.split("-")[:2]
            rows.append(
                {
                    "symbol": _venue_symbol(symbol),
                    "baseCoin": base,
                    "quoteCoin": quote,
                    "innovation": "0",
                    "status": "Trading",
                    "marginTrading": "none",
                    "lotSizeFilter": {
                        "basePrecision": _num(m.qty_increment),
                        "quotePrecision": "0.00000001",
                        "minOrderQty": _num(m.min_qty),
                        "maxOrderQty": "1000",
                        "minOrderAmt": "0",
                        "maxOrderAmt": "10000000",
                    },
                    "priceFilter": {"tickSize": _num(m.price_increment)},
                }
            )
        return {"category": "spot", "list": rows, "nextPageCursor": ""}

    def _tickers_v5(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        wanted = params.get("symbol")
        rows = []
        for symbol in sorted(self.engine.markets):
            if wanted and _venue_symbol(symbol) != wanted:
                continue
            md = self._quote(symbol)
            bid, ask, last, vol = (
                (md.bid, md.ask, md.last, md.volume) if md else (ZERO, ZERO, ZERO, ZERO)
            )
            rows.append(
                {
                    "symbol": _venue_symbol(symbol),
                    "lastPrice": _num(last),
                    "bid1Price": _num(bid),
                    "bid1Size": _num(vol),
                    "ask1Price": _num(ask),
                    "ask1Size": _num(vol),
                    "markPrice": _num(self._mark(symbol) or ZERO),
                    "indexPrice": _num(self._mark(symbol) or ZERO),
                    "prevPrice24h": _num(last),
                    "price24hPcnt": "0",
                    "highPrice24h": _num(last),
                    "lowPrice24h": _num(last),
                    "volume24h": _num(vol),
                    "turnover24h": _num(vol * last),
                    "fundingRate": _num(self.funding_rate),
                    "nextFundingTime": "0",
                    # The quote's own time (ccxt reads a ticker's "time"): a
                    # client can tell one quote from the next.
                    "time": _ms(md.timestamp) if md else self.server_time(),
                }
            )
        return {"category": self.category, "list": rows}

    def _coins(self, params: Mapping[str, Any]) -> object:
        coins = sorted({part for s in self.engine.markets for part in s.split("-")[:2]})
        return {"rows": [{"name": c, "coin": c, "remainAmount": "0", "chains": []} for c in coins]}

    # --- orders ---------------------------------------------------------------------

    def _create(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        link = str(params.get("orderLinkId") or "")
        if link and not _LINK_ID.match(link):
            raise _ApiError(200, -1102, "orderLinkId is invalid")
        binance = {
            "symbol": str(params.get("symbol", "")),
            "side": str(params.get("side", "")).upper(),
            "type": str(params.get("orderType", "")).upper(),
            "quantity": str(params.get("qty", "")),
            "newClientOrderId": link,
            "reduceOnly": "true" if params.get("reduceOnly") in (True, "true") else "false",
        }
        if params.get("price") is not None:
            binance["price"] = str(params["price"])
        if params.get("triggerPrice") is not None:
            return self.stops.create(params, binance)
        out = self._new_order(binance)
        assert isinstance(out, dict)
        return {"orderId": str(out["orderId"]), "orderLinkId": out["clientOrderId"]}

    def _actual_coid(self, cond: Conditional) -> str:
        return cond.coid  # Bybit: the triggered order is the conditional order itself

    def _add_margin_v5(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        symbol = self._symbol(params)
        assert symbol is not None
        try:
            amount = Decimal(str(params.get("margin", "")))
        except ArithmeticError:
            raise _ApiError(200, -1102, "margin must be a number") from None
        if amount <= 0:
            raise _ApiError(200, -1102, "margin: only adding (> 0) is supported by this fake")
        try:
            self._add_margin(symbol, amount)
        except _ApiError as err:
            code = {-2019: 110012, -4054: 110021}.get(err.code, 10001)
            raise _ApiError(200, code, err.msg) from None
        rows = self._positions_v5({"category": self.category, "symbol": params["symbol"]})
        assert isinstance(rows, dict)
        return rows["list"][0]

    def _state_of(self, params: Mapping[str, Any]) -> OrderState:
        binance = {"symbol": str(params.get("symbol", ""))}
        if params.get("orderLinkId"):
            binance["origClientOrderId"] = str(params["orderLinkId"])
        elif params.get("orderId"):
            binance["orderId"] = str(params["orderId"])
        return self._find(binance)

    def _cancel_v5(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        cond = self.stops.find(params)
        if cond is not None and cond.actual is None:
            if cond.status != WAITING:
                raise _ApiError(200, 110001, "order not exists or too late to cancel")
            cond.status, cond.updated = CANCELED, self.server_time()
            return {"orderId": str(cond.order_id), "orderLinkId": cond.coid}
        binance = {"symbol": str(params.get("symbol", ""))}
        if params.get("orderLinkId"):
            binance["origClientOrderId"] = str(params["orderLinkId"])
        elif params.get("orderId"):
            binance["orderId"] = str(params["orderId"])
        out = self._cancel_order(binance)
        assert isinstance(out, dict)
        return {"orderId": str(out["orderId"]), "orderLinkId": out["origClientOrderId"]}

    def _orders(self, params: Mapping[str, Any], *, open_only: bool) -> object:
        self._linear(params)
        kinds = params.get("orderFilter")
        # realtime: conditional orders only under StopOrder; history: with no filter too.
        conditional = kinds == "StopOrder" or (kinds is None and not open_only)
        rows = self.stops.rows(params, open_only) if conditional else []
        if kinds != "StopOrder":
            rows += self._plain_rows(params, open_only)
        return {"category": self.category, "list": rows, "nextPageCursor": ""}

    def _plain_rows(self, params: Mapping[str, Any], open_only: bool) -> list[dict[str, Any]]:
        if params.get("orderLinkId") or params.get("orderId"):
            try:
                states = [self._state_of(params)]
            except _ApiError:
                states = []
        else:
            symbol = self._symbol(params, required=False)
            states = []
            for coid in self._ids:
                try:
                    states.append(self.engine.order_state(coid, symbol))
                except OrderNotFound:  # another symbol's order, or a waiting conditional
                    continue
        states = [s for s in states if s.order.client_order_id not in self.conditionals]
        # realtime: open orders, and (asked by id, as on a unified account) any
        # recent one; history: the closed ones.
        by_id = bool(params.get("orderLinkId") or params.get("orderId"))
        if open_only:
            return [self._order_v5(s) for s in states if s.status.is_open or by_id]
        return [self._order_v5(s) for s in states if not s.status.is_open]

    def _realtime(self, params: Mapping[str, Any]) -> object:
        return self._orders(params, open_only=True)

    def _history(self, params: Mapping[str, Any]) -> object:
        return self._orders(params, open_only=False)

    def _order_v5(self, state: OrderState) -> dict[str, Any]:
        order = state.order
        coid = order.client_order_id
        status = _STATUS[state.status]
        if state.status is OrderStatus.CANCELED and state.reason != "cancelled by request":
            status = "Deactivated"
        stamp = str(self._times.get(coid, self.server_time()))
        avg = state.avg_price or ZERO
        return {
            "orderId": str(self._ids.get(coid, 0)),
            "orderLinkId": self._link(coid),
            "symbol": _venue_symbol(order.symbol),
            "side": "Buy" if order.side.value == "buy" else "Sell",
            "orderType": "Limit" if order.type is OrderType.LIMIT else "Market",
            "price": _num(order.price) if order.price is not None else "0",
            "qty": _num(order.qty),
            "cumExecQty": _num(state.filled_qty),
            "cumExecValue": _num(avg * state.filled_qty),
            "cumExecFee": "0",
            "avgPrice": _num(avg) if state.filled_qty else "",
            "leavesQty": _num(order.qty - state.filled_qty if state.status.is_open else ZERO),
            "orderStatus": status,
            "timeInForce": "GTC" if order.type is OrderType.LIMIT else "IOC",
            "reduceOnly": order.reduce_only,
            "closeOnTrigger": False,
            "triggerPrice": "",
            "triggerDirection": 0,
            "stopOrderType": "",
            "positionIdx": 0,
            "createdTime": stamp,
            "updatedTime": stamp,
        }

    def _link(self, coid: str) -> str:
        """The orderLinkId Bybit shows: none for the venue's own (liquidation) orders."""
        return "" if coid in self.liquidations else coid

    def _executions(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        symbol = self._symbol(params, required=False)
        limit = int(params.get("limit", 50))
        if not 1 <= limit <= 100:
            raise _ApiError(200, -1102, "limit must be 1 to 100")
        start = int(params["startTime"]) if params.get("startTime") else None
        rows = []
        for f in self.engine.fills():
            if symbol is not None and f.symbol != symbol:
                continue
            stamp = _ms(f.timestamp)
            if start is not None and stamp < start:
                continue
            rows.append(
                {
                    "symbol": _venue_symbol(f.symbol),
                    "orderId": str(self._ids.get(f.client_order_id, 0)),
                    "orderLinkId": self._link(f.client_order_id),
                    "side": "Buy" if f.side.value == "buy" else "Sell",
                    "execId": f.fill_id.rsplit("-", 1)[1],
                    "execPrice": _num(f.price),
                    "execQty": _num(f.qty),
                    "execValue": _num(f.price * f.qty),
                    "execFee": _num(f.fee),
                    "feeCurrency": "USDT",
                    "feeCoin": "USDT",  # the paper engine charges every fee in the quote
                    "execType": "BustTrade" if f.client_order_id in self.liquidations else "Trade",
                    "execTime": str(stamp),
                    "isMaker": f.liquidity == "maker",
                    "orderType": "Market",
                    "orderPrice": _num(f.price),
                    "orderQty": _num(f.qty),
                    "leavesQty": "0",
                    "markPrice": _num(self._mark(f.symbol) or f.price),
                    "closedSize": "0",
                }
            )
            if len(rows) >= limit:
                break
        return {"category": self.category, "list": rows, "nextPageCursor": ""}

    # --- account --------------------------------------------------------------------

    def _wallet_balance(self, params: Mapping[str, Any]) -> object:
        a = self._assets()
        coin = {
            "coin": a["asset"],
            "equity": a["marginBalance"],
            "walletBalance": a["marginBalance"],
            "availableToWithdraw": a["availableBalance"],
            "locked": "0",
            "totalPositionIM": a["positionInitialMargin"],
            "totalOrderIM": a["openOrderInitialMargin"],
            "totalPositionMM": a["maintMargin"],
            "unrealisedPnl": a["unrealizedProfit"],
            "cumRealisedPnl": "0",
            "usdValue": a["marginBalance"],
            "borrowAmount": "0",
            "accruedInterest": "0",
            "marginCollateral": True,
            "collateralSwitch": True,
        }
        return {
            "list": [
                {
                    "accountType": "UNIFIED",
                    "totalEquity": a["marginBalance"],
                    "totalWalletBalance": a["walletBalance"],
                    "totalAvailableBalance": a["availableBalance"],
                    "totalInitialMargin": a["initialMargin"],
                    "totalMaintenanceMargin": a["maintMargin"],
                    "coin": [coin],
                }
            ]
        }

    def _positions_v5(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        risk = self._position_risk({k: str(v) for k, v in params.items() if k == "symbol"})
        assert isinstance(risk, list)
        rows = []
        for r in risk:
            qty = Decimal(r["positionAmt"])
            rows.append(
                {
                    "symbol": r["symbol"],
                    "side": "Buy" if qty > 0 else "Sell" if qty < 0 else "",
                    "size": _num(abs(qty)),
                    "avgPrice": r["entryPrice"],
                    "positionValue": _num(abs(qty) * Decimal(r["entryPrice"])),
                    "tradeMode": 1 if r["marginType"] == "isolated" else 0,
                    "leverage": r["leverage"],
                    "markPrice": r["markPrice"],
                    "liqPrice": r["liquidationPrice"] if qty else "",
                    "positionIM": r["initialMargin"],
                    "positionMM": r["maintMargin"],
                    "positionBalance": r["isolatedWallet"],
                    "unrealisedPnl": r["unRealizedProfit"],
                    "cumRealisedPnl": "0",
                    "positionIdx": 0,
                    "riskId": 1,
                    "autoAddMargin": 0,
                    "positionStatus": "Normal",
                    "createdTime": str(r["updateTime"]),
                    "updatedTime": str(r["updateTime"]),
                }
            )
        return {"category": self.category, "list": rows, "nextPageCursor": ""}

    def _set_leverage_v5(self, params: Mapping[str, Any]) -> object:
        self._linear(params)
        symbol = self._symbol(params)
        assert symbol is not None
        buy, sell = str(params.get("buyLeverage", "")), str(params.get("sellLeverage", ""))
        if buy != sell:
            raise _ApiError(200, -1102, "buyLeverage must equal sellLeverage in one-way mode")
        if self.leverage.get(symbol, self.default_leverage) == Decimal(buy or "0"):
            raise _ApiError(200, 110043, "leverage not modified")
        out = self._set_leverage({"symbol": _venue_symbol(symbol), "leverage": buy})
        assert out
        return {}

    def _set_margin_mode_v5(self, params: Mapping[str, Any]) -> object:
        mode = {"ISOLATED_MARGIN": "ISOLATED", "REGULAR_MARGIN": "CROSSED"}.get(
            str(params.get("setMarginMode"))
        )
        if mode is None:
            raise _ApiError(200, -1102, "setMarginMode must be ISOLATED_MARGIN or REGULAR_MARGIN")
        if all(self.margin_type.get(s, "CROSSED") == mode for s in self.engine.markets):
            return {"reasons": []}  # already the account's mode
        if any(p.qty for p in self.engine.positions()):
            raise _ApiError(200, -1102, "cannot switch the margin mode with open positions")
        for symbol in self.engine.markets:
            self.margin_type[symbol] = mode
        return {"reasons": []}
