"""The conformance kit, run against the ccxt plugin talking to the local fake
Binance over HTTP (the plugin's whole code path: ccxt, requests, the wire)."""

from __future__ import annotations

from bot4_ccxt.fakefutures import PERP_MARKETS
from bot4_ccxt.harness import (
    FakeBinanceFuturesHarness,
    FakeBinanceHarness,
    FakeBybitHarness,
    FakeBybitSpotHarness,
)
from bot4_paper import PaperExchange
from bot4_paper.engine import PaperEngine

from bot4.testing import ExchangeSuite, Harness
from bot4.testing.harness import FeedHarness


class TestCcxtConformance(ExchangeSuite):
    def make_harness(self) -> Harness:
        return FakeBinanceHarness()


def _paper_perps() -> Harness:
    """The paper reference trading the fake venue's perpetual markets."""
    return FeedHarness(
        lambda feed: PaperExchange(feed, PaperEngine(dict(PERP_MARKETS))), symbol="BTC-USDT-PERP"
    )


class TestCcxtFuturesConformance(ExchangeSuite):
    """Perpetuals: ccxt's binanceusdm against the fake USDⓈ-M futures venue."""

    symbol = "BTC-USDT-PERP"
    reference = staticmethod(_paper_perps)

    def make_harness(self) -> Harness:
        return FakeBinanceFuturesHarness()


class TestCcxtBybitConformance(ExchangeSuite):
    """Perpetuals: ccxt's bybit (v5, linear) against the fake Bybit venue."""

    symbol = "BTC-USDT-PERP"
    reference = staticmethod(_paper_perps)

    def make_harness(self) -> Harness:
        return FakeBybitHarness()


class TestCcxtBybitSpotConformance(ExchangeSuite):
    """Spot: ccxt's bybit (v5, category spot) against the fake Bybit venue."""

    def make_harness(self) -> Harness:
        return FakeBybitSpotHarness()
