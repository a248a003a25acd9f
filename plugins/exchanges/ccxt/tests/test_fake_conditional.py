"""Stop-loss and take-profit orders and add-margin on the fake perpetual
venues, through ccxt (binanceusdm against the Algo Service of the fake
USDⓈ-M venue, bybit against the fake v5 venue): the price a stop watches
(mark or last), its fills booked under its client id, a restarted bot finding
it again, cancel, and collateral moved into the isolated position."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakebinance import _ApiError
from bot4_ccxt.fakebybit import FakeBybit
from bot4_ccxt.fakefutures import FakeBinanceFutures
from bot4_ccxt.harness import plugin_config

from bot4.errors import ExchangeRefused
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio
SYM = "BTC-USDT-PERP"
VENUES = {"binanceusdm": FakeBinanceFutures, "bybit": FakeBybit}
_T0 = datetime(2024, 3, 1, 1, tzinfo=UTC)


class Quotes:
    """Quotes one second apart: bid, ask (a spread of ``spread``), last = bid."""

    def __init__(self, venue: FakeBinanceFutures) -> None:
        self.venue = venue
        self.n = 0

    def __call__(self, bid: str, spread: str = "0.02") -> None:
        self.n += 1
        b = Decimal(bid)
        when = _T0 + timedelta(seconds=self.n)
        self.venue.push(MarketData(SYM, "fake", b, b + Decimal(spread), b, Decimal(1000), when))


def exchange(venue: FakeBinanceFutures, name: str, **extra: object) -> CcxtExchange:
    return CcxtExchange.from_config(
        plugin_config(venue, exchange=name, type="swap", symbols=[SYM], timeout=1.0, **extra)
    )


def buy(coid: str = "e-1", qty: str = "1") -> Order:
    return Order(coid, SYM, Side.BUY, OrderType.MARKET, Decimal(qty), leverage=Decimal(5))


def sell_stop(price: str, coid: str = "sl-1", kind: OrderType = OrderType.STOP_LOSS) -> Order:
    return Order(
        coid,
        SYM,
        Side.SELL,
        kind,
        Decimal(1),
        Decimal(price),
        reduce_only=True,
        leverage=Decimal(5),
    )


@pytest.fixture(params=sorted(VENUES))
async def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def venue(name: str) -> AsyncIterator[FakeBinanceFutures]:
    v = VENUES[name]().start()
    assert isinstance(v, FakeBinanceFutures)
    try:
        yield v
    finally:
        v.close()


@pytest.mark.parametrize("watch", ["mark", "last"])
async def test_a_stop_watches_the_mark_or_the_last_price(
    name: str, venue: FakeBinanceFutures, watch: str
) -> None:
    quote = Quotes(venue)
    quote("100")
    ex = exchange(venue, name, trigger_price=watch)
    try:
        await ex.place_order(buy())
        state = await ex.place_order(sell_stop("99"))
        assert state.status is OrderStatus.NEW
        # The last trade (the bid here) at the stop, the mark (the mid) above it.
        quote("99", spread="0.2")
        state = await ex.fetch_order(SYM, "sl-1")
        if watch == "mark":
            assert state.status is OrderStatus.NEW
            quote("98.8", spread="0.2")  # the mark, 98.9, is through the stop now
            state = await ex.fetch_order(SYM, "sl-1")
        assert state.status is OrderStatus.FILLED
        assert state.filled_qty == 1
        assert (state.order.type, state.order.price) == (OrderType.STOP_LOSS, Decimal(99))
        # The market order the stop placed filled it: its fill is the stop's.
        fills = [f for f in await ex.fetch_fills() if f.side is Side.SELL]
        assert [(f.client_order_id, f.qty) for f in fills] == [("sl-1", Decimal(1))]
        assert await ex.fetch_positions() == []
    finally:
        await ex.close()


async def test_take_profit_cancel_and_a_restarted_bot(name: str, venue: FakeBinanceFutures) -> None:
    quote = Quotes(venue)
    quote("100")
    ex = exchange(venue, name)
    try:
        await ex.place_order(buy())
        tp = sell_stop("105", "tp-1", OrderType.TAKE_PROFIT)
        await ex.place_order(tp)
        await ex.place_order(sell_stop("95"))
        listed = {s.order.client_order_id: s.order.type for s in await ex.fetch_open_orders(SYM)}
        assert listed == {"tp-1": OrderType.TAKE_PROFIT, "sl-1": OrderType.STOP_LOSS}
    finally:
        await ex.close()
    # A restarted bot (nothing in memory) retrying the same stop finds it.
    again = exchange(venue, name)
    try:
        state = await again.place_order(sell_stop("95"))
        assert state.status is OrderStatus.NEW
        assert len(list(venue.conditionals)) == 2
        assert (await again.cancel_order(SYM, "sl-1")).status is OrderStatus.CANCELED
        quote("94")  # through the cancelled stop: nothing happens
        assert (await again.fetch_order(SYM, "sl-1")).status is OrderStatus.CANCELED
        assert [p.qty for p in await again.fetch_positions()] == [1]
        quote("106")
        state = await again.fetch_order(SYM, "tp-1")
        assert state.status is OrderStatus.FILLED
        assert await again.fetch_positions() == []
    finally:
        await again.close()


async def test_a_stop_on_the_wrong_side_is_refused(name: str, venue: FakeBinanceFutures) -> None:
    from bot4.errors import InvalidOrder

    Quotes(venue)("100")
    ex = exchange(venue, name)
    try:
        await ex.place_order(buy())
        with pytest.raises(InvalidOrder):
            await ex.place_order(sell_stop("101"))  # a sell stop above the market
        assert list(venue.conditionals) == []
    finally:
        await ex.close()


async def test_add_margin_moves_the_liquidation_price(name: str, venue: FakeBinanceFutures) -> None:
    quote = Quotes(venue)
    quote("100")
    ex = exchange(venue, name)
    try:
        await ex.place_order(buy(qty="10"))
        [before] = await ex.fetch_margin_positions()
        free = (await ex.fetch_balance()).free
        liq = await ex.add_margin(SYM, Decimal(50))
        [after] = await ex.fetch_margin_positions()
        assert before.liquidation_price is not None
        assert after.liquidation_price == liq
        assert liq is not None
        assert liq < before.liquidation_price
        assert (await ex.fetch_balance()).free == free - 50
        assert venue.engine.margin.added[SYM] == 50
        # The venue liquidates at the new price, not the old one.
        quote(str(before.liquidation_price - Decimal(1)))
        assert [p.qty for p in await ex.fetch_positions()] == [10]
        with pytest.raises(ExchangeRefused):
            await ex.add_margin(SYM, Decimal(10**9))  # more than the free balance
    finally:
        await ex.close()


async def test_add_margin_refused_on_cross_margin(name: str, venue: FakeBinanceFutures) -> None:
    Quotes(venue)("100")
    ex = exchange(venue, name, margin_mode="cross")
    try:
        await ex.place_order(buy())
        with pytest.raises(ExchangeRefused):
            await ex.add_margin(SYM, Decimal(10))
    finally:
        await ex.close()


async def test_binance_fapi_order_refuses_conditional_types() -> None:
    """As Binance since December 2025: conditional orders go to the Algo Service."""
    venue = FakeBinanceFutures()
    with pytest.raises(_ApiError) as err:
        venue._new_order(
            {"symbol": "BTCUSDT", "side": "SELL", "type": "STOP_MARKET", "quantity": "1"}
        )
    assert err.value.code == -4120


async def test_a_restarted_bot_lists_and_cancels_a_stop_it_did_not_place(
    name: str, venue: FakeBinanceFutures
) -> None:
    Quotes(venue)("100")
    ex = exchange(venue, name)
    try:
        await ex.place_order(buy())
        await ex.place_order(sell_stop("95"))
    finally:
        await ex.close()
    fresh = exchange(venue, name)  # nothing in memory: what the venue says
    try:
        [listed] = await fresh.fetch_open_orders(SYM)
        assert listed.order.client_order_id == "sl-1"
        assert (listed.order.type, listed.order.price) == (OrderType.STOP_LOSS, Decimal(95))
        assert listed.order.reduce_only
        fresh2 = exchange(venue, name)
        try:
            assert (await fresh2.cancel_order(SYM, "sl-1")).status is OrderStatus.CANCELED
        finally:
            await fresh2.close()
        assert await fresh.fetch_open_orders(SYM) == []
    finally:
        await fresh.close()
