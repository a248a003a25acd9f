"""A local exchange server that speaks Binance's spot REST API, backed by bot4's
paper matching engine: dry runs and tests of the ccxt plugin go through the
plugin's real code path, ccxt and HTTP included, without touching a venue.

Run it on its own (ticks from a data file, one every ``--interval`` seconds)::

    python -m bot4_ccxt.fakebinance --port 8765 --data ticks.csv.gz

or in-process (tests)::

    with FakeBinance() as venue:           # 127.0.0.1, a free port
        venue.push(tick)                   # the venue sees a quote; orders match
        venue.inject("POST", "/api/v3/order", "500", process=True)

Endpoints (the ones ccxt's ``binance`` calls for what bot4 needs)::

    GET    /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo
    GET    /api/v3/ticker/24hr, /api/v3/ticker/bookTicker, /api/v3/ticker/price,
           /api/v3/depth
    POST   /api/v3/order          MARKET, LIMIT, STOP_LOSS, TAKE_PROFIT (signed)
    GET    /api/v3/order          by orderId or origClientOrderId (signed)
    DELETE /api/v3/order          (signed)
    GET    /api/v3/openOrders, /api/v3/allOrders, /api/v3/account,
           /api/v3/myTrades       (signed)

Signed requests carry ``X-MBX-APIKEY`` and an HMAC-SHA256 ``signature`` of the
query string followed by the body, with a ``timestamp`` that must be within
``recvWindow`` of the server's clock (which ``clock_offset`` can skew). Errors
are Binance's JSON (``{"code": -2010, "msg": "..."}``) with its HTTP status:
-2010 insufficient balance / order rejected, -1013 filter failure (quantity),
-2011 unknown order on cancel (also for an order no longer open, as Binance
does), -2013 order does not exist, -1021 timestamp outside recvWindow, -1022
bad signature, -2015 bad API key, -1003 too many requests (HTTP 429 with
``Retry-After``).

**The account mapping.** The engine is bot4's paper venue: margined, netted
positions, fees in the quote currency. Behind a spot façade that reads:
quote asset (USDT) ``free`` = the engine's free margin, ``locked`` = margin
held by positions and open orders (so free + locked = equity); each base
asset's holding = the ``holdings`` the account started with plus the
position, ``locked`` by open sell orders; commissions are charged in the
quote asset. As on a spot account, a sell of more than the free holding is
refused (-2010, insufficient balance): a flat account cannot sell. The
``leverage`` and ``reduce_only`` of bot4 orders do not exist on Binance spot
and are not sent: orders reach the engine at leverage 1.

**Fault injection.** :meth:`FakeBinance.inject` makes the next ``count``
requests matching a method and path answer 429, 500, 503, hang for ``delay``
seconds, or drop the connection without a reply; with ``process=True`` the
request is executed first (the order exists, the reply is lost), the case
client order id reconciliation exists for.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import hmac
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import attrs
from bot4_paper.engine import PaperEngine

from bot4.contracts import MarketInfo
from bot4.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.model import ZERO, MarketData, Order, OrderState, OrderStatus, OrderType, Side

__all__ = ["API_KEY", "SECRET", "FakeBinance", "Fault", "main"]

# Credentials the server accepts unless told otherwise (test values, not secrets).
API_KEY = "fake-binance-api-key"
SECRET = "fake-binance-secret"

FAULTS = ("429", "500", "503", "hang", "drop")
_TYPES = {
    "MARKET": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "STOP_LOSS": OrderType.STOP_LOSS,
    "TAKE_PROFIT": OrderType.TAKE_PROFIT,
}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}


class _ApiError(Exception):
    def __init__(self, status: int, code: int, msg: str, headers: Mapping[str, str] | None = None):
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})
        super().__init__(msg)


@attrs.define
class Fault:
    """One injected failure: applies to the next ``count`` matching requests."""

    method: str | None
    path: str | None
    kind: str
    count: int = 1
    process: bool = False
    delay: float = 0.0
    retry_after: int = 1
    skip: int = 0  # let this many matching requests through first

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path == path
        )


@attrs.frozen
class Hit:
    """One request the server saw (for tests: how the client behaved)."""

    at: float  # time.monotonic()
    method: str
    path: str
    status: int  # 0: the connection was dropped without a reply


def _num(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _venue_symbol(symbol: str) -> str:
    """BTC-USDT and BTC-USDT-PERP are both BTCUSDT (on their own API)."""
    return symbol.removesuffix("-PERP").replace("-", "")


ORDER_TYPES = ("LIMIT", "MARKET", "STOP_LOSS", "TAKE_PROFIT")


class FakeBinance:
    """A Binance-style spot REST server on 127.0.0.1 backed by a PaperEngine."""

    spot = True  # a spot account: no selling what it does not hold

    def __init__(
        self,
        engine: PaperEngine | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = API_KEY,
        secret: str = SECRET,
        clock_offset: float = 0.0,
        order_types: Sequence[str] = ORDER_TYPES,
        holdings: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.engine = engine if engine is not None else PaperEngine()
        # The futures venues liquidate by their own reckoning (fakefutures),
        # a spot account never: the engine's liquidation stays off here.
        self.engine.liquidates = False
        self.type_map: Mapping[str, OrderType] = _TYPES
        self.type_names: Mapping[OrderType, str] = _TYPE_NAMES
        # Base assets the spot account holds besides what its fills bought.
        self.holdings: dict[str, Decimal] = dict(holdings or {})
        # The order types every symbol lists in exchangeInfo and accepts (real
        # Binance symbols differ: many lack STOP_LOSS and TAKE_PROFIT).
        self.order_types = tuple(order_types)
        self.host = host
        self.port = port
        self.api_key = api_key
        self.secret = secret
        self.clock_offset = clock_offset  # seconds added to the server's clock
        self.hits: list[Hit] = []
        self.lock = threading.RLock()
        self._faults: list[Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._quoted = threading.Event()  # a client has asked for a quote
        self._by_symbol = {self._vsym(s): s for s in self.engine.markets}
        self._ids: dict[str, int] = {}  # client order id -> orderId
        self._coids: dict[int, str] = {}
        self._times: dict[str, int] = {}  # client order id -> placement time (ms)
        self._tickers: dict[str, MarketData] = {}
        self._feeder: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def _vsym(self, symbol: str) -> str:
        """The venue's name of a bot4 symbol (BTC-USDT: BTCUSDT)."""
        return _venue_symbol(symbol)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeBinance:
        """Listen (again, on the same port after :meth:`stop`) and serve."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.app = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (a dropped link).
        The engine keeps its state: :meth:`start` brings the same venue back."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self._feeder is not None:
            self._feeder.join()
            self._feeder = None

    def __enter__(self) -> FakeBinance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control (in-process) --------------------------------------------------------

    def push(self, tick: MarketData) -> None:
        """The venue sees a quote: resting orders match against it."""
        with self.lock:
            if self._vsym(tick.symbol) not in self._by_symbol:
                self._by_symbol[self._vsym(tick.symbol)] = tick.symbol
            self.engine.on_tick(tick)
            self._tickers[tick.symbol] = tick

    def feed(
        self, ticks: Iterable[MarketData], interval: float, *, on_first_quote: bool = False
    ) -> None:
        """Push ``ticks`` from a background thread, one per ``interval`` seconds
        (the last quote stays up when they run out). With ``on_first_quote``
        the first tick is pushed at once and the rest wait until a client first
        asks for a quote, so a client that is slow to start (a loaded machine)
        still sees every tick."""

        def run() -> None:
            for n, tick in enumerate(ticks):
                self.push(tick)
                if n == 0 and on_first_quote:
                    while not self._quoted.wait(0.05):
                        if self._stopping.is_set():
                            return
                if self._stopping.wait(interval):
                    return

        self._feeder = threading.Thread(target=run, daemon=True)
        self._feeder.start()

    def inject(
        self,
        method: str | None,
        path: str | None,
        kind: str,
        *,
        count: int = 1,
        process: bool = False,
        delay: float = 0.0,
        retry_after: int = 1,
        skip: int = 0,
    ) -> Fault:
        """The next ``count`` requests matching ``method`` and ``path`` (None:
        any) fail with ``kind``: "429", "500", "503", "hang" (no reply for
        ``delay`` seconds, then the connection closes), "drop" (the connection
        closes at once). ``process``: execute the request before failing;
        ``skip``: let that many matching requests through first."""
        if kind not in FAULTS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULTS)}")
        fault = Fault(method, path, kind, count, process, delay, retry_after, skip)
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def server_time(self) -> int:
        return int((time.time() + self.clock_offset) * 1000)

    def hits_of(self, method: str, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.method == method and h.path == path]

    def order_count(self) -> int:
        """Orders the venue has accepted (each client order id once)."""
        with self.lock:
            return len(self._ids)

    # --- request handling -----------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.hits.append(Hit(time.monotonic(), method, path, status))

    def handle(self, req: _Handler) -> None:
        method = req.command
        path, _, query = req.path.partition("?")
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length).decode() if length else ""
        fault = self._take_fault(method, path)
        if fault is not None and not fault.process:
            self._fail(req, fault, method, path)
            return
        if "ticker" in path:
            self._quoted.set()
        try:
            status, payload, headers = 200, self._route(method, path, query, body, req), {}
        except _ApiError as err:
            status, payload = self._error(err)
            headers = err.headers
        if fault is not None:
            self._fail(req, fault, method, path)
            return
        self._log(method, path, status)
        req.reply(status, payload, headers)

    def _error(self, err: _ApiError) -> tuple[int, object]:
        """The HTTP status and body of an error in this venue's format."""
        return err.status, {"code": err.code, "msg": err.msg}

    def _rate_limited(self) -> _ApiError:
        return _ApiError(
            429,
            -1003,
            "Too much request weight used; current limit is 6000 request weight per 1 "
            "MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
        )

    def _fail(self, req: _Handler, fault: Fault, method: str, path: str) -> None:
        if fault.kind == "429":
            self._log(method, path, 429)
            status, payload = self._error(self._rate_limited())
            req.reply(status, payload, {"Retry-After": str(fault.retry_after)})
        elif fault.kind == "500":
            self._log(method, path, 500)
            req.reply(
                500,
                {"code": -1000, "msg": "An unknown error occurred while processing the request."},
            )
        elif fault.kind == "503":
            self._log(method, path, 503)
            req.reply_text(503, "Service Unavailable")
        elif fault.kind == "hang":
            self._log(method, path, 0)
            self._stopping.wait(fault.delay)
            req.drop()
        else:
            self._log(method, path, 0)
            req.drop()

    def _route(self, method: str, path: str, query: str, body: str, req: _Handler) -> object:
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        public = {
            ("GET", "/api/v3/ping"): lambda p: {},
            ("GET", "/api/v3/time"): lambda p: {"serverTime": self.server_time()},
            ("GET", "/api/v3/exchangeInfo"): self._exchange_info,
            ("GET", "/api/v3/ticker/24hr"): self._ticker_24hr,
            ("GET", "/api/v3/ticker/bookTicker"): self._book_ticker,
            ("GET", "/api/v3/ticker/price"): self._price_ticker,
            ("GET", "/api/v3/depth"): self._depth,
        }
        signed = {
            ("POST", "/api/v3/order"): self._new_order,
            ("GET", "/api/v3/order"): self._query_order,
            ("DELETE", "/api/v3/order"): self._cancel_order,
            ("GET", "/api/v3/openOrders"): self._open_orders,
            ("GET", "/api/v3/allOrders"): self._all_orders,
            ("GET", "/api/v3/account"): self._account,
            ("GET", "/api/v3/myTrades"): self._my_trades,
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

    def _check_signature(
        self, req: _Handler, query: str, body: str, params: Mapping[str, str]
    ) -> None:
        if req.headers.get("X-MBX-APIKEY") != self.api_key:
            raise _ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")
        total = query + body
        signed_part, sep, signature = total.rpartition("&signature=")
        if not sep:
            if total.startswith("signature="):
                signed_part, signature = "", total[len("signature=") :]
            else:
                raise _ApiError(400, -1102, "Mandatory parameter 'signature' was not sent.")
        want = hmac.new(self.secret.encode(), signed_part.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, signature.split("&")[0]):
            raise _ApiError(400, -1022, "Signature for this request is not valid.")
        try:
            stamp = int(params["timestamp"])
        except (KeyError, ValueError):
            raise _ApiError(
                400, -1102, "Mandatory parameter 'timestamp' was not sent or was malformed."
            ) from None
        window = int(params.get("recvWindow", "5000"))
        if window > 60000:
            raise _ApiError(400, -1131, "recvWindow must be less than 60000")
        now = self.server_time()
        if stamp >= now + 1000 or now - stamp > window:
            raise _ApiError(400, -1021, "Timestamp for this request is outside of the recvWindow.")

    # --- public endpoints -------------------------------------------------------------

    def _symbol(self, params: Mapping[str, str], required: bool = True) -> str | None:
        raw = params.get("symbol")
        if raw is None:
            if required:
                raise _ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
            return None
        symbol = self._by_symbol.get(raw)
        if symbol is None:
            raise _ApiError(400, -1121, "Invalid symbol.")
        return symbol

    def _exchange_info(self, params: Mapping[str, str]) -> object:
        symbols = []
        for symbol, m in sorted(self.engine.markets.items()):
            base, quote = symbol.split("-")[:2]
            symbols.append(
                {
                    "symbol": self._vsym(symbol),
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": list(self.order_types),
                    "icebergAllowed": False,
                    "ocoAllowed": False,
                    "quoteOrderQtyMarketAllowed": False,
                    "allowTrailingStop": False,
                    "cancelReplaceAllowed": False,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
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
                            "maxQty": "9000000",
                            "stepSize": _num(m.qty_increment),
                        },
                    ],
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "NONE",
                    "allowedSelfTradePreventionModes": ["NONE"],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": self.server_time(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": 6000,
                }
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def _quote(self, symbol: str) -> MarketData | None:
        return self._tickers.get(symbol) or self.engine.last_tick(symbol)

    def _ticker_24hr(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params, required=False)
        if symbol is None:
            return [self._ticker_of(s) for s in sorted(self.engine.markets)]
        return self._ticker_of(symbol)

    def _ticker_of(self, symbol: str) -> dict[str, Any]:
        md = self._quote(symbol)
        bid, ask, last, vol = (
            (md.bid, md.ask, md.last, md.volume) if md else (ZERO, ZERO, ZERO, ZERO)
        )
        stamp = _ms(md.timestamp) if md else self.server_time()
        return {
            "symbol": self._vsym(symbol),
            "priceChange": "0",
            "priceChangePercent": "0",
            "weightedAvgPrice": _num(last),
            "prevClosePrice": _num(last),
            "lastPrice": _num(last),
            "lastQty": "0",
            "bidPrice": _num(bid),
            "bidQty": _num(vol),
            "askPrice": _num(ask),
            "askQty": _num(vol),
            "openPrice": _num(last),
            "highPrice": _num(last),
            "lowPrice": _num(last),
            "volume": _num(vol),
            "quoteVolume": _num(vol * last),
            "openTime": stamp - 86_400_000,
            "closeTime": stamp,
            "firstId": 0,
            "lastId": 0,
            "count": 0,
        }

    def _book_ticker(self, params: Mapping[str, str]) -> object:
        def one(symbol: str) -> dict[str, str]:
            t = self._ticker_of(symbol)
            keys = ("symbol", "bidPrice", "bidQty", "askPrice", "askQty")
            return {k: t[k] for k in keys}

        symbol = self._symbol(params, required=False)
        return one(symbol) if symbol else [one(s) for s in sorted(self.engine.markets)]

    def _price_ticker(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params, required=False)
        rows = [
            {"symbol": self._vsym(s), "price": self._ticker_of(s)["lastPrice"]}
            for s in ([symbol] if symbol else sorted(self.engine.markets))
        ]
        return rows[0] if symbol else rows

    def _depth(self, params: Mapping[str, str]) -> object:
        symbol = self._symbol(params)
        assert symbol is not None
        md = self._quote(symbol)
        book: dict[str, Any] = {"lastUpdateId": len(self.hits), "bids": [], "asks": []}
        if md is not None:
            book["bids"] = [[_num(md.bid), _num(md.volume)]]
            book["asks"] = [[_num(md.ask), _num(md.volume)]]
        return book

    # --- signed endpoints ---------------------------------------------------------------

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


class _Server(ThreadingHTTPServer):
    """Joins its handler threads on close and can cut open connections."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    app: FakeBinance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def drop_connections(self) -> None:
        with self.conn_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeBinance.hits` instead."""

    def _serve(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.app.handle(self)

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def reply(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def reply_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# --- command line --------------------------------------------------------------------------


def _markets_of(ticks: Iterator[MarketData]) -> tuple[list[MarketData], dict[str, MarketInfo]]:
    """Read the first ticks to know the symbols (the engine infers their rules)."""
    head: list[MarketData] = []
    for tick in ticks:
        head.append(tick)
        if len(head) >= 100:
            break
    engine = PaperEngine({})
    engine._infer = True
    for tick in head:
        engine.on_tick(tick)
    return head, engine.markets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot4_ccxt.fakebinance",
        description="A Binance-style spot REST server on 127.0.0.1 backed by bot4's paper "
        "engine, for dry runs of bot4-plugin-ccxt.",
    )
    parser.add_argument(
        "--venue",
        choices=("spot", "usdm", "bybit", "bybit-spot"),
        default="spot",
        help="wire format: Binance spot (/api/v3, the default), Binance USDⓈ-M futures "
        "(/fapi, BTC-USDT-PERP...), Bybit v5 linear or Bybit v5 spot (/v5)",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--data", help="tick/candle file served one tick per --interval")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds per tick")
    parser.add_argument(
        "--start-on-request",
        action="store_true",
        help="serve the first tick at once and the rest from a client's first quote request",
    )
    parser.add_argument("--balance", default="10000", help="starting quote balance")
    parser.add_argument(
        "--hold",
        action="append",
        default=[],
        metavar="ASSET=QTY",
        help="a base asset the spot account holds at the start (repeatable; default: none, "
        "so a flat account cannot sell)",
    )
    parser.add_argument("--api-key", default=API_KEY, help="API key the server accepts")
    parser.add_argument(
        "--secret-env",
        default="",
        help="environment variable holding the secret the server accepts (default: the "
        "built-in test secret)",
    )
    args = parser.parse_args(argv)
    import os

    secret = os.environ.get(args.secret_env, "") if args.secret_env else SECRET
    if args.secret_env and not secret:
        parser.error(f"--secret-env {args.secret_env}: the variable is not set")
    from bot4_paper.engine import DEFAULT_MARKETS

    from bot4_ccxt.fakebybit import FakeBybit
    from bot4_ccxt.fakefutures import PERP_MARKETS, FakeBinanceFutures

    venues: dict[str, Callable[..., FakeBinance]] = {
        "spot": FakeBinance,
        "usdm": FakeBinanceFutures,
        "bybit": FakeBybit,
        "bybit-spot": functools.partial(FakeBybit, category="spot"),
    }
    kind = venues[args.venue]
    ticks: Iterator[MarketData] = iter(())
    spot = args.venue in ("spot", "bybit-spot")
    markets: dict[str, MarketInfo] = dict(DEFAULT_MARKETS if spot else PERP_MARKETS)
    if args.data:
        from bot4.data import iter_ticks

        it = iter_ticks(args.data)
        head, inferred = _markets_of(it)
        markets.update({k: v for k, v in inferred.items() if k not in markets})
        ticks = _chain(head, it)
    engine = PaperEngine(markets, balance=Decimal(args.balance), exchange="binance")
    holdings: dict[str, Decimal] = {}
    for item in args.hold:
        asset, _, qty = item.partition("=")
        try:
            holdings[asset.strip().upper()] = Decimal(qty)
        except InvalidOperation:
            parser.error(f"--hold {item}: give ASSET=QTY, e.g. BTC=1")
    venue = kind(
        engine,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        secret=secret,
        holdings=holdings,
    )
    venue.start()
    if args.data:
        venue.feed(ticks, args.interval, on_first_quote=args.start_on_request)
    print(f"fakebinance ({args.venue}) listening on {venue.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        venue.close()
    return 0


def _chain(head: list[MarketData], rest: Iterator[MarketData]) -> Iterator[MarketData]:
    yield from head
    yield from rest


def _now() -> datetime:
    return datetime.now(UTC)


if __name__ == "__main__":
    sys.exit(main())
