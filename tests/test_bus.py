"""Tests for bot4.bus: routing, filters, ordering, backpressure, errors,
correlation ids, shutdown and replay.  Determinism comes from ``bus.drain()``
and ``trio.testing.wait_all_tasks_blocked()``, never from timing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot4.bus import (
    BUS_ERROR,
    Backpressure,
    Bus,
    BusClosed,
    BusError,
    BusErrorInfo,
    Event,
    EventRecorder,
    SubscriberFailed,
    WouldBlock,
    open_bus,
    replay,
    topic_matches,
)
from bot4.errors import Bot4Error

HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    database=None,  # keep the shared tree free of .hypothesis/ files
    suppress_health_check=[HealthCheck.too_slow],
)


def counter_clock() -> Any:
    """A deterministic clock: 1000, 2000, 3000, ... ns."""
    state = {"t": 0}

    def clock() -> int:
        state["t"] += 1000
        return state["t"]

    return clock


def collector(into: list[Event]) -> Any:
    async def handler(event: Event) -> None:
        into.append(event)

    return handler


async def drains(bus: Bus) -> bool:
    """Whether ``bus.drain()`` finishes before every task is blocked.

    Turns a deadlock into a failed assertion instead of a hung test run.
    """
    done = False

    async def drain() -> None:
        nonlocal done
        await bus.drain()
        done = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return done


def bus_tasks() -> list[trio.lowlevel.Task]:
    """Every live task whose name marks it as a bus delivery task."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        if task.name.startswith("bus-deliver:"):
            found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


# ------------------------------------------------------------------ matching


def oracle(pattern: str, topic: str) -> bool:
    """Independent matcher: plain recursion over the segment lists."""

    def rec(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == "#":
            return True  # '#' is only ever last: swallows whatever is left
        if not t:
            return False
        return (p[0] == "*" or p[0] == t[0]) and rec(p[1:], t[1:])

    return rec(pattern.split("."), topic.split("."))


SEGMENT = st.sampled_from(["a", "b", "BTC-USDT"])
TOPICS = st.lists(SEGMENT, min_size=1, max_size=5).map(".".join)
PATTERNS = st.builds(
    lambda body, tail: ".".join(body + (["#"] if tail else [])),
    st.lists(st.one_of(SEGMENT, st.just("*")), min_size=0, max_size=5),
    st.booleans(),
).filter(bool)


@HYPOTHESIS
@given(PATTERNS, TOPICS)
def test_matcher_agrees_with_oracle(pattern: str, topic: str) -> None:
    assert topic_matches(pattern, topic) == oracle(pattern, topic)


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("order.*", "order.new", True),
        ("order.*", "order", False),
        ("order.*", "order.new.limit", False),
        ("order.#", "order", True),
        ("order.#", "order.new.limit", True),
        ("order.#", "orders.new", False),
        ("#", "anything.at.all", True),
        ("*.new", "order.new", True),
        ("*.*", "a", False),
        ("market.BTC-USDT", "market.BTC-USDT", True),
        ("market.BTC-USDT", "market.ETH-USDT", False),
    ],
)
def test_matcher_examples(pattern: str, topic: str, expected: bool) -> None:
    assert topic_matches(pattern, topic) is expected


@pytest.mark.parametrize(
    "pattern", ["", "a..b", ".a", "a.", "a.#.b", "#.a", "a b", "a*", "a.b#", " a"]
)
def test_invalid_patterns_raise_value_error_naming_them(pattern: str) -> None:
    with pytest.raises(ValueError, match="invalid pattern") as info:
        topic_matches(pattern, "a")
    assert repr(pattern) in str(info.value)


@pytest.mark.trio
@pytest.mark.parametrize("topic", ["", "a..b", "a.*", "a.#", "a\tb", "order. new"])
async def test_invalid_topics_raise_value_error_naming_them(topic: str) -> None:
    async with open_bus() as bus:
        with pytest.raises(ValueError, match="invalid topic") as info:
            await bus.publish(topic, 1)
        assert repr(topic) in str(info.value)
        with pytest.raises(ValueError, match="invalid topic"):
            bus.publish_nowait(topic, 1)
        with pytest.raises(ValueError, match="invalid pattern"):
            bus.subscribe("a..b", collector([]))
        assert bus.last_seq == 0  # a refused topic consumes no seq


# ------------------------------------------------------------------- routing


@pytest.mark.trio
async def test_routing_with_wildcards_and_cache_invalidation() -> None:
    async with open_bus() as bus:
        got: dict[str, list[Event]] = {p: [] for p in ["order.*", "order.#", "#", "*.new"]}
        for pattern, into in got.items():
            bus.subscribe(pattern, collector(into), name=pattern)
        topics = ["order.new", "order", "order.new.limit", "market.BTC-USDT", "risk.new"]
        for topic in topics:
            await bus.publish(topic, topic)
        await bus.drain()
        for pattern, into in got.items():
            expected = [t for t in topics if oracle(pattern, t)]
            assert [e.topic for e in into] == expected, pattern

        # A subscription added after "order.new" was cached still gets it...
        late: list[Event] = []
        late_sub = bus.subscribe("order.new", collector(late))
        await bus.publish("order.new", 1)
        await bus.drain()
        assert [e.payload for e in late] == [1]
        # ...and an unsubscribed one stops getting it.
        late_sub.unsubscribe()
        late_sub.unsubscribe()  # idempotent
        await bus.publish("order.new", 2)
        await bus.drain()
        assert [e.payload for e in late] == [1]
        assert late_sub.closed


@pytest.mark.trio
async def test_filter_rejected_events_are_not_queued() -> None:
    async with open_bus() as bus:
        got: list[Event] = []
        sub = bus.subscribe("tick.*", collector(got), filter=lambda e: e.payload % 2 == 0)
        for i in range(6):
            await bus.publish("tick.x", i)
        assert sub.queued == 3  # the odd ones never entered the queue
        await bus.drain()
        assert [e.payload for e in got] == [0, 2, 4]
        assert sub.delivered == 3


@pytest.mark.trio
async def test_routing_an_already_seen_topic_does_not_match_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bot4.bus as bus_module

    calls: list[str] = []
    real_match = bus_module._match

    def counting_match(fixed: tuple[str, ...], tail: bool, segments: list[str]) -> bool:
        calls.append(".".join(segments))
        return real_match(fixed, tail, segments)

    monkeypatch.setattr(bus_module, "_match", counting_match)
    async with open_bus() as bus:
        bus.subscribe("a.*", collector([]))
        bus.subscribe("#", collector([]))
        await bus.publish("a.b", 1)
        assert calls == ["a.b", "a.b"]
        for topic in ["a.b", "c", "a.b", "c"]:
            await bus.publish(topic, 1)
        await bus.publish_batch([("a.b", 1), ("c", 1)])
        bus.publish_nowait("a.b", 1)
        assert calls == ["a.b", "a.b", "c", "c"]
        bus.subscribe("c", collector([]))  # invalidates the cache
        await bus.publish("a.b", 1)
        assert calls[4:] == ["a.b"] * 3


@pytest.mark.trio
async def test_filter_runs_once_per_event_even_when_nowait_checks_block() -> None:
    async with open_bus() as bus:
        seen: list[int] = []

        def odd_only(event: Event) -> bool:
            seen.append(event.seq)
            return bool(event.payload % 2 == 1)

        bus.subscribe("t", collector([]), filter=odd_only, capacity=1)
        bus.publish_nowait("t", 1)  # fills the BLOCK queue
        bus.publish_nowait("t", 2)  # rejected by the filter: no WouldBlock
        with pytest.raises(WouldBlock):
            bus.publish_nowait("t", 3)
        assert seen == [1, 2, 3]


@pytest.mark.trio
async def test_sync_and_async_handlers() -> None:
    async with open_bus() as bus:
        sync_got: list[int] = []
        async_got: list[int] = []

        async def slow(event: Event) -> None:
            await trio.lowlevel.checkpoint()
            async_got.append(event.payload)

        bus.subscribe("t", lambda e: sync_got.append(e.payload))
        bus.subscribe("t", slow)
        await bus.publish_batch([("t", i) for i in range(5)])
        await bus.drain()
        assert sync_got == async_got == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ ordering

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["a.x", "a.y", "b.x"])),
        st.tuples(st.just("nowait"), st.sampled_from(["a.x", "a.y", "b.x"])),
        st.tuples(st.just("batch"), st.integers(min_value=1, max_value=12)),
        st.tuples(st.just("yield"), st.just("")),
    ),
    max_size=40,
)


@HYPOTHESIS
@given(OPS, st.integers(min_value=1, max_value=5))
def test_every_subscriber_sees_its_events_in_publish_order(
    ops: list[tuple[str, Any]], capacity: int
) -> None:
    async def main() -> None:
        # Virtual time: if the bus deadlocks, the autojumping clock fires
        # fail_after at once, so a regression fails instead of hanging.
        with trio.fail_after(3600):
            await run_ops()

    async def run_ops() -> None:
        async with open_bus() as bus:
            got: dict[str, list[int]] = {"a.*": [], "*.x": [], "#": []}

            def make(into: list[int]) -> Any:
                async def handler(event: Event) -> None:
                    await trio.lowlevel.checkpoint()  # let the others interleave
                    into.append(event.seq)

                return handler

            for pattern, into in got.items():
                bus.subscribe(pattern, make(into), capacity=capacity)
            published: list[Event] = []
            for op, arg in ops:
                if op == "publish":
                    published.append(await bus.publish(arg))
                elif op == "nowait":
                    with contextlib.suppress(WouldBlock):  # full BLOCK: not published
                        published.append(bus.publish_nowait(arg))
                elif op == "batch":
                    first = bus.last_seq + 1
                    topics = [("a.x", "a.y", "b.x")[i % 3] for i in range(arg)]
                    await bus.publish_batch([(t, None) for t in topics])
                    published += [Event(t, None, 0, first + i, "") for i, t in enumerate(topics)]
                else:
                    await trio.lowlevel.checkpoint()
            await bus.drain()
            for pattern, into in got.items():
                assert into == [e.seq for e in published if oracle(pattern, e.topic)]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -------------------------------------------------------------- backpressure


@pytest.mark.trio
async def test_block_paces_the_publisher_and_nowait_is_all_or_nothing() -> None:
    async with open_bus() as bus, trio.open_nursery() as nursery:
        gate = trio.Event()
        got: list[int] = []

        async def gated(event: Event) -> None:
            await gate.wait()
            got.append(event.payload)

        other: list[Event] = []
        sub = bus.subscribe("t", gated, policy=Backpressure.BLOCK, capacity=2, name="slow")
        bus.subscribe("t", collector(other), policy=Backpressure.DROP_OLDEST, capacity=100)
        published: list[int] = []

        async def producer() -> None:
            for i in range(6):
                await bus.publish("t", i)
                published.append(i)

        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        # 0 is in the handler, 1 and 2 are queued, publish(3) waits for room.
        assert published == [0, 1, 2]
        assert sub.queued == 2
        seq_before = bus.last_seq
        with pytest.raises(WouldBlock, match="'slow'") as info:
            bus.publish_nowait("t", 99)
        assert isinstance(info.value, trio.WouldBlock)
        assert isinstance(info.value, Bot4Error)
        assert bus.last_seq == seq_before
        await trio.testing.wait_all_tasks_blocked()
        assert 99 not in [e.payload for e in other]  # delivered to nobody

        gate.set()
        assert await drains(bus)
        assert published == list(range(6))
        assert got == list(range(6))
        assert sub.dropped == 0


@pytest.mark.trio
async def test_drop_oldest_counts_drops_and_keeps_the_newest() -> None:
    async with open_bus() as bus:
        got: list[Event] = []
        sub = bus.subscribe("t", collector(got), policy=Backpressure.DROP_OLDEST, capacity=3)
        for i in range(10):
            bus.publish_nowait("t", i)  # no yield: the handler cannot keep up
        await bus.drain()
        assert [e.payload for e in got] == [7, 8, 9]
        assert sub.dropped == 7
        assert sub.delivered == 3


@pytest.mark.trio
async def test_fail_closes_the_subscription_and_reports_while_others_continue() -> None:
    async with open_bus() as bus:
        failing: list[Event] = []
        others: list[Event] = []
        errors: list[Event] = []
        sub = bus.subscribe(
            "t", collector(failing), policy=Backpressure.FAIL, capacity=2, name="strict"
        )
        bus.subscribe("t", collector(others), capacity=100)
        bus.subscribe(BUS_ERROR, collector(errors))
        sent = [await bus.publish("t", i, correlation_id=f"c{i}") for i in range(5)]
        await bus.drain()

        assert sub.closed
        assert isinstance(sub.error, SubscriberFailed)
        assert "'strict'" in str(sub.error)
        assert "'t'" in str(sub.error)
        assert failing == []  # its queue was discarded when it failed
        assert sub.dropped == 3  # two queued + the one that overflowed
        assert [e.payload for e in others] == [0, 1, 2, 3, 4]
        assert len(errors) == 1
        info = errors[0].payload
        assert info == BusErrorInfo(
            subscriber="strict",
            topic="t",
            event_seq=sent[2].seq,
            error_type="SubscriberFailed",
            message=str(sub.error),
        )
        assert errors[0].correlation_id == "c2"
        # The error event comes after the event that caused it.
        assert errors[0].seq == sent[2].seq + 1
        with pytest.raises(SubscriberFailed):
            await sub.drain()


# -------------------------------------------------------------------- errors


@pytest.mark.trio
async def test_raising_subscriber_reports_bus_error_and_others_continue() -> None:
    async with open_bus() as bus:
        ok: list[Event] = []
        seen: list[int] = []
        errors: list[Event] = []

        async def flaky(event: Event) -> None:
            seen.append(event.payload)
            if event.payload == 2:
                raise RuntimeError("boom on 2")

        sub = bus.subscribe("t.*", flaky, name="flaky")
        bus.subscribe("t.*", collector(ok))
        bus.subscribe(BUS_ERROR, collector(errors))
        for i in range(5):
            await bus.publish("t.x", i, correlation_id="corr")
        await bus.drain()

        assert seen == [0, 1, 2, 3, 4]  # delivery continued after the error
        assert [e.payload for e in ok] == [0, 1, 2, 3, 4]
        assert (sub.delivered, sub.failed) == (4, 1)
        assert isinstance(sub.last_error, RuntimeError)
        [error] = errors
        assert error.payload == BusErrorInfo("flaky", "t.x", 3, "RuntimeError", "boom on 2")
        assert error.correlation_id == "corr"


@pytest.mark.trio
async def test_errors_about_bus_error_events_do_not_loop() -> None:
    async with open_bus() as bus:
        everything: list[Event] = []
        calls = 0

        def always_raises(event: Event) -> None:
            nonlocal calls
            calls += 1
            if calls < 50:  # bounded, so a regression fails instead of hanging
                raise ValueError(f"cannot handle {event.topic}")

        catch_all = bus.subscribe("#", always_raises, name="catch-all")
        error_sub = bus.subscribe(BUS_ERROR, always_raises, name="error-handler")
        bus.subscribe("#", collector(everything))
        await bus.publish("t", 1)
        await bus.drain()

        # One error (catch-all on "t"); both failures on that bus.error event
        # are counted but not re-published.
        assert [e.topic for e in everything] == ["t", BUS_ERROR]
        assert everything[1].payload.subscriber == "catch-all"
        assert catch_all.failed == 2
        assert error_sub.failed == 1


@pytest.mark.trio
async def test_raising_filter_is_reported_and_event_not_delivered() -> None:
    async with open_bus() as bus:
        got: list[Event] = []
        errors: list[Event] = []

        def picky(event: Event) -> bool:
            if event.payload is None:
                raise TypeError("no payload")
            return True

        sub = bus.subscribe("t", collector(got), filter=picky, name="picky")
        bus.subscribe(BUS_ERROR, collector(errors))
        await bus.publish("t", None)
        await bus.publish("t", 1)
        await bus.drain()
        assert [e.payload for e in got] == [1]
        assert sub.failed == 1
        assert [e.payload.error_type for e in errors] == ["TypeError"]


@pytest.mark.trio
async def test_handler_publishing_into_its_own_full_block_queue_is_an_error() -> None:
    async with open_bus() as bus:
        errors: list[Event] = []

        async def echo(event: Event) -> None:
            if event.payload < 3:
                await bus.publish("loop", event.payload + 10)
                await bus.publish("loop", event.payload + 20)

        sub = bus.subscribe("loop", echo, capacity=1, name="echo")
        bus.subscribe(BUS_ERROR, collector(errors))
        await bus.publish("loop", 0)
        assert await drains(bus)
        assert sub.failed == 1
        assert errors[0].payload.error_type == "BusError"
        assert "deadlock" in errors[0].payload.message


@pytest.mark.trio
async def test_drain_from_a_handler_is_refused() -> None:
    async with open_bus() as bus:

        async def drains(event: Event) -> None:
            await bus.drain()

        sub = bus.subscribe("t", drains)
        await bus.publish("t")
        await bus.drain()
        assert isinstance(sub.last_error, BusError)


# ----------------------------------------------------------- correlation ids


@pytest.mark.trio
async def test_correlation_ids_flow_end_to_end() -> None:
    async with open_bus(clock=counter_clock()) as bus:
        journal: list[Event] = []

        async def strategy(event: Event) -> None:
            await bus.reply(event, "order.new", {"qty": event.payload})

        def risk(event: Event) -> None:
            bus.reply_nowait(event, "risk.action", "approve", ts=event.ts)

        bus.subscribe("market.*", strategy)
        bus.subscribe("order.new", risk)
        bus.subscribe("#", collector(journal))
        first = await bus.publish("market.BTC-USDT", 1)
        second = await bus.publish("market.ETH-USDT", 2, correlation_id="given", ts=5)
        await bus.drain()

        assert first.correlation_id != second.correlation_id
        assert second.correlation_id == "given"
        assert second.ts == 5
        assert first.ts == 1000  # from the bus clock
        chains: dict[str, list[str]] = {}
        for event in journal:
            chains.setdefault(event.correlation_id, []).append(event.topic)
        assert chains == {
            first.correlation_id: ["market.BTC-USDT", "order.new", "risk.action"],
            "given": ["market.ETH-USDT", "order.new", "risk.action"],
        }
        seqs = [e.seq for e in journal]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)


@pytest.mark.trio
async def test_events_built_by_the_bus_are_ordinary_frozen_events() -> None:
    async with open_bus(clock=counter_clock()) as bus:
        got: list[Event] = []
        bus.subscribe("#", collector(got))
        single = await bus.publish("a", {"x": 1}, correlation_id="c")
        bus.publish_nowait("b", 2, ts=7)
        await bus.publish_batch([("c", 3)], correlation_id="k")
        await bus.drain()
    assert got[0] is single
    expected = [
        Event("a", {"x": 1}, 1000, 1, "c"),
        Event("b", 2, 7, 2, got[1].correlation_id),
        Event("c", 3, 2000, 3, "k"),
    ]
    assert got == expected
    assert [repr(e) for e in got] == [repr(e) for e in expected]
    assert hash(got[1]) == hash(expected[1])
    for event in got:
        assert type(event) is Event
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            event.topic = "z"  # type: ignore[misc]


def test_event_is_frozen_and_slotted() -> None:
    event = Event("t", 1, 2, 3, "c")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.seq = 4  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


# ------------------------------------------------------------------ shutdown


@pytest.mark.trio
async def test_normal_exit_drains_and_leaves_no_task() -> None:
    got: list[int] = []

    async def slowish(event: Event) -> None:
        for _ in range(3):
            await trio.lowlevel.checkpoint()
        got.append(event.payload)

    async with open_bus() as bus:
        bus.subscribe("t", slowish)
        await bus.publish_batch([("t", i) for i in range(10)])
        assert len(bus_tasks()) == 1
    assert got == list(range(10))
    assert bus_tasks() == []
    assert bus.closed
    with pytest.raises(BusClosed):
        await bus.publish("t", 1)
    with pytest.raises(BusClosed):
        bus.subscribe("t", slowish)


@pytest.mark.trio
async def test_cancelling_the_bus_scope_cancels_handlers() -> None:
    started = trio.Event()
    cancelled: list[int] = []

    async def stuck(event: Event) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(event.payload)
            raise

    with trio.CancelScope() as scope:
        async with open_bus() as bus:
            bus.subscribe("t", stuck)
            bus.subscribe("t", collector([]))  # an idle, parked one too
            await bus.publish("t", 7)
            await started.wait()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert cancelled == [7]
    assert bus_tasks() == []


@pytest.mark.trio
async def test_body_exception_propagates_unwrapped() -> None:
    async def body() -> None:
        async with open_bus() as bus:
            bus.subscribe("t", collector([]))
            await bus.publish("t", 1)
            raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await body()
    assert bus_tasks() == []


@pytest.mark.trio
async def test_bus_with_own_nursery_and_close() -> None:
    got: list[Event] = []
    async with trio.open_nursery() as nursery:
        bus = Bus(nursery, clock=counter_clock())
        sub = bus.subscribe("t", collector(got))
        await bus.publish("t", 1)
        await sub.drain()
        bus.close()
    assert [e.payload for e in got] == [1]
    assert sub.closed


# -------------------------------------------------------------------- replay


@attrs.frozen
class Tick:
    symbol: str
    price: int


def encode(payload: Any) -> Any:
    if isinstance(payload, Tick):
        return {"symbol": payload.symbol, "price": payload.price}
    return payload


def decode(topic: str, data: Any) -> Any:
    return Tick(**data) if topic.startswith("market.") else data


def install_pipeline(bus: Bus, outputs: list[tuple[Any, ...]]) -> None:
    """A deterministic strategy -> risk pipeline with a journal."""
    last: dict[str, int] = {}

    async def strategy(event: Event) -> None:
        tick: Tick = event.payload
        previous = last.get(tick.symbol)
        last[tick.symbol] = tick.price
        if previous is not None and tick.price > previous:
            await bus.reply(event, "order.new", {"symbol": tick.symbol, "qty": 1}, ts=event.ts)

    async def risk(event: Event) -> None:
        verdict = "approve" if event.payload["symbol"] != "DOGE" else "reject"
        await bus.reply(event, "risk.action", verdict, ts=event.ts)

    def journal(event: Event) -> None:
        outputs.append((event.topic, event.payload, event.ts, event.seq, event.correlation_id))

    bus.subscribe("market.*", strategy, name="strategy")
    bus.subscribe("order.new", risk, name="risk")
    bus.subscribe("order.#", journal, name="journal-orders")
    bus.subscribe("risk.#", journal, name="journal-risk")


TICKS = [
    Tick(symbol, price)
    for symbol, price in [
        ("BTC", 100), ("ETH", 10), ("BTC", 101), ("DOGE", 1), ("DOGE", 2),
        ("ETH", 9), ("BTC", 103), ("ETH", 11), ("DOGE", 3), ("BTC", 102),
    ]
]  # fmt: skip


@pytest.mark.trio
async def test_replay_reproduces_pipeline_outputs(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    live: list[tuple[Any, ...]] = []
    live_all: list[Event] = []
    async with open_bus(clock=counter_clock()) as bus:
        install_pipeline(bus, live)
        bus.subscribe("#", collector(live_all))
        async with EventRecorder(bus, path, encode=encode) as recorder:
            for tick in TICKS:
                await bus.publish(f"market.{tick.symbol}", tick)
                await bus.drain()
        assert recorder.recorded == len(live_all)
    assert any(topic == "risk.action" for topic, *_ in live)

    lines = path.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [e.seq for e in live_all]

    # Feed only the inputs to a fresh pipeline: it regenerates the rest.
    replayed: list[tuple[Any, ...]] = []
    async with open_bus(clock=lambda: 0) as bus:
        install_pipeline(bus, replayed)
        count = await replay(path, bus, decode=decode, pattern="market.#")
    assert count == len(TICKS)
    assert replayed == live

    # Replay everything to an observer: identical envelopes.
    observed: list[Event] = []
    async with open_bus(clock=lambda: 0) as bus:
        bus.subscribe("#", collector(observed))
        await replay(path, bus, decode=decode, drain_each=False)
    assert observed == live_all


@pytest.mark.trio
async def test_recorder_records_bus_errors_and_replay_restores_them(tmp_path: Path) -> None:
    path = tmp_path / "errors.jsonl"
    async with open_bus() as bus:

        def bad(event: Event) -> None:
            raise OverflowError("too big")

        bus.subscribe("t", bad, name="bad")
        async with EventRecorder(bus, path):
            await bus.publish("t", [1, 2])
            await bus.drain()
    observed: list[Event] = []
    async with open_bus() as bus:
        bus.subscribe("#", collector(observed))
        await replay(path, bus)
    assert [e.topic for e in observed] == ["t", BUS_ERROR]
    assert observed[0].payload == [1, 2]
    assert observed[1].payload == BusErrorInfo("bad", "t", 1, "OverflowError", "too big")


@pytest.mark.trio
async def test_recorder_unencodable_payload_is_a_bus_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    async with open_bus() as bus:
        async with EventRecorder(bus, path) as recorder:
            await bus.publish("t", object())
            await bus.publish("t", 1)
        assert recorder.subscription.failed == 1
    topics = [json.loads(line)["topic"] for line in path.read_text().splitlines()]
    assert topics == ["t", BUS_ERROR]  # the object() event failed to encode


@pytest.mark.trio
async def test_replay_refuses_to_move_seq_backwards(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    async with open_bus() as bus, EventRecorder(bus, path):
        await bus.publish("t", 1)
    async with open_bus() as bus:
        await bus.publish("t", 0)
        await bus.publish("t", 0)
        with pytest.raises(ValueError, match="seq must increase"):
            await replay(path, bus)


@pytest.mark.trio
async def test_replay_rejects_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jsonl"
    path.write_text('{"topic": "t"\n')
    async with open_bus() as bus:
        with pytest.raises(ValueError, match=r"corrupt\.jsonl:1"):
            await replay(path, bus)
