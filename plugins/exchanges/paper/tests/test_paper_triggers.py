"""The trigger index of the paper engine against a brute-force scan.

:class:`bot4_paper.triggers.TriggerIndex` must return, for any bid/ask, exactly
the open orders whose price test the tick passes (plus the active ones), oldest
first, whatever was added, triggered or removed before, equal prices included.
"""

from __future__ import annotations

import random
from decimal import Decimal

import attrs
from bot4_paper.triggers import TriggerIndex
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.model import Order, OrderType, Side

D = Decimal


@attrs.define(eq=False)
class _Rec:
    seq: int
    order: Order
    triggered: bool = False


def _fires(rec: _Rec, bid: Decimal, ask: Decimal) -> bool:
    """The engine's own price tests, written out once more."""
    order = rec.order
    if order.type is OrderType.MARKET or rec.triggered:
        return True
    assert order.price is not None
    buy = order.side is Side.BUY
    if order.type is OrderType.STOP_LOSS:
        return ask >= order.price if buy else bid <= order.price
    # TAKE_PROFIT and a resting LIMIT share the test.
    return ask <= order.price if buy else bid >= order.price


def _random_order(rng: random.Random, seq: int) -> Order:
    kind = rng.choice(list(OrderType))
    return Order(
        client_order_id=f"o{seq}",
        symbol="BTC-USDT",
        side=rng.choice(list(Side)),
        type=kind,
        qty=D(1),
        # A coarse grid, so that many orders share a price and ticks land on them.
        price=None if kind is OrderType.MARKET else D(rng.randint(95, 105)),
    )


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False))
def test_due_orders_are_those_a_full_scan_finds(rng: random.Random) -> None:
    index: TriggerIndex[_Rec] = TriggerIndex()
    live: dict[int, _Rec] = {}
    seq = 0
    for _step in range(60):
        for _ in range(rng.randint(0, 3)):
            seq += 1
            rec = _Rec(seq, _random_order(rng, seq))
            live[seq] = rec
            index.add(rec)
        if live and rng.random() < 0.3:
            gone = live.pop(rng.choice(list(live)))
            index.remove(gone)
            index.remove(gone)  # closing twice is harmless
        bid = D(rng.randint(94, 106))
        ask = bid + rng.choice((D(0), D(1)))
        expected = [r for s, r in sorted(live.items()) if _fires(r, bid, ask)]
        assert index.due(bid, ask) == expected
        assert set(index.orders) == set(live)
        # A stop or take-profit that fired executes on every later tick.
        for rec in expected:
            stop_or_tp = rec.order.type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT)
            if stop_or_tp and not rec.triggered and rng.random() < 0.5:
                rec.triggered = True
                index.trigger(rec)


def test_equal_prices_keep_time_priority() -> None:
    index: TriggerIndex[_Rec] = TriggerIndex()
    recs = [
        _Rec(seq, Order(f"s{seq}", "BTC-USDT", Side.SELL, OrderType.STOP_LOSS, D(1), price=D(100)))
        for seq in (5, 2, 9, 7)
    ]
    for rec in recs:
        index.add(rec)
    assert [r.seq for r in index.due(D(100), D(101))] == [2, 5, 7, 9]
    assert index.due(D("100.01"), D("100.02")) == []
    index.remove(recs[0])
    assert [r.seq for r in index.due(D(99), D(99))] == [2, 7, 9]


def test_an_empty_index_has_nothing_due() -> None:
    index: TriggerIndex[_Rec] = TriggerIndex()
    assert not index.orders
    assert index.due(D(1), D(2)) == []
