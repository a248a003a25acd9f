"""The paper engine's trigger index changes the cost of a tick, not its outcome.

A tick matches only the orders its prices can execute (found through
``bot4_paper.triggers``), so a book of resting stops far from the price costs
nothing per tick; and on any mix of orders, cancels and price paths the engine
produces the same fills and order updates as the former full scan of every open
order in time priority.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot4_paper import PaperEngine
from bot4_paper.engine import EngineEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.errors import InsufficientFunds, InvalidOrder
from bot4.model import MarketData, Order, OrderType, Side

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)


class ScanningEngine(PaperEngine):
    """The engine with the tick handler it had before the index: every open
    order of the symbol, oldest first, through ``_match``."""

    def on_tick(self, tick: MarketData) -> list[EngineEvent]:
        symbol = tick.symbol
        if symbol not in self._markets and self._infer:
            raise AssertionError("the scenario configures its markets")
        self._last[symbol] = tick
        if self._now is None or tick.timestamp > self._now:
            self._now = tick.timestamp
        self._avail[symbol] = [tick.volume, tick.volume]
        self.tracker.on_market_data(tick)
        book = self._open.get(symbol)
        if book:
            for live in list(book.values()):
                if live.status.is_open:
                    self._match(live, tick, tick.timestamp, resting=True)
        return self.drain()


def _engines() -> tuple[PaperEngine, PaperEngine]:
    opts = {"balance": D(1_000_000), "slippage_bps": D(1)}
    return PaperEngine(**opts), ScanningEngine(**opts)  # type: ignore[arg-type]


def _tick(i: int, bid: Decimal, spread: Decimal, volume: Decimal) -> MarketData:
    return MarketData(
        symbol="BTC-USDT",
        exchange="paper",
        bid=bid,
        ask=bid + spread,
        last=bid,
        volume=volume,
        timestamp=T0 + timedelta(seconds=i),
    )


def _random_order(rng: random.Random, n: int, bid: Decimal) -> Order:
    kind = rng.choice(list(OrderType))
    # Prices on a whole-dollar grid near the market: equal trigger prices are common.
    price = None if kind is OrderType.MARKET else bid + rng.randint(-6, 6)
    bracket = kind is not OrderType.STOP_LOSS and rng.random() < 0.4
    side = rng.choice(list(Side))
    sign = side.sign
    return Order(
        client_order_id=f"o{n}",
        symbol="BTC-USDT",
        side=side,
        type=kind,
        qty=D(rng.choice(("0.5", "1", "2", "3"))),
        price=price,
        reduce_only=rng.random() < 0.2,
        stop_loss=(price or bid) - 10 * sign if bracket else None,
        take_profit=(price or bid) + 10 * sign if bracket and rng.random() < 0.5 else None,
    )


def _outcome(engine: PaperEngine, command: str, arg: object) -> object:
    """What ``engine.<command>(arg)`` returned or raised, and the events it made."""
    try:
        return ("ok", getattr(engine, command)(arg), engine.drain())
    except (InvalidOrder, InsufficientFunds) as exc:
        return (type(exc).__name__, str(exc), engine.drain())


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_index_matches_what_a_full_scan_matches(rng: random.Random) -> None:
    indexed, scanning = _engines()
    bid = D(1000)
    n = 0
    for i in range(80):
        bid += rng.randint(-3, 3)
        tick = _tick(i, bid, D(rng.choice((0, 1))), D(rng.choice(("1", "2.5", "10"))))
        assert indexed.on_tick(tick) == scanning.on_tick(tick), f"tick {i}"
        for _ in range(rng.randint(0, 3)):
            n += 1
            order = _random_order(rng, n, bid)
            assert _outcome(indexed, "place", order) == _outcome(scanning, "place", order)
        open_now = indexed.open_orders()
        assert open_now == scanning.open_orders()
        if open_now and rng.random() < 0.3:
            coid = rng.choice(open_now).order.client_order_id
            assert _outcome(indexed, "cancel", coid) == _outcome(scanning, "cancel", coid)
    assert indexed.fills() == scanning.fills()
    assert indexed.positions() == scanning.positions()
    assert indexed.balance() == scanning.balance()


def test_a_tick_matches_only_the_orders_it_can_execute() -> None:
    engine, _ = _engines()
    engine.on_tick(_tick(0, D(1000), D(1), D(100)))
    engine.place(Order("long", "BTC-USDT", Side.BUY, OrderType.MARKET, D(50)))
    # Two hundred resting exits far from the price, none of them due.
    for k in range(100):
        engine.place(
            Order(
                f"sl{k}",
                "BTC-USDT",
                Side.SELL,
                OrderType.STOP_LOSS,
                D("0.1"),
                price=D(900 - k),
                reduce_only=True,
            )
        )
        engine.place(
            Order(
                f"lim{k}",
                "BTC-USDT",
                Side.SELL,
                OrderType.LIMIT,
                D("0.1"),
                price=D(1100 + k),
                reduce_only=True,
            )
        )
    engine.drain()
    matched: list[str] = []
    original = engine._match

    def counting(live, tick, when, *, resting):  # type: ignore[no-untyped-def]
        matched.append(live.order.client_order_id)
        original(live, tick, when, resting=resting)

    engine._match = counting  # type: ignore[method-assign]
    for i in range(1, 50):
        assert engine.on_tick(_tick(i, D(1000) + i % 5, D(1), D(100))) == []
    assert matched == []
    # A tick through two stops' trigger prices matches those two only.
    events = engine.on_tick(_tick(50, D(899), D(1), D(100)))
    assert matched == ["sl0", "sl1"]
    assert [e.order.client_order_id for e in events if hasattr(e, "order")] == ["sl0", "sl1"]
