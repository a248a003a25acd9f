"""The conformance kit, run against the ccxt plugin talking to the local fake
Binance over HTTP (the plugin's whole code path: ccxt, requests, the wire)."""

from __future__ import annotations

from bot4_ccxt.harness import FakeBinanceHarness

from bot4.testing import ExchangeSuite, Harness


class TestCcxtConformance(ExchangeSuite):
    def make_harness(self) -> Harness:
        return FakeBinanceHarness()
