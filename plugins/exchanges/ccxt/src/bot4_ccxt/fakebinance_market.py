"""The public market-data endpoints of the fake Binance spot venue.

:class:`MarketEndpoints` is the part of :class:`~bot4_ccxt.fakebinance.FakeBinance`
that answers, unsigned, from the markets of the paper engine and the last
quote each symbol saw (the one pushed, else the engine's last tick):

* ``exchangeInfo``: every market, with its tick and lot sizes as Binance's
  ``PRICE_FILTER`` and ``LOT_SIZE`` and the venue's ``order_types``;
* ``ticker/24hr``, ``ticker/bookTicker``, ``ticker/price``: one symbol, or
  every market when none is asked for. The quote is all there is: the
  24-hour open, high and low are its last price, the change is 0 (candles
  and trades are :mod:`bot4_ccxt.fakehistory`'s);
* ``depth``: one level a side, the quote's bid and ask at its volume.

:meth:`MarketEndpoints._symbol` reads a request's ``symbol`` (a venue name,
``BTCUSDT``) back to bot4's (``BTC-USDT``) for every endpoint, the signed
ones too, and :meth:`MarketEndpoints._quote` is the quote the futures
venues take their mark from. A mixin, so these are the venue's own methods,
bound as before; it knows the venue only through the attributes declared
below, which mypy checks against :class:`FakeBinance`, and imports no venue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bot4.model import ZERO, MarketData
from bot4_ccxt.fakeserver import _ApiError
from bot4_ccxt.fakewire import _ms, _num

if TYPE_CHECKING:
    from bot4_paper.engine import PaperEngine

    from bot4_ccxt.fakeserver import Hit

__all__ = ["MarketEndpoints"]


class MarketEndpoints:
    """Binance spot's public market-data endpoints (module docstring)."""

    if TYPE_CHECKING:
        # What this part uses of FakeBinance (set or defined there).
        engine: PaperEngine
        order_types: tuple[str, ...]
        hits: list[Hit]
        _by_symbol: dict[str, str]
        _tickers: dict[str, MarketData]

        def _vsym(self, symbol: str) -> str: ...

        def server_time(self) -> int: ...

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
