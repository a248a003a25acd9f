"""The paper venue on perpetuals data: the tick's mark (not its mid) drives
margin and liquidation, the data's funding rate is paid at the funding
times, and cross positions are liquidated by the account's maintenance
margin (bot4_paper.engine, bot4_paper.margin_book)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot4_paper import PaperEngine
from bot4_paper.margin_book import MarketMargin

from bot4.data import iter_ticks
from bot4.margin import liquidation_price, maintenance_margin
from bot4.model import Fill, MarketData, Order

D = Decimal
T0 = datetime(2024, 3, 1, 7, 59, 50, tzinfo=UTC)  # ten seconds before a funding time
FEE = D("0.0125")  # the default liquidation fee


def tick(
    price: str,
    *,
    at: datetime,
    symbol: str = "BTC-USDT",
    mark: str | None = None,
    rate: str | None = None,
) -> MarketData:
    p = D(price)
    return MarketData(
        symbol,
        "paper",
        p,
        p,
        p,
        D(1000),
        at,
        None if mark is None else D(mark),
        None if rate is None else D(rate),
    )


def engine(**kw: object) -> PaperEngine:
    opts: dict[str, object] = {"balance": D(10000), "slippage_bps": D(0), "taker_fee": D(0)}
    opts.update(kw)
    return PaperEngine(None, **opts)  # type: ignore[arg-type]


def buy(e: PaperEngine, symbol: str, qty: str, lev: str = "10") -> None:
    e.set_leverage(symbol, D(lev))
    e.place(
        Order(
            client_order_id=f"e-{symbol}",
            symbol=symbol,
            side="buy",
            type="market",
            qty=D(qty),
            leverage=D(lev),
        )
    )
    e.drain()


def liquidations(events: list[object]) -> list[Fill]:
    return [f for f in events if isinstance(f, Fill) and f.liquidity == "liquidation"]


# --- the mark column ------------------------------------------------------------------


def test_an_isolated_long_is_liquidated_when_the_mark_column_crosses_not_the_mid(
    tmp_path: Path,
) -> None:
    """Read from a tick file with a mark column: the mid stays far above the
    liquidation price (904.52) while the mark falls through it."""
    data = tmp_path / "perp.csv"
    data.write_text(
        "timestamp,symbol,bid,ask,last,volume,mark\n"
        "2024-03-01T07:59:50Z,BTC-USDT,1000,1000,1000,100,1000\n"
        "2024-03-01T07:59:51Z,BTC-USDT,990,990,990,100,910\n"  # mark above: nothing
        "2024-03-01T07:59:52Z,BTC-USDT,990,990,990,100,900\n"  # mark below, mid 990
    )
    first, above, below = iter_ticks(data, exchange="paper")
    e = engine()
    e.on_tick(first)
    buy(e, "BTC-USDT", "1")
    assert e.on_tick(above) == []
    state = e.margin_state("BTC-USDT")
    assert state is not None
    assert state.mark == D(910)  # not the mid, 990
    assert e.balance().total == D(10000) - D(90)  # valued at the mark too
    (fill,) = liquidations(e.on_tick(below))
    assert fill.price == D("904.52")  # the liquidation price, rounded against the account
    assert fill.fee == D("904.52") * FEE
    assert e.positions() == []


def test_a_mid_past_the_liquidation_price_liquidates_nothing_while_the_mark_is_not() -> None:
    e = engine()
    e.on_tick(tick("1000", at=T0))
    buy(e, "BTC-USDT", "1")
    assert e.on_tick(tick("880", at=T0 + timedelta(seconds=1), mark="950")) == []
    assert len(e.positions()) == 1
    # Without a mark the mid is the mark again: liquidated.
    (fill,) = liquidations(e.on_tick(tick("880", at=T0 + timedelta(seconds=2))))
    assert fill.price == D("904.52")


# --- the funding-rate column ----------------------------------------------------------


def test_funding_comes_from_the_data_at_00_08_and_16_utc() -> None:
    """The configured rate is 0; each funding time pays the latest rate a
    tick carried before it (a tick without one keeps the last), at the mark."""
    e = engine()
    at = datetime(2024, 3, 1, 7, 59, 50, tzinfo=UTC)
    e.on_tick(tick("1000", at=at, rate="0.0001"))
    buy(e, "BTC-USDT", "1")
    # 08:00: the rate before it (0.0001), not the 0.0005 of the tick after it.
    e.on_tick(tick("1000", at=at + timedelta(seconds=11), rate="0.0005"))
    assert (e.margin.funding_events, e.margin.funding_paid) == (1, D("0.1"))
    e.on_tick(tick("1000", at=datetime(2024, 3, 1, 15, 59, tzinfo=UTC), rate="0.0003", mark="1010"))
    assert e.margin.funding_events == 1  # no funding time passed
    # 16:00: at the mark before it (1010, not the mid).
    e.on_tick(tick("1000", at=datetime(2024, 3, 1, 16, 0, 1, tzinfo=UTC)))
    assert (e.margin.funding_events, e.margin.funding_paid) == (2, D("0.1") + D("0.303"))
    # 00:00 the next day: no rate on the ticks since, the latest seen holds.
    e.on_tick(tick("1000", at=datetime(2024, 3, 1, 23, 0, tzinfo=UTC)))
    e.on_tick(tick("1000", at=datetime(2024, 3, 2, 0, 0, 1, tzinfo=UTC), rate="-0.0002"))
    assert e.margin.funding_events == 3
    assert e.margin.funding_paid == D("0.1") + D("0.303") + D("0.3")
    # 08:00: a negative rate, a long receives.
    e.on_tick(tick("1000", at=datetime(2024, 3, 2, 8, 0, 1, tzinfo=UTC)))
    assert e.margin.funding_events == 4
    assert e.margin.funding_paid == D("0.1") + D("0.303") + D("0.3") - D("0.2")
    assert e.tracker.cash == D(10000) - e.margin.funding_paid


def test_a_rate_in_the_data_overrides_the_configured_one_for_its_symbol_only() -> None:
    e = engine(margin={"*": MarketMargin(funding_rate=D("0.001"))})
    e.on_tick(tick("1000", at=T0, rate="0.0001"))
    e.on_tick(tick("100", at=T0, symbol="ETH-USDT"))
    buy(e, "BTC-USDT", "1")
    buy(e, "ETH-USDT", "10")
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=11)))
    # BTC at the data's 0.0001 (0.1), ETH at the configured 0.001 (1).
    assert (e.margin.funding_events, e.margin.funding_paid) == (2, D("1.1"))


# --- cross margin: liquidation by the account -----------------------------------------


def _two_cross_longs() -> PaperEngine:
    """BTC 4 @ 1000 and ETH 40 @ 100, both cross at 10x (initial margin 400
    each), and a wallet drawn down to 600 by funding (5% at 08:00)."""
    e = engine(balance=D(1000), margin={"*": MarketMargin(funding_rate=D("0.05"))})
    e.on_tick(tick("1000", at=T0))
    e.on_tick(tick("100", at=T0, symbol="ETH-USDT"))
    for symbol, qty in (("BTC-USDT", "4"), ("ETH-USDT", "40")):
        e.set_margin_mode(symbol, "cross")
        buy(e, symbol, qty)
    assert e.on_tick(tick("1000", at=T0 + timedelta(seconds=11))) == []
    assert e.tracker.cash == D(600)
    return e


def test_two_cross_positions_are_liquidated_together_when_the_account_breaches() -> None:
    e = _two_cross_longs()
    at = T0 + timedelta(seconds=12)
    assert e.on_tick(tick("1000", at=at, mark="928")) == []  # BTC -288: the account holds
    # ETH -284 more: 600 - 572 = 28 left against 18.56 + 18.58 of maintenance.
    events = e.on_tick(tick("100", at=at, symbol="ETH-USDT", mark="92.9"))
    marks = {"BTC-USDT": D(928), "ETH-USDT": D("92.9")}
    # Neither alone is past the price its own initial margin (400) would give it,
    # nor breaches with the whole wallet to itself.
    for symbol, qty in (("BTC-USDT", D(4)), ("ETH-USDT", D(40))):
        entry = D(1000) if symbol == "BTC-USDT" else D(100)
        isolated = liquidation_price(qty, entry, D(400), MarketMargin().tiers)
        assert isolated is not None
        assert marks[symbol] > isolated
        alone = D(600) + qty * (marks[symbol] - entry)
        assert alone > maintenance_margin(qty, marks[symbol], MarketMargin().tiers)
    fills = liquidations(events)
    # Largest loss first (BTC), each at its mark with the fee, both on this tick.
    assert [(f.client_order_id, f.symbol, f.qty, f.price) for f in fills] == [
        ("liq-1", "BTC-USDT", D(4), D(928)),
        ("liq-2", "ETH-USDT", D(40), D("92.9")),
    ]
    assert [f.fee for f in fills] == [D(4) * D(928) * FEE, D(40) * D("92.9") * FEE]
    assert e.positions() == []
    assert e.margin.liquidations == ["liq-1", "liq-2"]
    assert e.tracker.cash == D(600) - D(288) - D(284) - fills[0].fee - fills[1].fee


def test_a_cross_account_just_above_its_maintenance_margin_is_left_alone() -> None:
    e = _two_cross_longs()
    at = T0 + timedelta(seconds=12)
    e.on_tick(tick("1000", at=at, mark="928"))
    # ETH at 93.3: 600 - 288 - 268 = 44 against 18.56 + 18.66 of maintenance.
    assert e.on_tick(tick("100", at=at, symbol="ETH-USDT", mark="93.3")) == []
    assert len(e.positions()) == 2


def test_a_cheap_liquidation_stops_once_the_account_is_healthy_again() -> None:
    """With no liquidation fee, closing the largest loss frees its
    maintenance margin and the other position stays."""
    e = engine(
        balance=D(1000),
        margin={"*": MarketMargin(funding_rate=D("0.05"))},
        liquidation_fee=D(0),
    )
    e.on_tick(tick("1000", at=T0))
    e.on_tick(tick("100", at=T0, symbol="ETH-USDT"))
    for symbol, qty in (("BTC-USDT", "4"), ("ETH-USDT", "40")):
        e.set_margin_mode(symbol, "cross")
        buy(e, symbol, qty)
    e.on_tick(tick("1000", at=T0 + timedelta(seconds=11)))
    at = T0 + timedelta(seconds=12)
    e.on_tick(tick("1000", at=at, mark="928"))
    fills = liquidations(e.on_tick(tick("100", at=at, symbol="ETH-USDT", mark="92.9")))
    assert [f.symbol for f in fills] == ["BTC-USDT"]
    assert [p.symbol for p in e.positions()] == ["ETH-USDT"]


def test_an_isolated_position_is_not_part_of_the_cross_account() -> None:
    """An isolated position's loss stays in its collateral: the cross
    account counts the collateral out, not the loss."""
    e = engine(balance=D(2000))
    e.on_tick(tick("1000", at=T0))
    e.on_tick(tick("100", at=T0, symbol="ETH-USDT"))
    buy(e, "BTC-USDT", "4")  # isolated, 400 of collateral
    e.set_margin_mode("ETH-USDT", "cross")
    buy(e, "ETH-USDT", "40")
    at = T0 + timedelta(seconds=1)
    e.on_tick(tick("1000", at=at, mark="910"))  # BTC -360: not past its 904.52
    # Cross: 2000 - 400 (isolated) - 360 (ETH at 91) = 1240 against 18.2: fine.
    assert e.on_tick(tick("100", at=at, symbol="ETH-USDT", mark="91")) == []
    assert len(e.positions()) == 2
