"""The paper venue's margin model: leverage and mode per symbol, tiers,
liquidation, funding, add-margin, spot semantics (bot4_paper.margin_book)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import trio
from bot4_paper import PaperEngine, PaperExchange
from bot4_paper.margin_book import SPOT, MarketMargin

from bot4.errors import ConfigError, InsufficientFunds, InvalidOrder
from bot4.margin import liquidation_price, tiers
from bot4.model import Fill, MarketData, Order, OrderState, OrderStatus

D = Decimal
T0 = datetime(2024, 3, 1, 7, 59, 50, tzinfo=UTC)  # ten seconds before a funding time


def tick(bid: str, ask: str | None = None, *, at: datetime, symbol: str = "BTC-USDT") -> MarketData:
    return MarketData(symbol, "paper", D(bid), D(ask or bid), D(bid), D(100), at)


def engine(**kw: object) -> PaperEngine:
    opts: dict[str, object] = {"balance": D(10000), "slippage_bps": D(0), "taker_fee": D(0)}
    opts.update(kw)
    return PaperEngine(None, **opts)  # type: ignore[arg-type]


def market(coid: str, side: str, qty: str, lev: str = "10", **kw: object) -> Order:
    return Order(
        client_order_id=coid,
        symbol=str(kw.pop("symbol", "BTC-USDT")),
        side=side,
        type="market",
        qty=D(qty),
        leverage=D(lev),
        **kw,  # type: ignore[arg-type]
    )


def opened(e: PaperEngine, side: str = "buy", lev: str = "10") -> None:
    e.on_tick(tick("1000", at=T0))
    e.set_leverage("BTC-USDT", D(lev))
    e.place(market("e", side, "1", lev))
    e.drain()


def test_set_leverage_is_applied_and_orders_must_carry_it() -> None:
    e = engine()
    e.on_tick(tick("1000", at=T0))
    assert e.set_leverage("BTC-USDT", D(5)) == D(5)
    with pytest.raises(InvalidOrder, match="differs from BTC-USDT's leverage 5"):
        e.place(market("a", "buy", "1", "10"))
    e.place(market("b", "buy", "1", "5"))
    assert e.balance().used == D(200)  # 1000 / 5
    with pytest.raises(InvalidOrder, match="close it first"):
        e.set_leverage("BTC-USDT", D(10))


def test_leverage_above_the_first_tier_is_refused() -> None:
    table = tiers([(50_000, "0.005", 20), (None, "0.01", 10)])
    e = engine(margin={"*": MarketMargin(tiers=table)})
    e.on_tick(tick("1000", at=T0))
    with pytest.raises(InvalidOrder, match="maximum 20"):
        e.set_leverage("BTC-USDT", D(25))
    assert e.set_leverage("BTC-USDT", D(20)) == D(20)


def test_isolated_liquidation_price_matches_the_formula_for_the_tier() -> None:
    e = engine()
    opened(e)
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.mode == "isolated"
    assert state.collateral == D(100)
    # P = (W - qE) / (q r - q) = (100 - 1000) / (0.005 - 1)
    assert state.liquidation_price == (D(100) - D(1000)) / (D("0.005") - 1)
    assert state.maintenance == D(5)  # 0.5% of 1000


def test_a_long_past_its_liquidation_price_is_liquidated_at_it_with_a_fee() -> None:
    e = engine()
    opened(e)
    liq = (D(100) - D(1000)) / (D("0.005") - 1)  # 904.52...
    assert e.on_tick(tick("905", at=T0 + timedelta(seconds=1))) == []
    events = e.on_tick(tick("880", at=T0 + timedelta(seconds=2)))
    fill = next(ev for ev in events if isinstance(ev, Fill))
    state = next(ev for ev in events if isinstance(ev, OrderState))
    assert fill.liquidity == "liquidation"
    assert fill.client_order_id == "liq-1"
    assert state.order.strategy == "liquidation"
    assert state.status is OrderStatus.FILLED
    assert state.reason == "liquidation"
    assert fill.price == D("904.52")  # rounded down for a long: against the account
    assert fill.price <= liq
    assert fill.fee == D("904.52") * D("0.0125")
    assert e.positions() == []
    assert e.margin.liquidations == ["liq-1"]
    # Isolated: the account lost the collateral less what the close kept, no more.
    assert e.tracker.cash == D(10000) - (D(1000) - D("904.52")) - fill.fee


def test_a_short_is_liquidated_when_the_mark_rises_to_its_price() -> None:
    e = engine()
    opened(e, "sell")
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.liquidation_price is not None
    assert state.liquidation_price > D(1000)
    up = str(state.liquidation_price.quantize(D(1)) + 1)
    events = e.on_tick(tick(up, at=T0 + timedelta(seconds=1)))
    assert [f.liquidity for f in events if isinstance(f, Fill)] == ["liquidation"]
    assert e.positions() == []


def test_the_mark_is_the_mid_not_the_last_trade() -> None:
    e = engine()
    opened(e)
    # Last trade (the bid here) below the liquidation price, mid above it.
    t = MarketData("BTC-USDT", "paper", D(900), D(912), D(900), D(100), T0 + timedelta(seconds=1))
    assert e.on_tick(t) == []
    assert len(e.positions()) == 1


def test_add_margin_moves_the_liquidation_price_and_takes_free_balance() -> None:
    e = engine()
    opened(e)
    before = e.margin_state("BTC-USDT")
    free = e.balance().free
    new = e.add_margin("BTC-USDT", D(50))
    after = e.margin_state("BTC-USDT")
    assert before is not None
    assert after is not None
    assert after.collateral == D(150)
    assert after.added == D(50)
    assert new == after.liquidation_price == liquidation_price(D(1), D(1000), D(150))
    assert before.liquidation_price is not None
    assert new is not None
    assert new < before.liquidation_price
    assert e.balance().free == free - D(50)
    # Saved: the price that liquidated it before no longer does.
    assert e.on_tick(tick("880", at=T0 + timedelta(seconds=1))) == []
    with pytest.raises(InsufficientFunds, match="free is"):
        e.add_margin("BTC-USDT", D(100000))


def test_added_margin_is_released_when_the_position_closes() -> None:
    e = engine()
    opened(e)
    e.add_margin("BTC-USDT", D(50))
    e.place(market("x", "sell", "1", reduce_only=True))
    assert e.positions() == []
    assert e.balance().used == 0
    assert e.balance().free == e.balance().total


def test_cross_margin_has_no_add_margin_and_liquidates_from_the_wallet() -> None:
    e = engine(balance=D(1000))
    e.on_tick(tick("1000", at=T0))
    e.set_margin_mode("BTC-USDT", "cross")
    e.set_leverage("BTC-USDT", D(10))
    e.place(market("e", "buy", "1"))
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.mode == "cross"
    # The whole wallet backs the position: P = (1000 - 1000) / (0.005 - 1) = 0.
    assert state.liquidation_price is None
    with pytest.raises(InvalidOrder, match="cross margin"):
        e.add_margin("BTC-USDT", D(10))
    with pytest.raises(InvalidOrder, match="has a position"):
        e.set_margin_mode("BTC-USDT", "isolated")


def test_funding_is_paid_at_funding_times_only() -> None:
    e = engine(margin={"*": MarketMargin(funding_rate=D("0.0001"))})
    opened(e)
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=5)))
    assert e.margin.funding_events == 0
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=11)))  # 08:00:01
    assert e.margin.funding_events == 1
    assert e.margin.funding_paid == D("0.1")  # a long pays 1 * 1000 * 0.0001
    assert e.tracker.cash == D(10000) - D("0.1")
    # 24 hours later: three more funding times at once.
    e.on_tick(tick("1000", at=T0 + timedelta(hours=24, seconds=11)))
    assert e.margin.funding_events == 4


def test_a_short_receives_positive_funding() -> None:
    e = engine(margin={"*": MarketMargin(funding_rate=D("0.0001"))})
    opened(e, "sell")
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=11)))
    assert e.margin.funding_paid == D("-0.1")


def test_each_open_position_reports_the_funding_it_paid_until_it_closes() -> None:
    e = engine(margin={"*": MarketMargin(funding_rate=D("0.0001"))})
    opened(e)
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=11)))  # 08:00:01: pays 0.1
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.funding_paid == D("0.1")
    # The durable venue's file keeps it.
    again = engine(margin={"*": MarketMargin(funding_rate=D("0.0001"))})
    again.margin.load(e.margin.dump())
    assert again.margin.position_funding == {"BTC-USDT": D("0.1")}
    # Closed: a new position starts from nothing (the account's total stays).
    e.place(market("c", "sell", "1", reduce_only=True))
    e.drain()
    assert e.margin_state("BTC-USDT") is None
    e.place(market("e2", "buy", "1"))
    e.drain()
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.funding_paid == 0
    assert e.margin.funding_paid == D("0.1")


def test_spot_has_no_leverage_and_sells_only_what_it_holds() -> None:
    e = engine(margin={"BTC-USDT": SPOT})
    e.on_tick(tick("1000", at=T0))
    with pytest.raises(InvalidOrder, match="spot: no leverage"):
        e.place(market("a", "buy", "1", "3"))
    with pytest.raises(InvalidOrder, match="spot"):
        e.set_leverage("BTC-USDT", D(3))
    with pytest.raises(InsufficientFunds, match="holding 0"):
        e.place(market("s", "sell", "0.1", "1"))
    e.place(market("b", "buy", "1", "1"))
    assert e.balance().used == D(1000)
    e.place(market("s2", "sell", "1", "1"))
    assert e.positions() == []
    # A deep fall never liquidates spot.
    e.place(market("b2", "buy", "1", "1"))
    e.drain()
    assert e.on_tick(tick("1", at=T0 + timedelta(seconds=1))) == []
    assert e.tracker.qty("BTC-USDT") == 1


def test_reduce_only_never_grows_a_position() -> None:
    e = engine()
    opened(e)
    e.place(market("r", "sell", "5", reduce_only=True))
    assert e.positions() == []
    state = e.place(market("r2", "sell", "1", reduce_only=True))
    assert state.status is OrderStatus.CANCELED


def test_config_reads_market_type_tiers_and_funding() -> None:
    ex = PaperExchange.from_config(
        {
            "feed": [],
            "funding_rate": "0.0002",
            "liquidation_fee": "0.01",
            "markets": {
                "BTC-USDT": {"price_increment": "0.01", "qty_increment": "0.001", "type": "spot"},
                "BTC-USDT-PERP": {
                    "price_increment": "0.1",
                    "qty_increment": "0.001",
                    "tiers": [[10000, "0.01", 50], [None, "0.02", 20]],
                },
            },
        }
    )
    book = ex.engine.margin
    assert book.of("BTC-USDT").spot
    perp = book.of("BTC-USDT-PERP")
    assert perp.funding_rate == D("0.0002")
    assert perp.tiers[1].rate == D("0.02")
    assert perp.tiers[1].cum == D(100)  # 10000 * (0.02 - 0.01)
    assert ex.engine.liquidation_fee == D("0.01")


@pytest.mark.parametrize(
    ("markets", "message"),
    [
        ({"X-USDT": {"price_increment": "1", "qty_increment": "1", "type": "future"}}, "type"),
        ({"X-USDT-PERP": {"price_increment": "1", "qty_increment": "1", "type": "spot"}}, "PERP"),
        ({"X-USDT": {"price_increment": "1", "qty_increment": "1", "tiers": [[1, 2]]}}, "tiers"),
        (
            {"X-USDT": {"price_increment": "1", "qty_increment": "1", "tiers": [[1, "2", 5]]}},
            "rate",
        ),
        (
            {"X-USDT": {"price_increment": "1", "qty_increment": "1", "tiers": [[1, "0.1", 2.5]]}},
            "whole",
        ),
    ],
)
def test_bad_margin_config_names_the_field(markets: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PaperExchange.from_config({"feed": [], "markets": markets})


def test_exchange_methods_reach_the_engine() -> None:
    async def main() -> None:
        ex = PaperExchange([tick("1000", at=T0)], engine())
        stream = ex.stream([])
        await stream.__anext__()
        assert await ex.set_leverage("BTC-USDT", D(10)) == D(10)
        await ex.set_margin_mode("BTC-USDT", "isolated")
        await ex.place_order(market("e", "buy", "1"))
        liq = await ex.add_margin("BTC-USDT", D(100))
        state = await ex.fetch_margin("BTC-USDT")
        assert state is not None
        assert state.liquidation_price == liq

    trio.run(main)
