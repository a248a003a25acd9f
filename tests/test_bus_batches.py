"""Batch subscribers of bot4.bus: the same events as a per-event subscriber,
in exactly the same order relative to every other event, with no envelope
built where nobody needs one.  Determinism comes from ``bus.drain()``."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bot4.bus
from bot4.bus import Backpressure, Event, EventBatch, WouldBlock, open_bus

HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TOPICS = ("market.BTC-USDT", "market.ETH-USDT", "fill.BTC-USDT", "order.update", "market")
OPS = st.lists(
    st.tuples(
        st.sampled_from(["post", "publish", "nowait", "batch", "yield"]),
        st.sampled_from(TOPICS),
    ),
    max_size=60,
)


def _flat(items: list[Event | EventBatch]) -> list[tuple[str, Any, int, int, str]]:
    out: list[tuple[str, Any, int, int, str]] = []
    for item in items:
        events = list(item.events()) if isinstance(item, EventBatch) else [item]
        out += [(e.topic, e.payload, e.ts, e.seq, e.correlation_id) for e in events]
    return out


@HYPOTHESIS
@given(OPS, st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=5))
def test_a_batch_subscriber_sees_what_a_per_event_one_sees_in_the_same_order(
    ops: list[tuple[str, str]], capacity: int, batch_size: int
) -> None:
    """Every publish path, small queues (so BLOCK waits), small batches: the
    batch subscriber's items, flattened, are the per-event subscriber's
    events exactly (topic, payload, ts, seq, correlation id), each batch
    holds only market ticks, and no batch outgrows ``batch_size``."""

    async def main() -> None:
        with trio.fail_after(3600):  # virtual time: a deadlock fails at once
            await run_ops()

    async def run_ops() -> None:
        async with open_bus() as bus:
            per_event: list[Event | EventBatch] = []
            batched: list[Event | EventBatch] = []

            async def slow(event: Event) -> None:
                await trio.lowlevel.checkpoint()
                per_event.append(event)

            async def slow_batch(batch: EventBatch) -> None:
                await trio.lowlevel.checkpoint()
                batched.append(batch)

            bus.subscribe("#", slow, capacity=capacity)
            bus.subscribe(
                "#",
                batched.append,
                capacity=capacity,
                on_batch=slow_batch,
                batch_size=batch_size,
                batch_topics="market.*",
            )
            for n, (op, topic) in enumerate(ops):
                if op == "post":
                    waiting = bus.post(topic, n, ts=n)
                    if waiting is not None:
                        await waiting
                elif op == "publish":
                    await bus.publish(topic, n, correlation_id=f"c{n}" if n % 2 else None)
                elif op == "nowait":
                    with contextlib.suppress(WouldBlock):
                        bus.publish_nowait(topic, n, ts=n)
                elif op == "batch":
                    await bus.publish_batch([(topic, n), ("market.BTC-USDT", -n)], ts=n)
                else:
                    await trio.lowlevel.checkpoint()
            await bus.drain()
            assert _flat(batched) == _flat(per_event)
            for item in batched:
                if isinstance(item, EventBatch):
                    assert 1 <= len(item) <= batch_size
                    assert all(t.startswith("market.") for t in item.topics)
                else:
                    assert not item.topic.startswith("market.")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.trio
async def test_a_batch_is_delivered_before_the_event_that_follows_it() -> None:
    """Ticks published without a yield gather in one batch; the fill after
    them closes it, so the handler sees the batch, then the fill, then a new
    batch with the ticks after the fill."""
    async with open_bus() as bus:
        seen: list[Any] = []
        bus.subscribe(
            "#",
            lambda e: seen.append(e.topic),
            on_batch=lambda b: seen.append(list(b.payloads)),
        )
        for i in range(3):
            bus.post("market.BTC-USDT", i, ts=i)
        await bus.publish("fill.BTC-USDT", "f", ts=3)
        for i in range(4, 6):
            bus.post("market.ETH-USDT", i, ts=i)
        await bus.drain()
        assert seen == [[0, 1, 2], "fill.BTC-USDT", [4, 5]]


@pytest.mark.trio
async def test_no_envelope_is_built_for_batch_only_or_unsubscribed_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``post`` builds an Event only for a per-event subscriber: none for a
    topic nobody matches, none for one only batch subscribers take."""
    built: list[str] = []
    make = bot4.bus._make_event

    def counting(topic: str, *args: Any) -> Event:
        built.append(topic)
        return make(topic, *args)

    monkeypatch.setattr(bot4.bus, "_make_event", counting)
    async with open_bus() as bus:
        batches: list[EventBatch] = []
        bus.subscribe("market.#", lambda e: None, on_batch=batches.append)
        for i in range(100):
            assert bus.post("market.BTC-USDT", i, ts=i) is None
            assert bus.post("nobody.listens", i, ts=i) is None
        assert built == []
        bus.subscribe("market.ETH-USDT", lambda e: None)
        bus.post("market.ETH-USDT", 0, ts=0)
        assert built == ["market.ETH-USDT"]
        await bus.drain()
        assert sum(map(len, batches)) == 101
        assert bus.last_seq == 201


@pytest.mark.trio
async def test_a_batch_takes_one_queue_slot_and_drops_count_its_events() -> None:
    """DROP_OLDEST with room for one item: a new batch pushes the old one out
    and ``dropped`` counts the events it held, not one."""
    async with open_bus() as bus:
        gate = trio.Event()
        got: list[list[int]] = []

        async def wait_then(batch: EventBatch) -> None:
            got.append(list(batch.payloads))

        async def blocked(event: Event) -> None:
            await gate.wait()

        sub = bus.subscribe(
            "#",
            blocked,
            on_batch=wait_then,
            policy=Backpressure.DROP_OLDEST,
            capacity=1,
            batch_size=3,
        )
        await bus.publish("order.update", "x")
        await trio.testing.wait_all_tasks_blocked()  # the handler holds "x"
        for i in range(7):  # batches [0,1,2], [3,4,5], [6]: each new one drops the last
            bus.post("market.BTC-USDT", i, ts=i)
        gate.set()
        await bus.drain()
        assert got == [[6]]
        assert sub.dropped == 6
        assert sub.delivered == 2  # "x" and the one tick


@pytest.mark.trio
async def test_a_raising_batch_handler_is_reported_and_delivery_goes_on() -> None:
    async with open_bus() as bus:
        errors: list[Any] = []
        bus.subscribe("bus.error", lambda e: errors.append(e.payload))
        seen: list[int] = []

        def broken(batch: EventBatch) -> None:
            if 0 in batch.payloads:
                raise RuntimeError("broken batch")
            seen.extend(batch.payloads)

        sub = bus.subscribe("market.#", lambda e: None, on_batch=broken, name="b")
        bus.post("market.X", 0, ts=0)
        await bus.publish("market.X", 1, ts=1)
        await bus.drain()  # one batch [0, 1]: it failed
        bus.post("market.X", 2, ts=2)
        await bus.drain()
        assert seen == [2]
        assert sub.failed == 1
        assert [(e.subscriber, e.topic, e.event_seq) for e in errors] == [("b", "market.X", 1)]


def test_a_filter_cannot_be_combined_with_batches() -> None:
    async def main() -> None:
        async with open_bus() as bus:
            with pytest.raises(ValueError, match="filter"):
                bus.subscribe("#", lambda e: None, filter=lambda e: True, on_batch=print)
            with pytest.raises(ValueError, match="batch_size"):
                bus.subscribe("#", lambda e: None, on_batch=print, batch_size=0)

    trio.run(main)


@pytest.mark.trio
async def test_an_excluded_topic_is_not_routed_to_the_subscriber_and_costs_nothing() -> None:
    """``exclude``: a "#" subscriber (the journal without market data) gets
    every other topic, in order, and no batch or envelope for the excluded
    ones; another subscriber of those topics still gets them."""
    async with open_bus() as bus:
        seen: list[str] = []
        batches: list[EventBatch] = []
        sub = bus.subscribe(
            "#", lambda e: seen.append(e.topic), on_batch=batches.append, exclude="market.*"
        )
        for i in range(50):
            assert bus.post("market.BTC-USDT", i, ts=i) is None
            await bus.publish("fill.BTC-USDT", i, ts=i)
        await bus.publish("market", 0, ts=0)  # not matched by market.*
        await bus.drain()
        assert batches == []
        assert seen == ["fill.BTC-USDT"] * 50 + ["market"]
        assert sub.delivered == 51
        others: list[EventBatch] = []
        bus.subscribe("market.#", lambda e: None, on_batch=others.append)
        bus.post("market.BTC-USDT", 99, ts=99)
        await bus.drain()
        assert [b.payloads for b in others] == [[99]]
        assert batches == []
    with pytest.raises(ValueError, match="only allowed as the last segment"):
        async with open_bus() as bus:
            bus.subscribe("#", lambda e: None, exclude="market.#.x")
