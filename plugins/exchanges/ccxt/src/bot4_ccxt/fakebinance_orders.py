"""The signed order and account endpoints of the fake Binance spot venue.

:class:`OrderEndpoints` is the part of :class:`~bot4_ccxt.fakebinance.FakeBinance`
that places, finds and cancels orders in the paper engine and reads the
account back, in Binance's terms:

* **placing** (``POST order``) checks what Binance checks, in its order and
  with its codes: the type (-1116 unknown, -1013 not among the venue's
  ``order_types``), the side (-1117), a client order id not seen before
  (-2010; none given: ``fake-<n>``), quantity and price present and numeric
  (-1102, -1100), on a spot account a sell within the free holding (-2010),
  the lot and tick sizes (-1013), then the engine's own refusals (-2010).
  An accepted order gets the next ``orderId`` (1, 2, ...), kept with its
  placement time in the venue's ``_ids``, ``_coids`` and ``_times``; the reply
  carries the fills it made at once. :meth:`OrderEndpoints._order_extras` is
  the hook for more Order fields (the futures venue's leverage and
  reduce-only);
* **finding** (``GET order``, ``DELETE order``) by ``origClientOrderId`` or
  ``orderId``: -2013 when unknown, -2011 on a cancel of an order unknown or
  no longer open, as Binance answers;
* **lists and the account** (``openOrders``, ``allOrders``, ``account``,
  ``myTrades``): orders with an ``orderId`` (not the engine's own), balances
  by the account mapping of :mod:`bot4_ccxt.fakebinance`'s docstring (quote
  free and locked from the engine's margin, base holdings plus positions,
  locked by open sells), trades by ``fromId``, ``startTime``, ``endTime`` and
  ``limit`` (at most 1000).

:meth:`OrderEndpoints._order_json` is Binance's order record (an order the
venue closed, not its owner, is ``EXPIRED``; a stop's price is its
``stopPrice``), which the futures venue extends. A mixin, so these are the
venue's own methods, bound as before; it knows the venue only through the
attributes declared below, which mypy checks against :class:`FakeBinance`,
and imports no venue.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from bot4.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.model import ZERO, Order, OrderState, OrderStatus, OrderType, Side
from bot4_ccxt.fakeserver import _ApiError
from bot4_ccxt.fakewire import _ms, _num

if TYPE_CHECKING:
    from bot4_paper.engine import PaperEngine

__all__ = ["OrderEndpoints"]


class OrderEndpoints:
    """Binance spot's signed order and account endpoints (module docstring)."""

    if TYPE_CHECKING:
        # What this part uses of FakeBinance (set or defined there).
        engine: PaperEngine
        spot: bool
        type_map: Mapping[str, OrderType]
        type_names: Mapping[OrderType, str]
        order_types: tuple[str, ...]
        holdings: dict[str, Decimal]
        _ids: dict[str, int]
        _coids: dict[int, str]
        _times: dict[str, int]

        def _vsym(self, symbol: str) -> str: ...

        def _symbol(self, params: Mapping[str, str], required: bool = True) -> str | None: ...

        def server_time(self) -> int: ...

    def _new_order(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        kind = self.type_map.get(params.get("type", ""))
        if kind is None:
            raise _ApiError(400, -1116, "Invalid orderType.")
        if params.get("type") not in self.order_types:
            raise _ApiError(400, -1013, "Order type not supported for this symbol.")
        side_raw = params.get("side", "")
        if side_raw not in ("BUY", "SELL"):
            raise _ApiError(400, -1117, "Invalid side.")
        coid = params.get("newClientOrderId") or f"fake-{len(self._ids) + 1}"
        if coid in self._ids:
            raise _ApiError(400, -2010, "Duplicate order sent.")
        price_key = "price" if kind is OrderType.LIMIT else "stopPrice"
        try:
            qty = Decimal(params["quantity"])
            price = Decimal(params[price_key]) if kind is not OrderType.MARKET else None
        except KeyError as exc:
            raise _ApiError(
                400, -1102, f"Mandatory parameter '{exc.args[0]}' was not sent."
            ) from None
        except InvalidOperation:
            raise _ApiError(400, -1100, "Illegal characters found in a parameter.") from None
        market = self.engine.markets[symbol]
        if self.spot and side_raw == "SELL" and qty > self._free_base(symbol):
            raise _ApiError(400, -2010, "Account has insufficient balance for requested action.")
        if qty < market.min_qty or (qty / market.qty_increment) % 1:
            raise _ApiError(400, -1013, "Filter failure: LOT_SIZE")
        if price is not None and (price <= 0 or (price / market.price_increment) % 1):
            raise _ApiError(400, -1013, "Filter failure: PRICE_FILTER")
        try:
            order = Order(
                client_order_id=coid,
                symbol=symbol,
                side=Side(side_raw.lower()),
                type=kind,
                qty=qty,
                price=price,
                strategy="binance",
                **self._order_extras(symbol, params),
            )
            state = self.engine.place(order)
        except InsufficientFunds:
            raise _ApiError(
                400, -2010, "Account has insufficient balance for requested action."
            ) from None
        except InvalidOrder as exc:
            if "trigger at once" in str(exc):
                raise _ApiError(400, -2010, "Stop price would trigger immediately.") from None
            raise _ApiError(400, -2010, f"Order rejected: {exc}") from None
        order_id = len(self._ids) + 1
        self._ids[coid] = order_id
        self._coids[order_id] = coid
        self._times[coid] = _ms(self.engine.now)
        out = self._order_json(state)
        out["transactTime"] = self._times[coid]
        out["fills"] = [
            {
                "price": _num(f.price),
                "qty": _num(f.qty),
                "commission": _num(f.fee),
                "commissionAsset": market.quote_currency,
                "tradeId": int(f.fill_id.rsplit("-", 1)[1]),
            }
            for f in self.engine.fills()
            if f.client_order_id == coid
        ]
        return out

    def _order_extras(self, symbol: str, params: Mapping[str, str]) -> dict[str, Any]:
        """More Order fields from the request (futures: leverage, reduce-only)."""
        return {}

    def _held(self, symbol: str) -> Decimal:
        """The base asset of ``symbol`` the account holds."""
        base = symbol.split("-")[0]
        held = self.holdings.get(base, ZERO)
        for pos in self.engine.positions():
            if pos.symbol.split("-")[0] == base:
                held += pos.qty
        return held

    def _locked_base(self, symbol: str) -> Decimal:
        """The base asset of ``symbol`` reserved by open sell orders."""
        base = symbol.split("-")[0]
        return sum(
            (
                s.order.qty - s.filled_qty
                for s in self.engine.open_orders()
                if s.order.side is Side.SELL and s.order.symbol.split("-")[0] == base
            ),
            ZERO,
        )

    def _free_base(self, symbol: str) -> Decimal:
        return self._held(symbol) - self._locked_base(symbol)

    def _find(self, params: Mapping[str, str]) -> OrderState:
        symbol = self._symbol(params)
        coid = params.get("origClientOrderId")
        if coid is None and "orderId" in params:
            coid = self._coids.get(int(params["orderId"]))
        if coid is None:
            raise _ApiError(400, -2013, "Order does not exist.")
        try:
            return self.engine.order_state(coid, symbol)
        except OrderNotFound:
            raise _ApiError(400, -2013, "Order does not exist.") from None

    def _query_order(self, params: Mapping[str, str]) -> object:
        return self._order_json(self._find(params))

    def _cancel_order(self, params: Mapping[str, str]) -> object:
        try:
            state = self._find(params)
        except _ApiError:
            raise _ApiError(400, -2011, "Unknown order sent.") from None
        try:
            state = self.engine.cancel(state.order.client_order_id, state.order.symbol)
        except (InvalidOrder, OrderNotFound):
            raise _ApiError(400, -2011, "Unknown order sent.") from None
        out = self._order_json(state)
        out["origClientOrderId"] = state.order.client_order_id
        out["clientOrderId"] = f"cancel-{out['orderId']}"
        return out

    def _open_orders(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params, required=False)
        return [
            self._order_json(s)
            for s in self.engine.open_orders(symbol)
            if s.order.client_order_id in self._ids
        ]

    def _all_orders(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        out = []
        for coid in self._ids:
            try:
                state = self.engine.order_state(coid, symbol)
            except OrderNotFound:
                continue
            out.append(self._order_json(state))
        return out

    def _order_json(self, state: OrderState) -> dict[str, Any]:
        order = state.order
        coid = order.client_order_id
        status = state.status.name
        if state.status is OrderStatus.CANCELED and state.reason != "cancelled by request":
            status = "EXPIRED"  # the venue, not the owner, closed it
        notional = (state.avg_price or ZERO) * state.filled_qty
        stamp = self._times.get(coid, self.server_time())
        trigger = order.type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT)
        return {
            "symbol": self._vsym(order.symbol),
            "orderId": self._ids.get(coid, 0),
            "orderListId": -1,
            "clientOrderId": coid,
            "price": _num(order.price) if order.price is not None and not trigger else "0",
            "origQty": _num(order.qty),
            "executedQty": _num(state.filled_qty),
            "cummulativeQuoteQty": _num(notional),
            "status": status,
            "timeInForce": "GTC",
            "type": self.type_names[order.type],
            "side": order.side.name,
            "stopPrice": _num(order.price) if trigger and order.price is not None else "0",
            "icebergQty": "0",
            "time": stamp,
            "updateTime": stamp,
            "workingTime": stamp,
            "isWorking": state.status.is_open,
            "origQuoteOrderQty": "0",
            "selfTradePreventionMode": "NONE",
        }

    def _account(self, params: Mapping[str, str]) -> object:
        bal = self.engine.balance()
        balances = [{"asset": bal.currency, "free": _num(bal.free), "locked": _num(bal.used)}]
        bases = {s.split("-")[0]: s for s in self.engine.markets}
        for base, symbol in sorted(bases.items()):
            held, locked = self._held(symbol), self._locked_base(symbol)
            if held or base in self.holdings:
                balances.append(
                    {"asset": base, "free": _num(held - locked), "locked": _num(locked)}
                )
        return {
            "makerCommission": 0,
            "takerCommission": 0,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "updateTime": self.server_time(),
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
        }

    def _my_trades(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        limit = min(int(params.get("limit", "500")), 1000)
        start = int(params["startTime"]) if "startTime" in params else None
        end = int(params["endTime"]) if "endTime" in params else None
        from_id = int(params["fromId"]) if "fromId" in params else None
        quote = self.engine.markets[symbol].quote_currency
        rows = []
        for f in self.engine.fills():
            if f.symbol != symbol:
                continue
            trade_id = int(f.fill_id.rsplit("-", 1)[1])
            stamp = _ms(f.timestamp)
            if from_id is not None and trade_id < from_id:
                continue
            if start is not None and stamp < start:
                continue
            if end is not None and stamp > end:
                continue
            rows.append(
                {
                    "symbol": self._vsym(symbol),
                    "id": trade_id,
                    "orderId": self._ids.get(f.client_order_id, 0),
                    "orderListId": -1,
                    "price": _num(f.price),
                    "qty": _num(f.qty),
                    "quoteQty": _num(f.qty * f.price),
                    "commission": _num(f.fee),
                    "commissionAsset": quote,
                    "time": stamp,
                    "isBuyer": f.side is Side.BUY,
                    "isMaker": f.liquidity == "maker",
                    "isBestMatch": True,
                }
            )
            if len(rows) >= limit:
                break
        return rows
