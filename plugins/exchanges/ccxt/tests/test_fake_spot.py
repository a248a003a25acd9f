"""The fake Binance keeps spot semantics: an account sells only what it holds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakebinance import FakeBinance
from bot4_ccxt.harness import plugin_config

from bot4.errors import InsufficientFunds
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio


def quote(venue: FakeBinance) -> None:
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


def _order(coid: str, side: Side, qty: str, kind: OrderType = OrderType.MARKET) -> Order:
    price = Decimal(150) if kind is OrderType.LIMIT else None
    return Order(coid, "BTC-USDT", side, kind, Decimal(qty), price)


async def test_a_flat_spot_account_cannot_sell() -> None:
    with FakeBinance() as venue:  # holds USDT only
        quote(venue)
        ex = CcxtExchange.from_config(plugin_config(venue))
        try:
            with pytest.raises(InsufficientFunds, match="insufficient balance"):
                await ex.place_order(_order("short-1", Side.SELL, "1"))
            assert venue.order_count() == 0
            assert (await ex.place_order(_order("buy-1", Side.BUY, "2"))).status is (
                OrderStatus.FILLED
            )
            # A resting sell locks what it sells: the rest is all that is left.
            await ex.place_order(_order("ask-1", Side.SELL, "1.5", OrderType.LIMIT))
            with pytest.raises(InsufficientFunds):
                await ex.place_order(_order("sell-2", Side.SELL, "1"))
            sold = await ex.place_order(_order("sell-3", Side.SELL, "0.5"))
            assert sold.status is OrderStatus.FILLED
            await ex.cancel_order("BTC-USDT", "ask-1")
            with pytest.raises(InsufficientFunds):
                await ex.place_order(_order("sell-4", Side.SELL, "1.6"))
            balance = await ex._call("fetch_balance()", lambda c: c.fetch_balance())
            assert Decimal(balance["BTC"]["free"]) == Decimal("1.5")
        finally:
            await ex.close()


async def test_held_assets_can_be_sold() -> None:
    with FakeBinance(holdings={"BTC": Decimal(1)}) as venue:
        quote(venue)
        ex = CcxtExchange.from_config(plugin_config(venue))
        try:
            assert (await ex.place_order(_order("s-1", Side.SELL, "1"))).status is (
                OrderStatus.FILLED
            )
            with pytest.raises(InsufficientFunds):
                await ex.place_order(_order("s-2", Side.SELL, "0.001"))
        finally:
            await ex.close()
