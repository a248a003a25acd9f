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

**The parts.** This module holds :class:`FakeBinance` (the venue's state,
its endpoint table, Binance's signing and error format) and the command
line, and re-exports the names of the modules it is built from, so
``from bot4_ccxt.fakebinance import ...`` stays the one import for all of
them:

* :mod:`bot4_ccxt.fakeserver`: ``FakeServer``, the serving, fault injection
  and hit log every fake venue shares (``Fault``, ``Hit``, ``FAULTS``, the
  ``_ApiError`` endpoints raise, the ``_Handler`` requests arrive on);
* :mod:`bot4_ccxt.fakebinance_market`: ``MarketEndpoints``, the public
  exchange info, tickers and depth;
* :mod:`bot4_ccxt.fakebinance_orders`: ``OrderEndpoints``, the signed order,
  account and trade endpoints;
* :mod:`bot4_ccxt.fakewire`: ``_num``, ``_ms`` and ``_venue_symbol``, the
  spellings of numbers, times and symbols on the wire.

The futures, Bybit and history venues (:mod:`bot4_ccxt.fakefutures`,
:mod:`bot4_ccxt.fakebybit`, :mod:`bot4_ccxt.fakehistory`) subclass
:class:`FakeBinance`: they add endpoints and override what their wire
format changes (its routing; Bybit's also its signing and errors).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl

from bot4_paper.engine import PaperEngine

from bot4.contracts import MarketInfo
from bot4.model import MarketData, OrderType
from bot4_ccxt.fakebinance_market import MarketEndpoints
from bot4_ccxt.fakebinance_orders import OrderEndpoints
from bot4_ccxt.fakeserver import FAULTS as FAULTS
from bot4_ccxt.fakeserver import FakeServer
from bot4_ccxt.fakeserver import Fault as Fault
from bot4_ccxt.fakeserver import Hit as Hit
from bot4_ccxt.fakeserver import _ApiError as _ApiError
from bot4_ccxt.fakeserver import _Handler as _Handler
from bot4_ccxt.fakewire import _ms as _ms
from bot4_ccxt.fakewire import _num as _num
from bot4_ccxt.fakewire import _venue_symbol as _venue_symbol

# The ``X as X`` imports are re-exports of what moved out: fakealgo,
# fakebybitstop, fakehistory and the tests import these names from here.
__all__ = ["API_KEY", "SECRET", "FakeBinance", "Fault", "main"]

# Credentials the server accepts unless told otherwise (test values, not secrets).
API_KEY = "fake-binance-api-key"
SECRET = "fake-binance-secret"

_TYPES = {
    "MARKET": OrderType.MARKET,
    "LIMIT": OrderType.LIMIT,
    "STOP_LOSS": OrderType.STOP_LOSS,
    "TAKE_PROFIT": OrderType.TAKE_PROFIT,
}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}

ORDER_TYPES = ("LIMIT", "MARKET", "STOP_LOSS", "TAKE_PROFIT")


class FakeBinance(FakeServer, MarketEndpoints, OrderEndpoints):
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
        self.api_key = api_key
        self.secret = secret
        self._init_server(host, port, clock_offset)
        self._by_symbol = {self._vsym(s): s for s in self.engine.markets}
        self._ids: dict[str, int] = {}  # client order id -> orderId
        self._coids: dict[int, str] = {}
        self._times: dict[str, int] = {}  # client order id -> placement time (ms)
        self._tickers: dict[str, MarketData] = {}

    def _vsym(self, symbol: str) -> str:
        """The venue's name of a bot4 symbol (BTC-USDT: BTCUSDT)."""
        return _venue_symbol(symbol)

    # --- control (in-process) --------------------------------------------------------

    def push(self, tick: MarketData) -> None:
        """The venue sees a quote: resting orders match against it."""
        with self.lock:
            if self._vsym(tick.symbol) not in self._by_symbol:
                self._by_symbol[self._vsym(tick.symbol)] = tick.symbol
            self.engine.on_tick(tick)
            self._tickers[tick.symbol] = tick

    def order_count(self) -> int:
        """Orders the venue has accepted (each client order id once)."""
        with self.lock:
            return len(self._ids)

    # --- request handling -----------------------------------------------------------

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


if __name__ == "__main__":
    sys.exit(main())
