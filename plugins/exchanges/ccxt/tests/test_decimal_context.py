"""ccxt leaves the caller's Decimal context alone: its precision helper sets
the current context's rounding to ROUND_HALF_UP and traps Underflow in place,
and a worker thread shares the caller's Context object. Without the plugin's
guard (bot4_ccxt.isolate) a strategy's quantized price would round half up
after the first order on a ccxt venue and half even on the paper one (seen
as a take-profit of 3063.23 instead of 3063.22 in a replay)."""

from __future__ import annotations

import decimal
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakebinance import FakeBinance
from bot4_ccxt.harness import plugin_config

from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio


async def test_orders_through_ccxt_leave_the_decimal_context_alone() -> None:
    before = decimal.getcontext()
    rounding, underflow = before.rounding, before.traps[decimal.Underflow]
    assert rounding == decimal.ROUND_HALF_EVEN  # Python's default
    tie = Decimal("3258.75") * Decimal("0.94")  # 3063.225: a tie at two places
    with FakeBinance() as venue:
        venue.push(
            MarketData(
                "BTC-USDT",
                "fake",
                Decimal(100),
                Decimal("100.02"),
                Decimal(100),
                Decimal(1000),
                datetime(2024, 3, 1, tzinfo=UTC),
            )
        )
        ex = CcxtExchange.from_config(plugin_config(venue))
        try:
            order = Order("ctx-1", "BTC-USDT", Side.BUY, OrderType.MARKET, Decimal("0.5"))
            assert (await ex.place_order(order)).status is OrderStatus.FILLED
            limit = Order(
                "ctx-2", "BTC-USDT", Side.BUY, OrderType.LIMIT, Decimal("0.5"), Decimal("90.005")
            )
            await ex.place_order(limit)
            await ex.cancel_order("BTC-USDT", "ctx-2")
        finally:
            await ex.close()
    after = decimal.getcontext()
    assert (after.rounding, after.traps[decimal.Underflow]) == (rounding, underflow)
    assert tie.quantize(Decimal("0.01")) == Decimal("3063.22")
