"""A conformance-kit harness for the ccxt plugin against the local fake Binance.

``tick()`` shows the quote to the fake venue (which matches resting orders
against it) and reads the plugin's polling stream until the quote comes out;
``disconnect()`` stops the server (connections refused, open ones cut) and
``reconnect()`` starts it again on the same port, its state intact::

    from bot4.testing import ExchangeSuite
    from bot4_ccxt.harness import FakeBinanceHarness

    class TestMine(ExchangeSuite):
        def make_harness(self):
            return FakeBinanceHarness()

The plugin reads its keys from the environment variables named in
:data:`KEY_ENV`/:data:`SECRET_ENV`; :func:`plugin_config` gives settings fit for
tests (no pacing, short timeouts, quick backoff).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

import trio

from bot4.contracts import ExchangeEvent
from bot4.model import MarketData
from bot4.testing.harness import STEP_TIMEOUT, ConformanceError, Harness
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakebinance import API_KEY, ORDER_TYPES, SECRET, FakeBinance
from bot4_ccxt.fakebybit import BYBIT_ORDER_TYPES, FakeBybit
from bot4_ccxt.fakefutures import FAPI_ORDER_TYPES, FakeBinanceFutures

__all__ = [
    "KEY_ENV",
    "SECRET_ENV",
    "FakeBinanceFuturesHarness",
    "FakeBinanceHarness",
    "FakeBybitHarness",
    "FakeBybitSpotHarness",
    "plugin_config",
]

KEY_ENV = "BOT4_TEST_BINANCE_API_KEY"
SPOT_HOLDINGS = {"BTC": Decimal(1000), "ETH": Decimal(1000)}
SECRET_ENV = "BOT4_TEST_BINANCE_SECRET"


def plugin_config(venue: FakeBinance, **extra: Any) -> dict[str, Any]:
    """Fast settings for tests: no pacing, short timeouts, quick backoff."""
    return {
        "exchange": "binance",
        "api_url": venue.url,
        "api_key_env": KEY_ENV,
        "secret_env": SECRET_ENV,
        "symbols": ["BTC-USDT"],
        "poll_interval": 0.0,
        "rate_limit": 0.0,
        "timeout": 2.0,
        "max_retries": 3,
        "backoff": 0.02,
        "backoff_max": 0.2,
        **extra,
    }


class FakeBinanceHarness(Harness):
    """The fake venue plus the plugin pointed at it (see the module docstring)."""

    plugin_settings: Mapping[str, Any] = {}

    def _make_venue(self, order_types: Sequence[str]) -> FakeBinance:
        # The spot account holds BTC besides its quote balance, as one that
        # trades both ways does: the kit (and its paper reference) sell from a
        # flat bot4 position, which a spot venue refuses to an account without it.
        return FakeBinance(order_types=order_types, holdings=SPOT_HOLDINGS)

    def __init__(
        self, config: Mapping[str, Any] | None = None, *, order_types: Sequence[str] = ORDER_TYPES
    ) -> None:
        os.environ.setdefault(KEY_ENV, API_KEY)
        os.environ.setdefault(SECRET_ENV, SECRET)
        self.venue = self._make_venue(order_types).start()
        self.exchange: CcxtExchange = CcxtExchange.from_config(
            plugin_config(self.venue, **{**self.plugin_settings, **(config or {})})
        )
        self._stream: AsyncIterator[ExchangeEvent] | None = None

    async def aclose(self) -> None:
        try:
            await self.exchange.close()
        finally:
            await trio.to_thread.run_sync(self.venue.close)

    async def tick(self, md: MarketData) -> list[ExchangeEvent]:
        self.venue.push(md)
        if self._stream is None:
            self._stream = aiter(self.exchange.stream([self.symbol]))
        events: list[ExchangeEvent] = []
        with trio.move_on_after(STEP_TIMEOUT) as scope:
            while True:
                event = await anext(self._stream)
                events.append(event)
                if (
                    isinstance(event, MarketData)
                    and event.symbol == md.symbol
                    and event.timestamp == md.timestamp
                ):
                    return events
        assert scope.cancelled_caught
        raise ConformanceError(f"the stream never delivered the tick {md!r}")

    @property
    def can_disconnect(self) -> bool:
        return True

    async def disconnect(self) -> None:
        await trio.to_thread.run_sync(self.venue.stop)

    async def reconnect(self) -> None:
        await trio.to_thread.run_sync(self.venue.start)


class FakeBinanceFuturesHarness(FakeBinanceHarness):
    """The fake Binance USDⓈ-M futures venue and the plugin as ``binanceusdm``
    trading ``BTC-USDT-PERP`` (type: swap)."""

    symbol = "BTC-USDT-PERP"
    plugin_settings: Mapping[str, Any] = {
        "exchange": "binanceusdm",
        "type": "swap",
        "symbols": ["BTC-USDT-PERP"],
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, order_types=FAPI_ORDER_TYPES)

    def _make_venue(self, order_types: Sequence[str]) -> FakeBinance:
        return FakeBinanceFutures(order_types=order_types)


class FakeBybitHarness(FakeBinanceHarness):
    """The fake Bybit v5 linear venue and the plugin as ``bybit`` trading
    ``BTC-USDT-PERP`` (type: swap)."""

    symbol = "BTC-USDT-PERP"
    plugin_settings: Mapping[str, Any] = {
        "exchange": "bybit",
        "type": "swap",
        "symbols": ["BTC-USDT-PERP"],
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, order_types=BYBIT_ORDER_TYPES)

    def _make_venue(self, order_types: Sequence[str]) -> FakeBinance:
        return FakeBybit(order_types=order_types)


class FakeBybitSpotHarness(FakeBinanceHarness):
    """The fake Bybit v5 venue in category spot and the plugin as ``bybit``
    trading ``BTC-USDT`` (type: spot), the account holding BTC like the Binance
    spot harness's."""

    plugin_settings: Mapping[str, Any] = {"exchange": "bybit", "type": "spot"}

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config, order_types=BYBIT_ORDER_TYPES)

    def _make_venue(self, order_types: Sequence[str]) -> FakeBinance:
        return FakeBybit(category="spot", order_types=order_types, holdings=SPOT_HOLDINGS)
