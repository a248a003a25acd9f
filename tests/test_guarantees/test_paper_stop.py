"""On the paper venue a position has exactly one protective stop, of its full size.

With attached exits (the default session's protection), every entry that
opens or grows a position with a ``stop_loss`` protects the *whole* position
with one reduce-only stop: the first entry creates it, later ones move it to
their level and every fill resizes it, rather than one stop created and another
cancelled per entry. Random sequences of entries (with and without levels,
adding, reducing, flipping), reduce-only partial exits and price moves that
fire the stops check after every step: flat means no exit order; a position
opened by an entry with a stop has exactly one open STOP_LOSS, on the closing
side, for exactly its size, at the latest such entry's level; at most one
take profit likewise; and an entry costs at most one order update per leg.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot4_paper import PaperEngine
from bot4_paper.durable import DurableEngine
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.errors import InvalidOrder
from bot4.model import MarketData, Order, OrderState, OrderType, Side

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOL = "BTC-USDT"


class Scenario:
    def __init__(self) -> None:
        self.engine = PaperEngine(balance=D(10**9), slippage_bps=D(0))
        self.n = 0
        self.bid = D(50000)
        self.stop: Decimal | None = None  # the level that must protect the position
        self.take: Decimal | None = None
        self.tick()

    def tick(self, move: int = 0) -> None:
        self.n += 1
        self.bid += move
        self.engine.on_tick(
            MarketData(
                symbol=SYMBOL,
                exchange="paper",
                bid=self.bid,
                ask=self.bid + 1,
                last=self.bid,
                volume=D(1000),
                timestamp=T0 + timedelta(seconds=self.n),
            )
        )
        self.engine.drain()
        if self.qty == 0:
            self.stop = self.take = None

    @property
    def qty(self) -> Decimal:
        return self.engine.tracker.qty(SYMBOL)

    def order(
        self,
        side: Side,
        qty: Decimal,
        *,
        stop: int | None = None,
        take: int | None = None,
        reduce_only: bool = False,
    ) -> list[OrderState]:
        """A market order; ``stop``/``take`` in dollars from the touch."""
        self.n += 1
        sign = side.sign
        ref = self.bid + 1 if side is Side.BUY else self.bid
        before = self.qty
        try:
            self.engine.place(
                Order(
                    client_order_id=f"o{self.n}",
                    symbol=SYMBOL,
                    side=side,
                    type=OrderType.MARKET,
                    qty=qty,
                    stop_loss=None if stop is None else ref - sign * stop,
                    take_profit=None if take is None else ref + sign * take,
                    reduce_only=reduce_only,
                )
            )
        except InvalidOrder:
            return []
        events = self.engine.drain()
        after = self.qty
        opened = after != 0 and (
            before == 0 or (after > 0) != (before > 0) or abs(after) > abs(before)
        )
        flipped = before != 0 and after != 0 and (after > 0) != (before > 0)
        if after == 0:
            self.stop = self.take = None
        elif flipped:
            self.stop = None if stop is None else ref - sign * stop
            self.take = None if take is None else ref + sign * take
        elif opened:
            if stop is not None:
                self.stop = ref - sign * stop
            if take is not None:
                self.take = ref + sign * take
        return [e for e in events if isinstance(e, OrderState) and e.order.reduce_only]

    def check(self) -> None:
        exits = [s for s in self.engine.open_orders(SYMBOL) if s.order.reduce_only]
        qty = self.qty
        if qty == 0:
            assert exits == [], "a flat position keeps exit orders"
            return
        closing = Side.SELL if qty > 0 else Side.BUY
        for kind, level in ((OrderType.STOP_LOSS, self.stop), (OrderType.TAKE_PROFIT, self.take)):
            legs = [s for s in exits if s.order.type is kind]
            if level is None:
                assert legs == [], f"{kind.value} without an entry that set one"
                continue
            assert len(legs) == 1, f"{len(legs)} {kind.value} orders protect one position"
            (leg,) = legs
            assert leg.order.side is closing
            assert leg.order.qty - leg.filled_qty == abs(qty), "the stop is not of the full size"
            assert leg.order.price == level, "the stop is not at the latest entry's level"


step = st.one_of(
    st.tuples(st.just("tick"), st.integers(-40, 40)),
    st.tuples(
        st.just("entry"),
        st.sampled_from([Side.BUY, Side.SELL]),
        st.sampled_from([D("0.01"), D("0.02"), D("0.05"), D("0.1")]),
        st.one_of(st.none(), st.integers(2, 60)),
        st.one_of(st.none(), st.integers(2, 60)),
    ),
    st.tuples(st.just("exit"), st.sampled_from([D("0.01"), D("0.03"), D("1")])),
)


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(step, max_size=40))
def test_a_position_has_exactly_one_stop_of_its_full_size_after_every_step(
    steps: list[tuple[object, ...]],
) -> None:
    s = Scenario()
    for item in steps:
        if item[0] == "tick":
            move = item[1]
            assert isinstance(move, int)
            s.tick(move)
        elif item[0] == "entry":
            _, side, qty, stop, take = item
            assert isinstance(side, Side)
            assert isinstance(qty, Decimal)
            assert stop is None or isinstance(stop, int)
            assert take is None or isinstance(take, int)
            before = s.qty
            updates = s.order(side, qty, stop=stop, take=take)
            if before != 0 and s.qty != 0 and (s.qty > 0) == (before > 0):
                # Adding to or reducing a position: each leg is resized or
                # moved in place, never one created and another cancelled.
                assert len(updates) <= 2
                assert all(u.status.is_open for u in updates)
        else:
            qty = item[1]
            assert isinstance(qty, Decimal)
            if s.qty:
                s.order(Side.SELL if s.qty > 0 else Side.BUY, qty, reduce_only=True)
        s.check()


def test_adding_to_a_position_moves_and_resizes_its_one_stop() -> None:
    s = Scenario()
    s.order(Side.BUY, D("0.01"), stop=100)
    (first,) = [o for o in s.engine.open_orders(SYMBOL) if o.order.reduce_only]
    updates = s.order(Side.BUY, D("0.02"), stop=50)
    assert [u.order.client_order_id for u in updates] == [first.order.client_order_id]
    (stop,) = [o for o in s.engine.open_orders(SYMBOL) if o.order.reduce_only]
    assert stop.order.client_order_id == first.order.client_order_id
    assert (stop.order.qty, stop.order.price) == (D("0.03"), D(50001) - 50)
    s.tick(-60)  # through the stop: the whole position goes at once
    assert s.qty == 0
    assert s.engine.open_orders(SYMBOL) == []


def test_a_restored_paper_account_keeps_resizing_the_same_stop(tmp_path: Path) -> None:
    """After a restart from the state file, the next entry moves and resizes
    the position's stop; no second one appears."""
    path = tmp_path / "paper.sqlite"
    tick = MarketData(
        symbol=SYMBOL,
        exchange="paper",
        bid=D(50000),
        ask=D(50001),
        last=D(50000),
        volume=D(1000),
        timestamp=T0,
    )

    def entry(n: int, stop: Decimal) -> Order:
        return Order(f"e{n}", SYMBOL, Side.BUY, OrderType.MARKET, D("0.01"), stop_loss=stop)

    first = DurableEngine(path, balance=D(10**6))
    try:
        first.on_tick(tick)
        first.place(entry(1, D(49900)))
    finally:
        first.close()
    again = DurableEngine(path, balance=D(10**6))
    try:
        again.place(entry(2, D(49950)))
        exits = [s for s in again.open_orders(SYMBOL) if s.order.reduce_only]
        assert [(s.order.client_order_id, s.order.qty, s.order.price) for s in exits] == [
            ("e1.sl", D("0.02"), D(49950))
        ]
    finally:
        again.close()
