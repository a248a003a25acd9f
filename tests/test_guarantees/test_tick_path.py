"""The synchronous tick path (issue 13): ``Bus.post`` routes like ``publish``
without a coroutine unless it must wait, builds no envelope for a topic no
subscriber matches, and keeps every backpressure policy; the kernel's tick
uses it and keeps its event times exact in integer nanoseconds."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bot4_correlation
import bot4_paper
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from bot4.bus import Backpressure, Bus, Event, open_bus
from bot4.contracts import Strategy
from bot4.gate import RiskGate
from bot4.kernel import Kernel, _ns
from bot4.model import MarketData, RiskAction, Signal
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path

D = Decimal
T0 = datetime(2024, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)


class CountingClock:
    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return 1_000 * self.reads


# ------------------------------------------------------------------ Bus.post


@pytest.mark.trio
async def test_post_to_a_topic_nobody_matches_builds_nothing_but_advances_the_seq() -> None:
    clock = CountingClock()
    async with open_bus(clock=clock) as bus:
        assert bus.post("market.BTC-USDT", "tick") is None
        assert bus.last_seq == 1
        assert clock.reads == 0  # no envelope: not even its time was read
        got: list[Event] = []
        bus.subscribe("market.*", got.append)
        event = await bus.publish("market.BTC-USDT", "next")
        await bus.drain()
    assert event.seq == 2
    assert [(e.payload, e.seq) for e in got] == [("next", 2)]


@pytest.mark.trio
async def test_post_delivers_to_a_subscriber_added_after_the_topic_was_cached() -> None:
    async with open_bus() as bus:
        assert bus.post("market.ETH-USDT", "unseen", ts=5) is None  # caches "no subscriber"
        got: list[Event] = []
        bus.subscribe("market.#", got.append)
        assert bus.post("market.ETH-USDT", "seen", ts=6, correlation_id="c") is None
        await bus.drain()
    assert [(e.topic, e.payload, e.ts, e.seq, e.correlation_id) for e in got] == [
        ("market.ETH-USDT", "seen", 6, 2, "c")
    ]


@pytest.mark.trio
async def test_post_stops_delivering_after_unsubscribe() -> None:
    clock = CountingClock()
    async with open_bus(clock=clock) as bus:
        got: list[Event] = []
        sub = bus.subscribe("market.*", got.append)
        assert bus.post("market.BTC-USDT", 1) is None
        await bus.drain()
        sub.unsubscribe()
        reads = clock.reads
        assert bus.post("market.BTC-USDT", 2) is None
        assert clock.reads == reads  # the cached route was dropped: no envelope now
        await bus.drain()
    assert [e.payload for e in got] == [1]
    assert bus.last_seq == 2


@pytest.mark.trio
async def test_post_numbers_events_exactly_as_publish_does() -> None:
    async def run(use_post: bool) -> list[tuple[str, Any, int, int, str]]:
        got: list[Event] = []
        async with open_bus(clock=lambda: 7) as bus:
            bus.subscribe("a.#", got.append)
            bus.subscribe("b", got.append, policy=Backpressure.DROP_OLDEST, capacity=1)
            for i, topic in enumerate(["a.x", "nobody", "b", "a", "nobody.else", "b", "a.y"]):
                if use_post:
                    waiting = bus.post(topic, i)
                    assert waiting is None
                else:
                    await bus.publish(topic, i)
            await bus.drain()
        # Two delivery tasks: trio may run them in either order, so compare
        # by seq; correlation ids carry a per-bus prefix: compare the seq part.
        got.sort(key=lambda e: e.seq)
        return [(e.topic, e.payload, e.ts, e.seq, e.correlation_id.rsplit("-")[-1]) for e in got]

    assert await run(use_post=True) == await run(use_post=False)


@pytest.mark.trio
async def test_post_into_a_full_block_subscriber_waits_for_room_in_order() -> None:
    """A BLOCK subscriber with a full queue still paces the publisher: post
    hands back the wait; the subscriber before it already has the event, the
    one after it gets it only once there is room."""
    log: list[tuple[str, Any]] = []
    release = trio.Event()

    async def slow(event: Event) -> None:
        await release.wait()
        log.append(("slow", event.payload))

    async with open_bus() as bus:
        bus.subscribe("t", lambda e: log.append(("first", e.payload)), name="first")
        bus.subscribe("t", slow, policy=Backpressure.BLOCK, capacity=1, name="slow")
        bus.subscribe("t", lambda e: log.append(("last", e.payload)), name="last")
        assert bus.post("t", 1) is None
        await trio.testing.wait_all_tasks_blocked()  # slow now holds 1, queue empty
        assert bus.post("t", 2) is None  # fills slow's queue (capacity 1)
        waiting = bus.post("t", 3)
        assert waiting is not None
        await trio.testing.wait_all_tasks_blocked()
        assert ("first", 3) in log
        assert ("last", 3) not in log

        async def waiter(w: Awaitable[None]) -> None:
            await w
            log.append(("published", 3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, waiting)
            await trio.testing.wait_all_tasks_blocked()
            assert ("published", 3) not in log  # still blocked: no room yet
            release.set()
        await bus.drain()
    assert [p for who, p in log if who == "slow"] == [1, 2, 3]
    assert [p for who, p in log if who == "last"] == [1, 2, 3]
    assert log.index(("published", 3)) > log.index(("slow", 1))


@pytest.mark.trio
async def test_post_never_waits_for_drop_oldest_or_fail_subscribers() -> None:
    async with open_bus() as bus:
        bus.subscribe("t", lambda e: None, policy=Backpressure.DROP_OLDEST, capacity=1)
        failing = bus.subscribe("t", lambda e: None, policy=Backpressure.FAIL, capacity=1)
        errors: list[Event] = []
        bus.subscribe("bus.error", errors.append)
        for i in range(3):
            assert bus.post("t", i) is None  # no yield in between: queues overflow
        assert failing.closed
        assert failing.error is not None
        await bus.drain()
    assert len(errors) == 1


# -------------------------------------------------------------- the kernel


def feed(n: int, start: datetime = T0) -> list[MarketData]:
    p = D(50000)
    return [
        MarketData(
            symbol="BTC-USDT",
            exchange="paper",
            bid=p - D("0.5"),
            ask=p + D("0.5"),
            last=p,
            volume=D(5),
            timestamp=start + timedelta(seconds=i, microseconds=7 * i),
        )
        for i in range(n)
    ]


class Quiet(Strategy):
    name = "quiet"

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        return ()


def kernel_for(ticks: list[MarketData], bus: Bus, policy: RiskPolicy | None = None) -> Kernel:
    policy = policy or RiskPolicy.load([default_rules_path()], [bot4_correlation.factory({})])
    return Kernel(
        exchange=bot4_paper.create({"feed": ticks, "balance": "100000", "slippage_bps": "0"}),
        strategies=[Quiet()],
        gate=RiskGate(policy),
        policy=policy,
        tracker=PortfolioTracker(D(100000)),
        bus=bus,
    )


@pytest.mark.trio
async def test_a_tick_makes_no_publish_coroutine_when_nothing_waits() -> None:
    async with open_bus() as bus:
        calls: list[str] = []
        publish = bus.publish

        def counting(topic: str, *args: Any, **kwargs: Any) -> Any:
            calls.append(topic)
            return publish(topic, *args, **kwargs)

        bus.publish = counting  # type: ignore[method-assign]
        ticks = feed(5)
        got: list[Event] = []
        bus.subscribe("market.*", got.append)
        kernel = kernel_for(ticks, bus)
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    assert [c for c in calls if c.startswith("market.")] == []
    assert kernel.stats.ticks == 5
    assert [e.ts for e in got] == [
        int(t.timestamp.timestamp()) * 1_000_000_000 + t.timestamp.microsecond * 1000 for t in ticks
    ]


@pytest.mark.trio
async def test_a_full_block_subscriber_paces_the_kernels_ticks() -> None:
    """The synchronous tick path still waits for a recorder-like BLOCK
    subscriber: no market event is lost or reordered."""
    got: list[int] = []

    async def slow(event: Event) -> None:
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
        got.append(event.seq)

    async with open_bus() as bus:
        sub = bus.subscribe("market.#", slow, policy=Backpressure.BLOCK, capacity=1)
        kernel = kernel_for(feed(40), bus)
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    assert sub.dropped == 0
    assert len(got) == 40
    assert got == sorted(got)


@pytest.mark.trio
async def test_a_replaced_policy_gets_the_next_ticks() -> None:
    """The kernel looks the policy's tick hook up once per policy object, so
    replacing ``kernel.policy`` takes effect on the next tick."""
    seen: list[int] = []

    class Watching(RiskPolicy):
        def on_tracked_tick(self, tick: MarketData, tracker: Any, now_ns: int) -> list[RiskAction]:
            seen.append(now_ns)
            return []

    ticks = feed(4)

    class Swapper(Strategy):
        name = "swapper"

        def __init__(self) -> None:
            self.kernel: Kernel | None = None

        async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
            assert self.kernel is not None
            if tick is ticks[1]:
                self.kernel.policy = Watching.load(
                    [default_rules_path()], [bot4_correlation.factory({})]
                )
            return ()

    async with open_bus() as bus:
        kernel = kernel_for(ticks, bus)
        swapper = Swapper()
        swapper.kernel = kernel
        kernel.strategies = (swapper,)
        await kernel.run(["BTC-USDT"])
    assert seen == [_ns(t) for t in ticks[2:]]


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.just(UTC),
    )
)
def test_event_time_in_ns_is_exact(when: datetime) -> None:
    tick = feed(1, start=when)[0]
    micros = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert _ns(tick) == micros * 1000
    assert _ns(tick) == int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000
