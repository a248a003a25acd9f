"""The fake Binance, serving market history: klines and trades of the bundled
sample in Binance's own wire format, spot and USDⓈ-M perpetuals, for
``bot4 data download`` and ``bot4 markets list`` without a network::

    with FakeHistory() as venue:         # FakeBinance + these endpoints
        venue.url                        # point ccxt's binance at it
        venue.inject("GET", "/api/v3/klines", "429")   # FakeBinance's faults apply

    python -m bot4_ccxt.fakehistory --port 8765

Endpoints added to :class:`~bot4_ccxt.fakebinance.FakeBinance`'s::

    GET /api/v3/klines, /fapi/v1/klines        symbol, interval, startTime, endTime, limit
    GET /api/v3/aggTrades, /fapi/v1/aggTrades  symbol, startTime, endTime, fromId, limit
    GET /fapi/v1/exchangeInfo, /fapi/v1/time, /fapi/v1/ping
        (served here only while FakeBinance itself has no /fapi routes)

**The data.** The bundled sample (``bot4.data.sample_path()``: one-second
ticks of BTC-USDT and ETH-USDT, 2024-03-01 and 02) read once per process.
Each tick is one aggregate trade (id = its index, price = last, quantity =
volume, the buyer the maker when the price went down) and the klines of any
interval are aggregated from the trades in each interval. The perpetuals
BTCUSDT and ETHUSDT on ``/fapi`` serve the same prices. ``outages`` (ranges
of ms) removes trades and candles, as a venue's maintenance window does, so
a client meets real gaps.

**Limits, as Binance has them.** klines: ``limit`` default 500, at most 1000
(spot) or 1500 (futures), else ``-1130``; an unknown interval ``-1120``.
aggTrades: default 500, at most 1000; ``startTime`` and ``endTime`` at most
an hour apart (``-1127``); with only ``startTime`` the hour after it. Without
``startTime`` the latest rows up to ``endTime`` are served. ``request_limit``
(``(requests, seconds)``) answers 429 with ``Retry-After`` once a client
sends more history requests than that in the window (a weight limit of one per
request), so a client that ignores pacing meets the venue's refusal.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import functools
import gzip
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import numpy as np

from bot4_ccxt.fakebinance import FakeBinance, _ApiError, _Handler, _num

__all__ = ["INTERVALS", "FakeHistory", "SampleHistory", "main", "sample_history"]

INTERVALS: Mapping[str, int] = {
    "1s": 1000,
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "2h": 7_200_000,
    "4h": 14_400_000,
    "6h": 21_600_000,
    "8h": 28_800_000,
    "12h": 43_200_000,
    "1d": 86_400_000,
    "3d": 259_200_000,
    "1w": 604_800_000,
}
HOUR_MS = 3_600_000
_Endpoint = Callable[[Mapping[str, str]], object]


@attrs.frozen
class SymbolHistory:
    """One symbol's trades, in time order (parallel lists)."""

    times: Sequence[int]  # ms
    prices: Sequence[str]
    qtys: Sequence[str]
    buyer_maker: Sequence[bool]


@attrs.frozen
class _Candles:
    """Candles of one symbol and interval, column by column."""

    opens: Any
    o: Any
    h: Any
    lo: Any
    c: Any
    v: Any
    quote: Any
    count: Any
    taker_v: Any
    taker_q: Any


@attrs.frozen
class SampleHistory:
    """Trades by venue symbol (``BTCUSDT``)."""

    symbols: Mapping[str, SymbolHistory]


@functools.cache
def sample_history() -> SampleHistory:
    """The bundled sample as trades, read once per process."""
    from bot4.data import sample_path

    columns: dict[str, tuple[list[int], list[str], list[str], list[bool]]] = {}
    with gzip.open(sample_path(), "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            venue = row["symbol"].replace("-", "")
            times, prices, qtys, maker = columns.setdefault(venue, ([], [], [], []))
            moment = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
            price = row["last"]
            maker.append(bool(prices) and float(price) < float(prices[-1]))
            times.append(int(moment.timestamp() * 1000))
            prices.append(price)
            qtys.append(row["volume"])
    return SampleHistory({k: SymbolHistory(*v) for k, v in columns.items()})


class FakeHistory(FakeBinance):
    """:class:`FakeBinance` that also serves market history (module docstring)."""

    def __init__(
        self,
        *args: Any,
        outages: Sequence[tuple[int, int]] = (),
        request_limit: tuple[int, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.history = sample_history()
        self.outages = tuple(outages)
        self.request_limit = request_limit
        self._recent: deque[float] = deque()
        self._limit_lock = threading.Lock()
        self._candle_cache: dict[tuple[str, int], _Candles] = {}

    # --- routing ----------------------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: str, req: _Handler) -> object:
        from urllib.parse import parse_qsl

        params = dict(parse_qsl(query, keep_blank_values=True))
        ours: dict[tuple[str, str], _Endpoint] = {
            ("GET", "/api/v3/klines"): lambda p: self._klines(p, 1000),
            ("GET", "/fapi/v1/klines"): lambda p: self._klines(p, 1500),
            ("GET", "/api/v3/aggTrades"): self._agg_trades,
            ("GET", "/fapi/v1/aggTrades"): self._agg_trades,
        }
        handler = ours.get((method, path))
        if handler is not None:
            self._count_request()
            return handler(params)
        try:
            return super()._route(method, path, query, body, req)
        except _ApiError as err:
            fallbacks: dict[tuple[str, str], _Endpoint] = {
                ("GET", "/fapi/v1/exchangeInfo"): self._futures_info,
                ("GET", "/fapi/v1/time"): lambda p: {"serverTime": self.server_time()},
                ("GET", "/fapi/v1/ping"): lambda p: {},
            }
            fallback = fallbacks.get((method, path))
            if err.status != 404 or fallback is None:
                raise
            return fallback(params)

    def _count_request(self) -> None:
        if self.request_limit is None:
            return
        count, window = self.request_limit
        now = time.monotonic()
        with self._limit_lock:
            while self._recent and now - self._recent[0] >= window:
                self._recent.popleft()
            if len(self._recent) >= count:
                wait = max(1, int(window - (now - self._recent[0]) + 0.999))
                raise _ApiError(
                    429,
                    -1003,
                    f"Too many requests; current limit is {count} requests per {window:g} s.",
                    {"Retry-After": str(wait)},
                )
            self._recent.append(now)

    # --- history ----------------------------------------------------------------------

    def _series(self, params: Mapping[str, str]) -> SymbolHistory:
        raw = params.get("symbol")
        if raw is None:
            raise _ApiError(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        found = self.history.symbols.get(raw)
        if found is None:
            raise _ApiError(400, -1121, "Invalid symbol.")
        return found

    def _int(self, params: Mapping[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise _ApiError(
                400, -1100, f"Illegal characters found in parameter '{name}'."
            ) from None

    def _limit(self, params: Mapping[str, str], most: int) -> int:
        limit = self._int(params, "limit")
        if limit is None:
            return 500
        if limit < 1 or limit > most:
            raise _ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _down(self, ms: int) -> bool:
        return any(lo <= ms < hi for lo, hi in self.outages)

    def _candles(self, venue_symbol: str, step: int) -> _Candles:
        """Every candle of a symbol at ``step`` ms, built once (numpy)."""
        key = (venue_symbol, step)
        with self._limit_lock:
            found = self._candle_cache.get(key)
        if found is not None:
            return found
        series = self.history.symbols[venue_symbol]
        times = np.asarray(series.times, dtype=np.int64)
        prices = np.asarray(series.prices, dtype=np.float64)
        qtys = np.asarray(series.qtys, dtype=np.float64)
        maker = np.asarray(series.buyer_maker, dtype=bool)
        up = np.ones(len(times), dtype=bool)
        for lo, hi in self.outages:
            up &= ~((times >= lo) & (times < hi))
        times, prices, qtys, maker = times[up], prices[up], qtys[up], maker[up]
        buckets = times // step
        starts = np.concatenate(([0], np.nonzero(np.diff(buckets))[0] + 1))
        ends = np.append(starts[1:], len(times))
        taker = np.where(maker, 0.0, qtys)
        candles = _Candles(
            opens=buckets[starts] * step,
            o=prices[starts],
            h=np.maximum.reduceat(prices, starts),
            lo=np.minimum.reduceat(prices, starts),
            c=prices[ends - 1],
            v=np.add.reduceat(qtys, starts),
            quote=np.add.reduceat(qtys * prices, starts),
            count=ends - starts,
            taker_v=np.add.reduceat(taker, starts),
            taker_q=np.add.reduceat(taker * prices, starts),
        )
        with self._limit_lock:
            self._candle_cache[key] = candles
        return candles

    def _klines(self, params: Mapping[str, str], most: int) -> object:
        self._series(params)
        interval = params.get("interval")
        if interval is None:
            raise _ApiError(400, -1102, "Mandatory parameter 'interval' was not sent.")
        step = INTERVALS.get(interval)
        if step is None:
            raise _ApiError(400, -1120, "Invalid interval.")
        limit = self._limit(params, most)
        start, end = self._int(params, "startTime"), self._int(params, "endTime")
        k = self._candles(params["symbol"], step)
        hi = len(k.opens) if end is None else int(np.searchsorted(k.opens, end, "right"))
        if start is not None:
            lo = int(np.searchsorted(k.opens, start, "left"))
            hi = min(hi, lo + limit)
        else:
            lo = max(0, hi - limit)
        return [
            [
                int(k.opens[i]),
                repr(float(k.o[i])),
                repr(float(k.h[i])),
                repr(float(k.lo[i])),
                repr(float(k.c[i])),
                _num_float(float(k.v[i])),
                int(k.opens[i]) + step - 1,
                _num_float(float(k.quote[i])),
                int(k.count[i]),
                _num_float(float(k.taker_v[i])),
                _num_float(float(k.taker_q[i])),
                "0",
            ]
            for i in range(lo, hi)
        ]

    def _agg_trades(self, params: Mapping[str, str]) -> object:
        series = self._series(params)
        limit = self._limit(params, 1000)
        start, end = self._int(params, "startTime"), self._int(params, "endTime")
        from_id = self._int(params, "fromId")
        times = series.times
        if start is not None and end is not None and end - start > HOUR_MS:
            raise _ApiError(400, -1127, "More than 1 hours between startTime and endTime.")
        if from_id is not None:
            lo, hi = max(0, from_id), len(times)
        elif start is not None:
            lo = bisect.bisect_left(times, start)
            hi = bisect.bisect_right(times, end if end is not None else start + HOUR_MS)
        else:
            hi = bisect.bisect_right(times, end) if end is not None else len(times)
            lo = max(0, hi - limit)
        out: list[dict[str, object]] = []
        for i in range(lo, hi):
            if len(out) >= limit:
                break
            if self._down(times[i]):
                continue
            out.append(
                {
                    "a": i,
                    "p": series.prices[i],
                    "q": series.qtys[i],
                    "f": i,
                    "l": i,
                    "T": times[i],
                    "m": series.buyer_maker[i],
                    "M": True,
                }
            )
        return out

    def _futures_info(self, params: Mapping[str, str]) -> object:
        symbols = []
        for symbol, m in sorted(self.engine.markets.items()):
            base, quote = symbol.split("-")[:2]
            symbols.append(
                {
                    "symbol": f"{base}{quote}",
                    "pair": f"{base}{quote}",
                    "contractType": "PERPETUAL",
                    "deliveryDate": 4133404800000,
                    "onboardDate": 1569398400000,
                    "status": "TRADING",
                    "baseAsset": base,
                    "quoteAsset": quote,
                    "marginAsset": quote,
                    "pricePrecision": 2,
                    "quantityPrecision": 3,
                    "baseAssetPrecision": 8,
                    "quotePrecision": 8,
                    "underlyingType": "COIN",
                    "triggerProtect": "0.0500",
                    "liquidationFee": "0.012500",
                    "marketTakeBound": "0.05",
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": _num(m.price_increment),
                            "maxPrice": "4529764",
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
                            "maxQty": "120",
                            "stepSize": _num(m.qty_increment),
                        },
                        {"filterType": "MIN_NOTIONAL", "notional": "100"},
                    ],
                    "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT"],
                    "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
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
                    "limit": 2400,
                }
            ],
            "exchangeFilters": [],
            "assets": [],
            "symbols": symbols,
        }


def _num_float(value: float) -> str:
    text = f"{value:.8f}".rstrip("0").rstrip(".")
    return text or "0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bot4_ccxt.fakehistory",
        description="A local Binance-style server with the bundled sample's klines and trades.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    venue = FakeHistory(host=args.host, port=args.port).start()
    print(f"fake binance (history) on {venue.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        venue.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
