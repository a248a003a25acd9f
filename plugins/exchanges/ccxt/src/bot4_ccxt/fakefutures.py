"""A local exchange server that speaks Binance's USDⓈ-M futures REST API
(``/fapi``): :class:`FakeBinance`'s server, signing, fault injection and paper
matching engine, with perpetual semantics on top. ccxt's ``binanceusdm``
client talks to it unchanged (``api_url``)::

    with FakeBinanceFutures() as venue:     # BTC-USDT-PERP, venue symbol BTCUSDT
        venue.push(tick)
        venue.inject("POST", "/fapi/v1/order", "500", process=True)

Endpoints (what ccxt's ``binanceusdm`` calls for bot4)::

    GET    /fapi/v1/ping, /fapi/v1/time, /fapi/v1/exchangeInfo, /fapi/v1/ticker/24hr,
           /fapi/v1/ticker/bookTicker, /fapi/v1/premiumIndex, /fapi/v1/depth
    POST   /fapi/v1/order   MARKET, LIMIT, reduceOnly (conditional types: -4120, as on
                            Binance since its conditional orders moved to the Algo Service)
    GET    /fapi/v1/order, /fapi/v1/openOrders, /fapi/v1/allOrders, /fapi/v1/userTrades
    DELETE /fapi/v1/order
    POST   /fapi/v1/algoOrder  STOP_MARKET, TAKE_PROFIT_MARKET (triggerPrice, workingType,
                               reduceOnly or closePosition, clientAlgoId): bot4_ccxt.fakealgo
    GET    /fapi/v1/algoOrder, /fapi/v1/openAlgoOrders, /fapi/v1/allAlgoOrders
    DELETE /fapi/v1/algoOrder
    POST   /fapi/v1/leverage, /fapi/v1/marginType, /fapi/v1/positionMargin (add margin)
    GET    /fapi/v2/account, /fapi/v3/account, /fapi/v2/balance,
           /fapi/v2/positionRisk, /fapi/v3/positionRisk, /fapi/v1/leverageBracket,
           /fapi/v1/income

**The account.** The paper engine holds the orders, fills and positions at
each symbol's leverage (``POST /fapi/v1/leverage``, default 20): margin is
notional / leverage, reduce-only orders never grow a position. What only a
futures venue reports comes from :mod:`bot4.margin`: the maintenance
margin by notional tier, the liquidation price of each position (isolated:
its initial margin as collateral; cross: the wallet), funding at the funding
times (every 8 h at ``funding_rate``, default 0.01%, paid on the mark: the mid
of the last quote), kept in an income ledger and in the wallet balance.

**Liquidation.** When a quote's mark crosses a position's liquidation price
the venue closes it with a reduce-only market order whose client id starts
with ``autoclose-`` (Binance's name for them), recorded in
:attr:`FakeBinanceFutures.liquidations`. The close fills at the quote, not at
the liquidation price, and the engine does not know the funding ledger when
it checks an order's margin: both are reconciled with the paper venue's own
margin model later.

**Conditional orders** (:mod:`bot4_ccxt.fakeconditional`) wait outside the
engine and, triggered by a quote, place a market order in it (reduce-only if
they were). **Add margin** (``positionMargin`` type 1) moves free balance into
an isolated position through the engine's margin book
(:meth:`bot4_paper.engine.PaperEngine.add_margin`), which moves its
liquidation price; it is released when the position closes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from bot4_paper.engine import PaperEngine

from bot4.contracts import MarketInfo
from bot4.errors import InsufficientFunds, InvalidOrder
from bot4.margin import (
    DEFAULT_TIERS,
    MarginPositionModel,
    Tier,
    funding_payment,
    funding_times,
)
from bot4.model import ZERO, MarketData, Order, OrderState, OrderType, Side
from bot4_ccxt.fakebinance import FakeBinance
from bot4_ccxt.fakeconditional import REJECTED, TRIGGERED, Conditional, ConditionalBook
from bot4_ccxt.fakeserver import _ApiError
from bot4_ccxt.fakewire import _ms, _num, _venue_symbol

__all__ = ["PERP_MARKETS", "FakeBinanceFutures"]

PERP_MARKETS: Mapping[str, MarketInfo] = {
    "BTC-USDT-PERP": MarketInfo(
        "BTC-USDT-PERP", Decimal("0.01"), Decimal("0.0001"), Decimal("0.0001")
    ),
    "ETH-USDT-PERP": MarketInfo(
        "ETH-USDT-PERP", Decimal("0.01"), Decimal("0.001"), Decimal("0.001")
    ),
}
FAPI_ORDER_TYPES = ("LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET")
_FAPI_TYPES = {
    "MARKET": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "STOP_MARKET": OrderType.STOP_LOSS,
    "TAKE_PROFIT_MARKET": OrderType.TAKE_PROFIT,
}


class FakeBinanceFutures(FakeBinance):
    """A Binance USDⓈ-M futures REST server (see the module docstring)."""

    spot = False

    def __init__(
        self,
        engine: PaperEngine | None = None,
        *,
        funding_rate: Decimal = Decimal("0.0001"),
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        default_leverage: Decimal = Decimal(20),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("order_types", FAPI_ORDER_TYPES)
        super().__init__(
            engine if engine is not None else PaperEngine(dict(PERP_MARKETS)), **kwargs
        )
        self.type_map = _FAPI_TYPES
        self.type_names = {v: k for k, v in _FAPI_TYPES.items()}
        self.funding_rate = funding_rate
        self.tiers = tuple(tiers)
        self.default_leverage = default_leverage
        self.leverage: dict[str, Decimal] = {}
        self.margin_type: dict[str, str] = {}  # symbol -> ISOLATED / CROSSED
        self.income: list[dict[str, Any]] = []  # funding payments, Binance's income records
        self.funding_total = ZERO
        self.liquidations: list[str] = []  # client ids of the venue's closing orders
        self.conditionals = ConditionalBook()  # stop and take-profit orders (not in the engine)
        self._funded_to: datetime | None = None
        from bot4_ccxt.fakealgo import AlgoService  # it builds on this class

        self.algo = AlgoService(self)

    # --- control ------------------------------------------------------------------

    def push(self, tick: MarketData) -> None:
        if self.spot:  # a spot account: no funding, no liquidation
            super().push(tick)
            return
        with self.lock:
            self._fund(tick)
            super().push(tick)
            self._liquidate(tick)
            self._fire(tick)

    def _mark(self, symbol: str) -> Decimal | None:
        md = self._quote(symbol)
        return (md.bid + md.ask) / 2 if md is not None else None

    def _fund(self, tick: MarketData) -> None:
        """Pay funding for every funding time since the last quote."""
        last = self._funded_to
        self._funded_to = tick.timestamp if last is None else max(last, tick.timestamp)
        if last is None or tick.timestamp <= last:
            return
        for when in funding_times(last, tick.timestamp):
            for pos in self.engine.positions():
                mark = self._mark(pos.symbol)
                if mark is None or pos.qty == 0:
                    continue
                pay = funding_payment(pos.qty, mark, self.funding_rate)
                self.funding_total += pay
                self.income.append(
                    {
                        "symbol": self._vsym(pos.symbol),
                        "incomeType": "FUNDING_FEE",
                        "income": _num(pay),
                        "asset": "USDT",
                        "time": _ms(when),
                        "info": "FUNDING_FEE",
                        "tranId": len(self.income) + 1,
                        "tradeId": "",
                    }
                )

    def model(self, symbol: str) -> MarginPositionModel | None:
        """The margin model's view of the position in ``symbol`` (None when flat)."""
        pos = next((p for p in self.engine.positions() if p.symbol == symbol), None)
        if pos is None or pos.qty == 0:
            return None
        lev = self.leverage.get(symbol, self.default_leverage)
        mode = "cross" if self.margin_type.get(symbol, "CROSSED") == "CROSSED" else "isolated"
        model = MarginPositionModel.opened(pos.qty, pos.entry_price, lev, mode)
        # Collateral added to the isolated position (positionMargin) is in the engine's book.
        added = self.engine.margin.added.get(symbol, ZERO) if mode == "isolated" else ZERO
        return MarginPositionModel(
            model.qty, model.entry, lev, mode, model.collateral + added, self.tiers
        )

    def liquidation_price(self, symbol: str) -> Decimal | None:
        model = self.model(symbol)
        if model is None:
            return None
        if model.mode == "isolated":
            return model.liquidation_price()
        wallet = self._wallet()
        for other in self.engine.positions():
            if other.symbol == symbol or other.qty == 0:
                continue
            mark = self._mark(other.symbol) or other.entry_price
            wallet += other.unrealized_pnl(mark) - (
                MarginPositionModel(other.qty, other.entry_price, Decimal(1)).maintenance(mark)
            )
        return model.liquidation_price(wallet)

    def _wallet(self) -> Decimal:
        return self.engine.tracker.cash + self.funding_total

    def _liquidate(self, tick: MarketData) -> None:
        lp = self.liquidation_price(tick.symbol)
        model = self.model(tick.symbol)
        mark = self._mark(tick.symbol)
        if lp is None or model is None or mark is None:
            return
        if (model.qty > 0 and mark > lp) or (model.qty < 0 and mark < lp):
            return
        coid = f"autoclose-{len(self.liquidations) + 1}"
        order = Order(
            client_order_id=coid,
            symbol=tick.symbol,
            side=Side.SELL if model.qty > 0 else Side.BUY,
            type=OrderType.MARKET,
            qty=abs(model.qty),
            reduce_only=True,
            leverage=model.leverage,
            strategy="liquidation",
        )
        self.engine.place(order)
        self._register(coid)
        self.liquidations.append(coid)

    def _register(self, coid: str) -> int:
        """A new venue order id for ``coid`` (the venue's own orders too)."""
        order_id = len(self._ids) + 1
        self._ids[coid] = order_id
        self._coids[order_id] = coid
        self._times[coid] = _ms(self.engine.now)
        return order_id

    # --- conditional orders ---------------------------------------------------------

    def _actual_coid(self, cond: Conditional) -> str:
        """The client id of the order a triggered conditional places. Binance:
        an id of the venue's own (the algo order keeps the caller's)."""
        return f"algo-{cond.order_id}"

    def _fire(self, tick: MarketData) -> None:
        """Trigger the conditional orders this quote reaches (module docstring)."""
        mark = self._mark(tick.symbol)
        if mark is None:
            return
        for cond in self.conditionals.due(tick.symbol, tick.last, mark):
            cond.status = TRIGGERED
            cond.triggered_at = cond.updated = _ms(tick.timestamp)
            held = next((p.qty for p in self.engine.positions() if p.symbol == cond.symbol), ZERO)
            qty = cond.qty if cond.qty is not None else abs(held)
            if not qty:
                cond.status, cond.reason = REJECTED, "no position to close"
                continue
            coid = self._actual_coid(cond)
            order = Order(
                client_order_id=coid,
                symbol=cond.symbol,
                side=cond.side,
                type=OrderType.MARKET,
                qty=qty,
                reduce_only=cond.reduce_only or cond.qty is None,
                leverage=self.leverage.get(cond.symbol, self.default_leverage),
                strategy="conditional",
            )
            try:
                self.engine.place(order)
            except (InsufficientFunds, InvalidOrder) as exc:
                cond.status, cond.reason = REJECTED, str(exc)
                continue
            cond.actual = coid
            if coid not in self._ids:
                self._register(coid)

    def _trigger_price(self, symbol: str, watch: str) -> Decimal | None:
        """The price a conditional order in ``symbol`` watching ``watch`` sees now."""
        md = self._quote(symbol)
        if md is None:
            return None
        return self._mark(symbol) if watch == "mark" else md.last

    def _add_margin(self, symbol: str, amount: Decimal) -> None:
        """Move ``amount`` into the isolated position in ``symbol`` (engine's margin book)."""
        if self.margin_type.get(symbol, "CROSSED") != "ISOLATED":
            raise _ApiError(400, -4049, "Add margin only support for isolated position.")
        if not any(p.symbol == symbol and p.qty for p in self.engine.positions()):
            raise _ApiError(400, -4054, "Cannot add position margin: position is 0.")
        if not amount.is_finite() or amount <= 0:
            raise _ApiError(400, -1102, "Mandatory parameter 'amount' was not sent or invalid.")
        try:
            self.engine.add_margin(symbol, amount)
        except InsufficientFunds:
            raise _ApiError(400, -2019, "Margin is insufficient.") from None
        except InvalidOrder as exc:
            raise _ApiError(400, -1102, str(exc)) from None

    # --- request handling ---------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: str, req: Any) -> object:
        if not path.startswith("/fapi/"):
            raise _ApiError(404, -1000, f"no endpoint {method} {path} on this fake venue")
        spot_path = {
            "/fapi/v1/ping": "/api/v3/ping",
            "/fapi/v1/time": "/api/v3/time",
            "/fapi/v1/ticker/24hr": "/api/v3/ticker/24hr",
            "/fapi/v1/ticker/bookTicker": "/api/v3/ticker/bookTicker",
            "/fapi/v1/ticker/price": "/api/v3/ticker/price",
            "/fapi/v1/depth": "/api/v3/depth",
            "/fapi/v1/order": "/api/v3/order",
            "/fapi/v1/openOrders": "/api/v3/openOrders",
            "/fapi/v1/allOrders": "/api/v3/allOrders",
        }.get(path)
        if spot_path is not None:
            return super()._route(method, spot_path, query, body, req)
        from urllib.parse import parse_qsl

        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        public = {
            ("GET", "/fapi/v1/exchangeInfo"): self._futures_info,
            ("GET", "/fapi/v1/premiumIndex"): self._premium_index,
        }
        signed = {
            ("GET", "/fapi/v1/userTrades"): self._user_trades,
            ("GET", "/fapi/v2/account"): self._futures_account,
            ("GET", "/fapi/v3/account"): self._futures_account,
            ("GET", "/fapi/v2/balance"): self._futures_balance,
            ("GET", "/fapi/v2/positionRisk"): self._position_risk,
            ("GET", "/fapi/v3/positionRisk"): self._position_risk,
            ("GET", "/fapi/v1/leverageBracket"): self._brackets,
            ("GET", "/fapi/v1/income"): self._income,
            ("POST", "/fapi/v1/leverage"): self._set_leverage,
            ("POST", "/fapi/v1/marginType"): self._set_margin_type,
            ("POST", "/fapi/v1/positionMargin"): self._position_margin,
            **self.algo.routes(),
        }
        key = (method, path)
        if key in public:
            with self.lock:
                return public[key](params)
        if key in signed:
            self._check_signature(req, query, body, params)
            with self.lock:
                return signed[key](params)
        raise _ApiError(404, -1000, f"no endpoint {method} {path} on this fake venue")

    # --- futures specifics ----------------------------------------------------------

    def _new_order(self, params: Mapping[str, str]) -> object:
        if not self.spot and params.get("type") in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
            raise _ApiError(
                400,
                -4120,
                "Order type not supported for this endpoint. Please use the Algo Order API "
                "endpoints instead.",
            )
        return super()._new_order(params)

    def _order_extras(self, symbol: str, params: Mapping[str, str]) -> dict[str, Any]:
        if self.spot:
            return {}
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        if reduce_only:
            pos = next((p.qty for p in self.engine.positions() if p.symbol == symbol), ZERO)
            side = params.get("side")
            if pos == 0 or (pos > 0 and side == "BUY") or (pos < 0 and side == "SELL"):
                raise _ApiError(400, -2022, "ReduceOnly Order is rejected.")
        return {
            "leverage": self.leverage.get(symbol, self.default_leverage),
            "reduce_only": reduce_only,
        }

    def _order_json(self, state: OrderState) -> dict[str, Any]:
        out = super()._order_json(state)
        out.pop("cummulativeQuoteQty", None)
        notional = (state.avg_price or ZERO) * state.filled_qty
        out.update(
            {
                "avgPrice": _num(state.avg_price or ZERO),
                "cumQuote": _num(notional),
                "reduceOnly": state.order.reduce_only,
                "closePosition": False,
                "positionSide": "BOTH",
                "origType": out["type"],
                "workingType": "CONTRACT_PRICE",
                "priceProtect": False,
                "timeInForce": "GTC",
            }
        )
        return out

    def _futures_info(self, params: Mapping[str, str]) -> object:
        symbols = []
        for symbol, m in sorted(self.engine.markets.items()):
            base, quote = symbol.split("-")[:2]
            symbols.append(
                {
                    "symbol": _venue_symbol(symbol),
                    "pair": _venue_symbol(symbol),
                    "contractType": "PERPETUAL",
                    "deliveryDate": 4133404800000,
                    "onboardDate": 1569398400000,
                    "status": "TRADING",
                    "baseAsset": base,
                    "quoteAsset": quote,
                    "marginAsset": quote,
                    "pricePrecision": 2,
                    "quantityPrecision": 4,
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "settlePlan": 0,
                    "triggerProtect": "0.0500",
                    "liquidationFee": "0.012500",
                    "marketTakeBound": "0.05",
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": _num(m.price_increment),
                            "maxPrice": "10000000",
                            "tickSize": _num(m.price_increment),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": _num(m.min_qty),
                            "maxQty": "1000",
                            "stepSize": _num(m.qty_increment),
                        },
                        {
                            "filterType": "MARKET_LOT_SIZE",
                            "minQty": _num(m.min_qty),
                            "maxQty": "1000",
                            "stepSize": _num(m.qty_increment),
                        },
                    ],
                    "orderTypes": list(self.order_types),
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": self.server_time(),
            "rateLimits": [],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True}],
            "symbols": symbols,
        }

    def _premium_index(self, params: Mapping[str, str]) -> object:
        def one(symbol: str) -> dict[str, Any]:
            mark = self._mark(symbol) or ZERO
            return {
                "symbol": _venue_symbol(symbol),
                "markPrice": _num(mark),
                "indexPrice": _num(mark),
                "lastFundingRate": _num(self.funding_rate),
                "interestRate": "0.0001",
                "nextFundingTime": 0,
                "time": self.server_time(),
            }

        symbol = self._symbol(params, required=False)
        return one(symbol) if symbol else [one(s) for s in sorted(self.engine.markets)]

    def _user_trades(self, params: Mapping[str, str]) -> object:
        rows = self._my_trades(params)
        assert isinstance(rows, list)
        for row in rows:
            row["buyer"] = row.pop("isBuyer")
            row["maker"] = row.pop("isMaker")
            row["side"] = "BUY" if row["buyer"] else "SELL"
            row["positionSide"] = "BOTH"
            row["marginAsset"] = "USDT"
            row["realizedPnl"] = "0"
        return rows

    def _assets(self) -> dict[str, str]:
        bal = self.engine.balance()
        wallet = self._wallet()
        upnl = bal.total - self.engine.tracker.cash
        total = bal.total + self.funding_total
        # Margin held by positions: their initial margin and what was added to them.
        position_margin = self.engine.tracker.margin_used() + self.engine.margin.added_total
        return {
            "asset": bal.currency,
            "walletBalance": _num(wallet),
            "unrealizedProfit": _num(upnl),
            "marginBalance": _num(total),
            "maintMargin": _num(self._maintenance()),
            "initialMargin": _num(bal.used),
            "positionInitialMargin": _num(position_margin),
            "openOrderInitialMargin": _num(bal.used - position_margin),
            "crossWalletBalance": _num(wallet),
            "crossUnPnl": _num(upnl),
            "availableBalance": _num(total - bal.used),
            "maxWithdrawAmount": _num(max(ZERO, total - bal.used)),
            "updateTime": self.server_time(),  # type: ignore[dict-item]
        }

    def _maintenance(self) -> Decimal:
        out = ZERO
        for pos in self.engine.positions():
            model = self.model(pos.symbol)
            mark = self._mark(pos.symbol)
            if model is not None and mark is not None:
                out += model.maintenance(mark)
        return out

    def _futures_account(self, params: Mapping[str, str]) -> object:
        asset = self._assets()
        return {
            "totalInitialMargin": asset["initialMargin"],
            "totalMaintMargin": asset["maintMargin"],
            "totalWalletBalance": asset["walletBalance"],
            "totalUnrealizedProfit": asset["unrealizedProfit"],
            "totalMarginBalance": asset["marginBalance"],
            "availableBalance": asset["availableBalance"],
            "maxWithdrawAmount": asset["maxWithdrawAmount"],
            "assets": [asset],
            "positions": [],
        }

    def _futures_balance(self, params: Mapping[str, str]) -> object:
        a = self._assets()
        return [
            {
                "accountAlias": "fake",
                "asset": a["asset"],
                "balance": a["walletBalance"],
                "crossWalletBalance": a["crossWalletBalance"],
                "crossUnPnl": a["crossUnPnl"],
                "availableBalance": a["availableBalance"],
                "maxWithdrawAmount": a["maxWithdrawAmount"],
                "updateTime": a["updateTime"],
            }
        ]

    def _position_risk(self, params: Mapping[str, str]) -> object:
        wanted = self._symbol(params, required=False)
        out = []
        for symbol in sorted(self.engine.markets):
            if wanted is not None and symbol != wanted:
                continue
            pos = next((p for p in self.engine.positions() if p.symbol == symbol), None)
            qty = pos.qty if pos is not None else ZERO
            entry = pos.entry_price if pos is not None else ZERO
            mark = self._mark(symbol) or ZERO
            model = self.model(symbol)
            lev = self.leverage.get(symbol, self.default_leverage)
            isolated = self.margin_type.get(symbol, "CROSSED") == "ISOLATED"
            lp = self.liquidation_price(symbol) or ZERO
            collateral = model.collateral if model is not None and isolated else ZERO
            upnl = qty * (mark - entry) if qty else ZERO
            out.append(
                {
                    "symbol": _venue_symbol(symbol),
                    "positionSide": "BOTH",
                    "positionAmt": _num(qty),
                    "entryPrice": _num(entry),
                    "breakEvenPrice": _num(entry),
                    "markPrice": _num(mark),
                    "unRealizedProfit": _num(upnl),
                    "liquidationPrice": _num(lp),
                    "leverage": _num(lev),
                    "maxNotionalValue": "50000",
                    "marginType": "isolated" if isolated else "cross",
                    "isolatedMargin": _num(collateral + upnl if isolated else ZERO),
                    "isolatedWallet": _num(collateral),
                    "isAutoAddMargin": "false",
                    "notional": _num(qty * mark),
                    "initialMargin": _num(model.initial_margin() if model else ZERO),
                    "maintMargin": _num(model.maintenance(mark) if model else ZERO),
                    "positionInitialMargin": _num(model.initial_margin() if model else ZERO),
                    "openOrderInitialMargin": "0",
                    "marginAsset": "USDT",
                    "adl": 0,
                    "updateTime": self.server_time(),
                }
            )
        return out

    def _brackets(self, params: Mapping[str, str]) -> object:
        rows = []
        floor = ZERO
        for n, tier in enumerate(self.tiers, 1):
            cap = tier.cap if tier.cap is not None else Decimal(10) ** 12
            rows.append(
                {
                    "bracket": n,
                    "initialLeverage": int(tier.max_leverage),
                    "notionalCap": float(cap),
                    "notionalFloor": float(floor),
                    "maintMarginRatio": float(tier.rate),
                    "cum": float(tier.cum),
                }
            )
            floor = cap
        return [{"symbol": _venue_symbol(s), "brackets": rows} for s in sorted(self.engine.markets)]

    def _income(self, params: Mapping[str, str]) -> object:
        return list(self.income)

    def _set_leverage(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        try:
            lev = int(params["leverage"])
        except (KeyError, ValueError):
            raise _ApiError(400, -1102, "Mandatory parameter 'leverage' was not sent.") from None
        cap = int(self.tiers[0].max_leverage)
        if not 1 <= lev <= cap:
            raise _ApiError(400, -4028, f"Leverage {lev} is not valid")
        self.leverage[symbol] = Decimal(lev)
        return {"symbol": _venue_symbol(symbol), "leverage": lev, "maxNotionalValue": "50000"}

    def _set_margin_type(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        kind = params.get("marginType", "")
        if kind not in ("ISOLATED", "CROSSED"):
            raise _ApiError(400, -1116, "Invalid marginType.")
        if self.margin_type.get(symbol, "CROSSED") == kind:
            raise _ApiError(400, -4046, "No need to change margin type.")
        if any(p.symbol == symbol and p.qty for p in self.engine.positions()):
            raise _ApiError(400, -4048, "Margin type cannot be changed if there exists position.")
        self.margin_type[symbol] = kind
        return {"code": 200, "msg": "success"}

    def _position_margin(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        if params.get("type") != "1":
            raise _ApiError(400, -1102, "type: only 1 (add margin) is supported by this fake venue")
        try:
            amount = Decimal(params.get("amount", ""))
        except ArithmeticError:
            raise _ApiError(400, -1102, "Mandatory parameter 'amount' was not sent.") from None
        self._add_margin(symbol, amount)
        return {
            "amount": float(amount),
            "code": 200,
            "msg": "Successfully modify position margin.",
            "type": 1,
        }
