"""The fake USDⓈ-M futures venue through ccxt's binanceusdm: leverage, margin
mode, venue-reported liquidation price (the margin model's formula), reduce-only,
funding, liquidation, and the fault injection on /fapi."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bot4_ccxt.exchange import CcxtExchange
from bot4_ccxt.fakefutures import FakeBinanceFutures
from bot4_ccxt.harness import plugin_config
from bot4_ccxt.margin import liquidation_price

from bot4.errors import ExchangeRefused
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio
SYM = "BTC-USDT-PERP"
ORDER = "/fapi/v1/order"


def quote(venue: FakeBinanceFutures, bid: str, hour: int = 0, minute: int = 0) -> None:
    b = Decimal(bid)
    venue.push(
        MarketData(
            SYM,
            "fake",
            b,
            b + Decimal("0.02"),
            b,
            Decimal(1000),
            datetime(2024, 3, 1, hour, minute, tzinfo=UTC),
        )
    )


def buy(coid: str, qty: str = "2", lev: int = 5, **kw: object) -> Order:
    return Order(coid, SYM, Side.BUY, OrderType.MARKET, Decimal(qty), leverage=Decimal(lev), **kw)  # type: ignore[arg-type]


@pytest.fixture
async def venue() -> AsyncIterator[FakeBinanceFutures]:
    with FakeBinanceFutures() as v:
        quote(v, "100", hour=7, minute=59)
        yield v


@pytest.fixture
async def ex(venue: FakeBinanceFutures) -> AsyncIterator[CcxtExchange]:
    exchange = CcxtExchange.from_config(
        plugin_config(venue, exchange="binanceusdm", type="swap", symbols=[SYM], timeout=0.5)
    )
    await exchange.connect()
    try:
        yield exchange
    finally:
        await exchange.close()


async def test_leverage_and_margin_mode_are_set_before_the_first_entry(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    state = await ex.place_order(buy("e-1", lev=5))
    assert state.status is OrderStatus.FILLED
    assert venue.leverage[SYM] == 5
    assert venue.margin_type[SYM] == "ISOLATED"
    posts = [h.path for h in venue.hits if h.method == "POST"]
    assert posts == ["/fapi/v1/marginType", "/fapi/v1/leverage", ORDER]
    balance = await ex.fetch_balance()
    assert state.avg_price is not None
    assert balance.used == state.filled_qty * state.avg_price / 5  # notional / leverage
    # A second entry at the same leverage sets nothing; another leverage is sent first.
    await ex.place_order(buy("e-2", qty="1", lev=5))
    await ex.place_order(buy("e-3", qty="1", lev=3))
    posts = [h.path for h in venue.hits if h.method == "POST"][3:]
    assert posts == [ORDER, "/fapi/v1/leverage", ORDER]
    assert venue.leverage[SYM] == 3


async def test_the_venue_reports_the_formula_liquidation_price(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    await ex.place_order(buy("e-1", lev=10))
    [pos] = await ex.fetch_margin_positions()
    assert pos.qty == 2
    assert pos.leverage == 10
    assert pos.margin_mode == "isolated"
    want = liquidation_price(pos.qty, pos.entry_price, pos.qty * pos.entry_price / 10)
    assert want is not None
    assert pos.liquidation_price is not None
    assert abs(pos.liquidation_price - want) <= Decimal("0.0001") * want


async def test_reduce_only_never_grows_a_position(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    with pytest.raises(ExchangeRefused, match="ReduceOnly"):
        await ex.place_order(
            Order("r-0", SYM, Side.SELL, OrderType.MARKET, Decimal(1), reduce_only=True)
        )
    await ex.place_order(buy("e-1"))
    with pytest.raises(ExchangeRefused, match="ReduceOnly"):
        await ex.place_order(buy("r-1", qty="1", reduce_only=True))
    close = Order("r-2", SYM, Side.SELL, OrderType.MARKET, Decimal(5), reduce_only=True)
    state = await ex.place_order(close)
    assert state.filled_qty == 2  # capped at the position: it closes, never flips
    assert await ex.fetch_positions() == []
    # An exit sets no leverage: only the entry's two set-up requests were sent.
    assert len(venue.hits_of("POST", "/fapi/v1/leverage")) == 1


async def test_funding_is_paid_at_funding_times(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    await ex.place_order(buy("e-1"))
    before = await ex.fetch_balance()
    quote(venue, "100", hour=8, minute=1)  # crosses 08:00
    quote(venue, "100", hour=9)  # no funding time in between
    after = await ex.fetch_balance()
    assert len(venue.income) == 1
    paid = Decimal(venue.income[0]["income"])
    assert paid == -Decimal(2) * Decimal("100.01") * Decimal("0.0001")  # a long pays
    assert after.total - before.total == paid


async def test_a_position_past_its_liquidation_price_is_liquidated(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    await ex.place_order(buy("e-1", lev=20))
    [pos] = await ex.fetch_margin_positions()
    assert pos.liquidation_price is not None
    quote(venue, str((pos.liquidation_price + 1).quantize(Decimal("0.01"))), hour=8, minute=30)
    assert venue.liquidations == []
    quote(venue, str((pos.liquidation_price - 1).quantize(Decimal("0.01"))), hour=8, minute=31)
    assert venue.liquidations == ["autoclose-1"]
    assert await ex.fetch_positions() == []
    fills = await ex.fetch_fills()
    assert [f.client_order_id for f in fills] == ["e-1", "autoclose-1"]


async def test_lost_answer_on_fapi_is_no_duplicate(
    venue: FakeBinanceFutures, ex: CcxtExchange
) -> None:
    await ex.place_order(buy("warm-up", qty="0.1"))  # leverage and margin type set
    venue.inject("POST", ORDER, "500", process=True)
    state = await ex.place_order(buy("lost-1"))
    assert state.status is OrderStatus.FILLED
    assert venue.order_count() == 2
    venue.inject("GET", "/fapi/v3/account", "429", count=1, retry_after=0)
    assert (await ex.fetch_balance()).currency == "USDT"
    assert [h.status for h in venue.hits_of("GET", "/fapi/v3/account")][-2:] == [429, 200]


async def test_clock_skew_on_fapi_is_resynced(venue: FakeBinanceFutures, ex: CcxtExchange) -> None:
    venue.clock_offset = 30.0
    assert (await ex.place_order(buy("skew-1"))).status is OrderStatus.FILLED
    assert any(h.status == 400 for h in venue.hits_of("GET", ORDER))
