"""The synchronous paper matching engine: prices, fees, sizes, triggers, margin."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from bot4_paper import PaperEngine, round_price, round_qty

from bot4.errors import InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.model import Fill, MarketData, Order, OrderState, OrderStatus

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def tick(self, bid: str, ask: str, volume: str = "10", symbol: str = "BTC-USDT") -> MarketData:
        self.t += timedelta(seconds=1)
        return MarketData(
            symbol=symbol,
            exchange="paper",
            bid=D(bid),
            ask=D(ask),
            last=D(bid),
            volume=D(volume),
            timestamp=self.t,
        )


def engine(**kw: object) -> PaperEngine:
    opts: dict[str, object] = {
        "balance": D("100000"),
        "slippage_bps": D(0),
        "taker_fee": D("0.0004"),
        "maker_fee": D("0.0002"),
    }
    opts.update(kw)
    return PaperEngine(None, **opts)  # type: ignore[arg-type]


def order(
    coid: str, side: str, kind: str, qty: str, price: str | None = None, **kw: object
) -> Order:
    return Order(
        client_order_id=coid,
        symbol=str(kw.pop("symbol", "BTC-USDT")),
        side=side,
        type=kind,
        qty=D(qty),
        price=None if price is None else D(price),
        **kw,  # type: ignore[arg-type]
    )


def step(e: PaperEngine, tick: MarketData) -> list[Fill | OrderState]:
    """Events of one tick alone (on_tick also returns what place() queued)."""
    e.drain()
    return e.on_tick(tick)


def fills(events: list[Fill | OrderState]) -> list[Fill]:
    return [e for e in events if isinstance(e, Fill)]


def test_market_buy_fills_at_ask_plus_slippage_with_exact_taker_fee() -> None:
    c, e = Clock(), engine(slippage_bps=D(1))
    e.on_tick(c.tick("50000", "50001"))
    state = e.place(order("a", "buy", "market", "0.1"))
    assert state.status is OrderStatus.FILLED
    # 50001 * 1.0001 = 50006.0001 -> half-even to 0.01 -> 50006.00
    assert state.avg_price == D("50006.00")
    events = e.drain()
    assert [type(x).__name__ for x in events] == ["OrderState", "Fill", "OrderState"]
    assert events[0].status is OrderStatus.NEW  # type: ignore[union-attr]
    (f,) = fills(events)
    assert f.price == D("50006.00")
    assert f.fee == D("0.1") * D("50006.00") * D("0.0004") == D("2.000240")
    assert f.liquidity == "taker"
    assert f.timestamp == c.t


def test_market_sell_fills_at_bid_minus_slippage() -> None:
    c, e = Clock(), engine(slippage_bps=D(2))
    e.on_tick(c.tick("3000.00", "3000.10", symbol="ETH-USDT"))
    state = e.place(order("s", "sell", "market", "1.5", symbol="ETH-USDT"))
    # 3000 * (1 - 0.0002) = 2999.40
    assert state.avg_price == D("2999.40")
    assert e.fills()[0].fee == D("1.5") * D("2999.40") * D("0.0004")


def test_partial_fills_across_ticks() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101", volume="0.3"))
    state = e.place(order("p", "buy", "market", "1"))
    assert state.status is OrderStatus.PARTIALLY_FILLED
    assert state.filled_qty == D("0.3")
    assert [s.order.client_order_id for s in e.open_orders()] == ["p"]
    ev = step(e, c.tick("101", "102", volume="0.5"))
    assert [f.qty for f in fills(ev)] == [D("0.5")]
    assert e.order_state("p").status is OrderStatus.PARTIALLY_FILLED
    ev = step(e, c.tick("102", "103", volume="5"))
    assert [(f.qty, f.price) for f in fills(ev)] == [(D("0.2"), D("103"))]
    final = e.order_state("p")
    assert final.status is OrderStatus.FILLED
    assert final.avg_price == (D("0.3") * 101 + D("0.5") * 102 + D("0.2") * 103) / 1
    assert e.open_orders() == []
    assert e.tracker.qty("BTC-USDT") == 1


def test_top_of_book_size_is_shared_in_time_priority() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101", volume="0"))
    e.place(order("first", "buy", "market", "1"))
    e.place(order("second", "buy", "market", "1"))
    e.place(order("seller", "sell", "market", "0.5"))
    ev = step(e, c.tick("100", "101", volume="1.5"))
    got = [(f.client_order_id, f.qty) for f in fills(ev)]
    assert got == [("first", D("1")), ("second", D("0.5")), ("seller", D("0.5"))]


def test_resting_limit_fills_at_limit_as_maker() -> None:
    c, e = Clock(), engine(slippage_bps=D(5))
    e.on_tick(c.tick("100", "101"))
    state = e.place(order("l", "buy", "limit", "2", "99.5"))
    assert state.status is OrderStatus.NEW
    assert fills(step(e, c.tick("99.6", "99.7"))) == []
    ev = step(e, c.tick("98", "99", volume="1.5"))
    (f,) = fills(ev)
    assert (f.qty, f.price, f.liquidity) == (D("1.5"), D("99.5"), "maker")
    assert f.fee == D("1.5") * D("99.5") * D("0.0002")
    (f,) = fills(step(e, c.tick("98", "99")))
    assert f.qty == D("0.5")
    assert e.order_state("l").status is OrderStatus.FILLED


def test_marketable_limit_takes_but_never_beyond_its_price() -> None:
    c, e = Clock(), engine(slippage_bps=D(100))
    e.on_tick(c.tick("100", "101"))
    state = e.place(order("m", "buy", "limit", "1", "101.5"))
    # 101 * 1.01 = 102.01 is past the limit: executes at the limit instead.
    assert state.status is OrderStatus.FILLED
    assert state.avg_price == D("101.5")
    assert e.fills()[0].liquidity == "taker"


def test_stop_loss_triggers_on_bid_and_executes_as_market() -> None:
    c, e = Clock(), engine(slippage_bps=D(1))
    e.on_tick(c.tick("100.00", "100.10"))
    e.place(order("entry", "buy", "market", "1"))
    e.place(order("stop", "sell", "stop_loss", "1", "95", reduce_only=True))
    assert fills(step(e, c.tick("95.01", "95.05"))) == []
    ev = step(e, c.tick("94.00", "94.10"))
    (f,) = fills(ev)
    assert f.client_order_id == "stop"
    assert f.price == round_price(D("94.00") * D("0.9999"), D("0.01")) == D("93.99")
    assert f.liquidity == "taker"
    assert e.tracker.qty("BTC-USDT") == 0


def test_buy_stop_triggers_on_ask() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    e.place(order("short", "sell", "market", "1"))
    e.place(order("stop", "buy", "stop_loss", "1", "105"))
    assert fills(step(e, c.tick("103", "104.99"))) == []
    (f,) = fills(step(e, c.tick("104", "105")))
    assert f.price == D("105")


def test_take_profit_triggers_beyond_the_target() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    e.place(order("entry", "buy", "market", "1"))
    e.place(order("tp", "sell", "take_profit", "1", "110", reduce_only=True))
    assert fills(step(e, c.tick("109.99", "110.5"))) == []
    (f,) = fills(step(e, c.tick("110.2", "110.3")))
    assert f.price == D("110.2")
    assert e.tracker.realized_pnl == D("110.2") - D("101")


@pytest.mark.parametrize(
    ("side", "kind", "price"),
    [
        ("sell", "stop_loss", "100"),  # at the bid: would trigger at once
        ("sell", "stop_loss", "100.5"),
        ("buy", "stop_loss", "101"),  # at the ask
        ("buy", "stop_loss", "99"),
        ("sell", "take_profit", "99"),
        ("buy", "take_profit", "102"),
    ],
)
def test_stop_or_target_on_the_wrong_side_is_refused(side: str, kind: str, price: str) -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    with pytest.raises(InvalidOrder, match="would trigger at once"):
        e.place(order("x", side, kind, "1", price))
    assert e.open_orders() == []


def test_bracket_legs_follow_the_entry_and_cancel_each_other() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101", volume="0.4"))
    e.place(order("b", "buy", "market", "1", stop_loss=D("95"), take_profit=D("110")))
    legs = {s.order.client_order_id: s for s in e.open_orders() if s.order.reduce_only}
    assert set(legs) == {"b.sl", "b.tp"}
    assert legs["b.sl"].order.qty == D("0.4")  # only what has filled so far
    e.on_tick(c.tick("100", "101", volume="5"))
    legs = {s.order.client_order_id: s for s in e.open_orders()}
    assert legs["b.sl"].order.qty == 1
    assert legs["b.tp"].order.qty == 1
    ev = step(e, c.tick("111", "112"))
    (f,) = fills(ev)
    assert f.client_order_id == "b.tp"
    assert e.order_state("b.sl").status is OrderStatus.CANCELED
    assert e.order_state("b.sl").reason == "position closed"
    assert e.open_orders() == []


def test_bracket_levels_on_the_wrong_side_are_refused() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    with pytest.raises(InvalidOrder, match="stop_loss"):
        e.place(order("b", "buy", "market", "1", stop_loss=D("102")))
    with pytest.raises(InvalidOrder, match="take_profit"):
        e.place(order("s", "sell", "limit", "1", "100", take_profit=D("100.5")))


def test_reduce_only_never_opens() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    e.place(order("long", "buy", "market", "1"))
    state = e.place(order("ro", "sell", "market", "3", reduce_only=True))
    assert state.filled_qty == 1
    assert e.tracker.qty("BTC-USDT") == 0
    assert e.order_state("ro").status is OrderStatus.CANCELED


def test_margin_is_reserved_and_insufficient_funds_refused() -> None:
    c, e = Clock(), engine(balance=D("1000"))
    e.on_tick(c.tick("50000", "50000"))
    with pytest.raises(InsufficientFunds, match="needs"):
        e.place(order("big", "buy", "market", "0.1"))  # 5000 of margin at leverage 1
    state = e.place(order("lev", "buy", "market", "0.1", leverage=D(10)))
    assert state.status is OrderStatus.FILLED
    bal = e.balance()
    fee = D("0.1") * 50000 * D("0.0004")
    assert bal.used == D("500")
    assert bal.total == D("1000") - fee
    assert bal.free == bal.total - bal.used
    # A resting limit reserves its margin too.
    e.place(order("rest", "buy", "limit", "0.08", "49000", leverage=D(10)))
    assert e.balance().used == D("500") + D("0.08") * 49000 / 10
    with pytest.raises(InsufficientFunds):
        # free = 998 - 500 - 392 = 106; this needs 150 + 0.6 fee
        e.place(order("more", "buy", "market", "0.03", leverage=D(10)))
    # Closing needs no margin even when free margin is short.
    assert e.place(order("close", "sell", "market", "0.1")).status is OrderStatus.FILLED


def test_leverage_above_the_maximum_is_refused() -> None:
    c, e = Clock(), engine(max_leverage=D(20))
    e.on_tick(c.tick("100", "101"))
    with pytest.raises(InvalidOrder, match="leverage"):
        e.place(order("x", "buy", "market", "1", leverage=D(25)))


def test_resting_order_cancelled_when_margin_is_gone_at_fill_time() -> None:
    c, e = Clock(), engine(balance=D("1000"))
    e.on_tick(c.tick("100", "100"))
    e.on_tick(c.tick("100", "100", symbol="ETH-USDT"))
    e.place(order("l", "buy", "limit", "9", "99"))  # 891 reserved
    # Cross margin: an isolated short would be liquidated at about 199, losing
    # its 50 of collateral and no more.
    e.set_margin_mode("ETH-USDT", "cross")
    e.place(order("s", "sell", "market", "0.5", symbol="ETH-USDT"))  # a short: 50 margin
    # The short loses 400: equity falls below what the limit needs.
    e.on_tick(c.tick("900", "900", symbol="ETH-USDT"))
    ev = step(e, c.tick("98", "99"))
    assert fills(ev) == []
    state = e.order_state("l")
    assert (state.status, state.reason) == (OrderStatus.CANCELED, "insufficient margin")


def test_client_order_id_is_idempotent() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    o = order("same", "buy", "market", "1")
    first = e.place(o)
    again = e.place(o)
    assert first == again
    assert len(e.fills()) == 1
    assert e.tracker.qty("BTC-USDT") == 1
    with pytest.raises(InvalidOrder, match="already used"):
        e.place(order("same", "buy", "market", "2"))


def test_cancel_semantics() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    with pytest.raises(OrderNotFound):
        e.cancel("nope")
    e.place(order("lim", "buy", "limit", "1", "90"))
    with pytest.raises(OrderNotFound):
        e.cancel("lim", "ETH-USDT")  # right id, wrong symbol
    state = e.cancel("lim", "BTC-USDT")
    assert state.status is OrderStatus.CANCELED
    assert e.open_orders() == []
    assert e.drain()[-1] == state
    with pytest.raises(InvalidOrder, match="canceled"):
        e.cancel("lim")
    e.place(order("mkt", "buy", "market", "1"))
    with pytest.raises(InvalidOrder, match="filled"):
        e.cancel("mkt")
    # A cancelled limit no longer fills.
    assert fills(step(e, c.tick("80", "81"))) == []


def test_bad_orders_are_refused_and_quantities_rounded() -> None:
    c, e = Clock(), engine()
    with pytest.raises(InvalidOrder, match="no market data"):
        e.place(order("early", "buy", "market", "1"))
    e.on_tick(c.tick("100", "101"))
    with pytest.raises(InvalidOrder, match="unknown symbol"):
        e.place(order("u", "buy", "market", "1", symbol="DOGE-EUR"))
    with pytest.raises(InvalidOrder, match="below the minimum"):
        e.place(order("tiny", "buy", "market", "0.00009"))
    state = e.place(order("r", "buy", "limit", "0.00019", "90.005"))
    assert state.order.qty == D("0.0001")  # rounded down
    assert state.order.price == D("90.00")  # half-even
    assert e.place(order("r2", "buy", "limit", "1", "90.015")).order.price == D("90.02")


def test_rounding_helpers() -> None:
    assert round_qty(D("1.23456"), D("0.001")) == D("1.234")
    assert round_qty(D("7"), D("5")) == D("5")
    assert round_price(D("10.25"), D("0.5")) == D("10.0")  # 20.5 steps -> 20, half-even
    assert round_price(D("10.75"), D("0.5")) == D("11.0")


def test_pnl_cash_equation_over_a_round_trip() -> None:
    c, e = Clock(), engine(balance=D("10000"), slippage_bps=D(1))
    start = e.tracker.cash
    e.on_tick(c.tick("100.00", "100.02"))
    e.place(order("o1", "buy", "market", "10"))
    e.on_tick(c.tick("105.00", "105.02"))
    e.place(order("o2", "sell", "market", "4"))
    e.place(order("o3", "sell", "market", "10"))  # flips to a 4 short
    e.on_tick(c.tick("95.00", "95.02"))
    assert e.tracker.unrealized_pnl() == (e.tracker.cost("BTC-USDT") / -4 - D("95.01")) * 4
    e.place(order("o4", "buy", "market", "4"))
    all_fills = e.fills()
    fee_sum = sum((f.fee for f in all_fills), D(0))
    flow = sum((f.qty * f.price * (-f.side.sign) for f in all_fills), D(0))
    assert e.tracker.qty("BTC-USDT") == 0
    assert e.tracker.fees == fee_sum
    assert e.tracker.realized_pnl == flow
    assert e.tracker.cash == start + e.tracker.realized_pnl - e.tracker.fees
    assert e.balance().total == e.tracker.cash
    assert e.positions() == []


def test_unconfigured_symbols_are_inferred_from_the_feed() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("101.123", "101.125", symbol="SOL-USDT"))
    market = e.markets["SOL-USDT"]
    assert market.price_increment == D("0.001")
    assert market.quote_currency == "USDT"
    assert e.place(order("s", "buy", "market", "1", symbol="SOL-USDT")).status is OrderStatus.FILLED
    fixed = PaperEngine({}, balance=D(1000))
    fixed.on_tick(c.tick("1", "2", symbol="SOL-USDT"))
    with pytest.raises(InvalidOrder, match="unknown symbol"):
        fixed.place(order("s", "buy", "market", "1", symbol="SOL-USDT"))


def test_fills_since_and_open_orders_oldest_first() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    e.place(order("a", "buy", "limit", "1", "90"))
    e.place(order("b", "buy", "limit", "1", "2990", symbol="ETH-USDT"))
    e.place(order("c", "buy", "limit", "1", "91"))
    assert [s.order.client_order_id for s in e.open_orders()] == ["a", "b", "c"]
    assert [s.order.client_order_id for s in e.open_orders("BTC-USDT")] == ["a", "c"]
    e.place(order("m1", "buy", "market", "1"))
    cut = c.t + timedelta(seconds=1)
    e.on_tick(c.tick("100", "101"))
    e.place(order("m2", "buy", "market", "1"))
    assert [f.client_order_id for f in e.fills(since=cut)] == ["m2"]
    assert len(e.fills()) == 2


def test_memory_does_not_grow_per_tick() -> None:
    c, e = Clock(), engine()
    e.on_tick(c.tick("100", "101"))
    e.place(order("rest", "buy", "limit", "1", "50"))
    for _ in range(500):
        e.on_tick(c.tick("100", "101"))
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(5000):
            e.on_tick(c.tick("100", "101"))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(
        s.size_diff for s in after.compare_to(before, "filename") if "bot4" in str(s.traceback)
    )
    assert grown < 20_000, grown


def test_attached_exits_never_outgrow_the_position() -> None:
    # Entries attach exits for their own size; after a partial close the
    # oldest exits beyond the position are cancelled, so the open book stays
    # bounded however many entries and exits a session makes.
    e = engine()
    clock = Clock()
    e.on_tick(clock.tick("50000", "50001"))
    for i in range(50):
        e.place(
            order(f"b{i}", "buy", "market", "0.01", stop_loss=D("45000"), take_profit=D("60000"))
        )
        e.place(order(f"s{i}", "sell", "market", "0.01"))
        e.on_tick(clock.tick("50000", "50001"))
    e.place(order("last", "buy", "market", "0.01", stop_loss=D("46000"), take_profit=D("61000")))
    e.on_tick(clock.tick("50000", "50001"))
    assert e.tracker.qty("BTC-USDT") == D("0.01")
    exits = e.open_orders("BTC-USDT")
    assert sorted((o.order.type.value, o.order.price) for o in exits) == [
        ("stop_loss", D("46000")),
        ("take_profit", D("61000")),
    ]
    assert all(o.order.qty == D("0.01") for o in exits)


def test_exits_left_from_a_long_are_cancelled_when_it_flips_short() -> None:
    e = engine()
    clock = Clock()
    e.on_tick(clock.tick("50000", "50001"))
    e.place(order("long", "buy", "market", "0.01", stop_loss=D("45000")))
    e.place(order("flip", "sell", "market", "0.03", stop_loss=D("55000")))
    e.on_tick(clock.tick("50000", "50001"))
    exits = e.open_orders("BTC-USDT")
    assert [(o.order.side.value, o.order.price, o.order.qty) for o in exits] == [
        ("buy", D("55000"), D("0.02"))
    ]


def test_history_is_bounded_but_open_orders_are_kept() -> None:
    e = engine(history=5)
    clock = Clock()
    e.on_tick(clock.tick("50000", "50001"))
    e.place(order("rest", "buy", "limit", "0.01", "40000"))
    for i in range(20):
        e.place(order(f"m{i}", "buy" if i % 2 == 0 else "sell", "market", "0.01"))
    assert len(e.fills()) == 5
    assert [f.client_order_id for f in e.fills()] == [f"m{i}" for i in range(15, 20)]
    assert e.order_state("rest").status is OrderStatus.NEW
    assert e.order_state("m19").status is OrderStatus.FILLED
    with pytest.raises(OrderNotFound):
        e.order_state("m0")
