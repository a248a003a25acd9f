"""The fake Bybit v5 venue through ccxt's bybit: look-up by orderLinkId,
leverage already in force, and the fault injection on /v5 (429, lost answers,
clock skew)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakebybit import FakeBybit
from bot4_ccxt.harness import plugin_config

from bot4.errors import InsufficientFunds, OrderNotFound, RateLimited
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio
SYM = "BTC-USDT-PERP"
CREATE = "/v5/order/create"


def quote(venue: FakeBybit, bid: str = "100") -> None:
    b = Decimal(bid)
    venue.push(
        MarketData(
            SYM,
            "fake",
            b,
            b + Decimal("0.02"),
            b,
            Decimal(1000),
            datetime(2024, 3, 1, 1, tzinfo=UTC),
        )
    )


def buy(coid: str, qty: str = "1", lev: int = 5) -> Order:
    return Order(coid, SYM, Side.BUY, OrderType.MARKET, Decimal(qty), leverage=Decimal(lev))


def _exchange(venue: FakeBybit, **extra: object) -> CcxtExchange:
    return CcxtExchange.from_config(
        plugin_config(venue, exchange="bybit", type="swap", symbols=[SYM], **extra)
    )


@pytest.fixture
async def venue() -> AsyncIterator[FakeBybit]:
    with FakeBybit() as v:
        quote(v)
        yield v


@pytest.fixture
async def ex(venue: FakeBybit) -> AsyncIterator[CcxtExchange]:
    exchange = _exchange(venue, timeout=0.5)
    await exchange.connect()
    try:
        yield exchange
    finally:
        await exchange.close()


async def test_orders_are_found_by_order_link_id(venue: FakeBybit, ex: CcxtExchange) -> None:
    state = await ex.place_order(buy("s1-t-4"))
    assert state.status is OrderStatus.FILLED  # read back: create answers ids only
    found = await ex.fetch_order(SYM, "s1-t-4")
    assert found.status is OrderStatus.FILLED
    assert found.filled_qty == 1
    with pytest.raises(OrderNotFound):
        await ex.fetch_order(SYM, "s1-t-99")
    [fill] = await ex.fetch_fills()
    assert fill.client_order_id == "s1-t-4"  # from the execution's orderLinkId


async def test_a_restart_finds_the_leverage_in_force(venue: FakeBybit) -> None:
    first = _exchange(venue)
    await first.place_order(buy("a-1", lev=7))
    await first.close()
    assert venue.leverage[SYM] == 7
    # A new process knows nothing: Bybit answers 110043 "leverage not modified".
    second = _exchange(venue)
    try:
        assert (await second.place_order(buy("a-2", lev=7))).status is OrderStatus.FILLED
    finally:
        await second.close()
    codes = [h.status for h in venue.hits_of("POST", "/v5/position/set-leverage")]
    assert codes == [200, 200]  # errors are HTTP 200 with a retCode on Bybit


async def test_a_lost_create_answer_is_no_duplicate(venue: FakeBybit, ex: CcxtExchange) -> None:
    await ex.place_order(buy("warm-up", qty="0.1"))
    venue.inject("POST", CREATE, "drop", process=True)
    state = await ex.place_order(buy("lost-1"))
    assert state.status is OrderStatus.FILLED
    assert venue.order_count() == 2
    assert len(venue.hits_of("POST", CREATE)) == 2  # never sent again


async def test_429_is_rate_limited_and_retried(venue: FakeBybit, ex: CcxtExchange) -> None:
    venue.inject("GET", "/v5/account/wallet-balance", "429", count=1, retry_after=0)
    assert (await ex.fetch_balance()).total > 0
    hits = venue.hits_of("GET", "/v5/account/wallet-balance")
    assert [h.status for h in hits] == [429, 200]
    quick = _exchange(venue, max_retries=0)
    try:
        await quick.connect()
        venue.inject("GET", "/v5/account/wallet-balance", "429", retry_after=0)
        with pytest.raises(RateLimited):
            await quick.fetch_balance()
    finally:
        await quick.close()


async def test_clock_skew_is_resynced(venue: FakeBybit, ex: CcxtExchange) -> None:
    venue.clock_offset = 30.0
    assert (await ex.place_order(buy("skew-1"))).status is OrderStatus.FILLED
    assert venue.order_count() == 1


async def test_a_liquidation_fill_without_order_link_id_still_counts(
    venue: FakeBybit, ex: CcxtExchange, caplog: pytest.LogCaptureFixture
) -> None:
    await ex.place_order(buy("e-1", lev=20))
    [pos] = await ex.fetch_margin_positions()
    assert pos.liquidation_price is not None
    quote(venue, str((pos.liquidation_price - 1).quantize(Decimal("0.01"))))
    assert venue.liquidations == ["autoclose-1"]
    assert await ex.fetch_positions() == []
    fills = await ex.fetch_fills()
    # The venue's closing order has no client id: its fill is under the venue's order id,
    # found with ccxt's fetch_order by id (acknowledged, as Bybit's client requires).
    assert [f.client_order_id for f in fills] == ["e-1", str(venue._ids["autoclose-1"])]
    assert "not found" not in caplog.text  # the look-up by exchange id succeeded


async def test_bybit_spot_account_sells_only_what_it_holds() -> None:
    with FakeBybit(category="spot", holdings={"BTC": Decimal("0.5")}) as venue:
        venue.push(
            MarketData(
                "BTC-USDT",
                "fake",
                Decimal(100),
                Decimal("100.02"),
                Decimal(100),
                Decimal(1000),
                datetime(2024, 3, 1, 1, tzinfo=UTC),
            )
        )
        ex = CcxtExchange.from_config(
            plugin_config(venue, exchange="bybit", type="spot", symbols=["BTC-USDT"])
        )
        try:
            sell = Order("s-1", "BTC-USDT", Side.SELL, OrderType.MARKET, Decimal("0.6"))
            with pytest.raises(InsufficientFunds):
                await ex.place_order(sell)
            ok = Order("s-2", "BTC-USDT", Side.SELL, OrderType.MARKET, Decimal("0.5"))
            assert (await ex.place_order(ok)).status is OrderStatus.FILLED
            assert not venue.hits_of("POST", "/v5/position/set-leverage")  # spot: no leverage
        finally:
            await ex.close()
