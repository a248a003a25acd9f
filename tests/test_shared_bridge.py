"""The bus -> Redis Streams bridge against a real Redis: consumer groups,
acknowledgements, replay from an id, bounded length."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import trio

from bot4 import codec
from bot4.bus import open_bus
from bot4.model import Approved, Fill, Order, OrderState, OrderType, Rejected, Side
from bot4.shared.bridge import StreamBridge, StreamReader, fast_encode
from bot4.shared.connection import RedisConfig, SharedConnection
from tests.shared_kit import namespace, url

__all__ = ["namespace", "url"]  # fixtures

NOW = datetime(2024, 3, 1, tzinfo=UTC)


def _fill(i: int) -> Fill:
    return Fill(f"f{i}", f"c{i}", "BTC-USDT", "buy", Decimal("0.5"), Decimal(100), Decimal(0), NOW)


def test_fast_encode_is_codec_encode() -> None:
    order = Order("c", "BTC-USDT", Side.BUY, OrderType.LIMIT, Decimal(1), price=Decimal(2))
    for value in (
        _fill(1),
        Approved(order, ("a", "b")),
        Rejected("r", "why", values={"a": Decimal(1)}, order=order),
        OrderState(order, "new"),
        {"x": [1, Decimal(2), None]},
        "halted",
    ):
        assert fast_encode(value) == codec.encode(value)


def test_events_cross_to_a_consumer_group_and_replay(url: str, namespace: str) -> None:
    config = RedisConfig(url=url, namespace=namespace, process="writer")

    async def publish() -> None:
        with SharedConnection(config) as conn:
            bridge = StreamBridge(conn, patterns=("fill.#", "kernel.#"), maxlen=1000)
            async with open_bus() as bus:
                bridge.attach(bus)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bridge.run)
                    for i in range(50):
                        await bus.publish("fill.BTC-USDT", _fill(i), ts=i, correlation_id=f"c{i}")
                    await bus.publish("market.BTC-USDT", "not mirrored")
                    await bus.publish("kernel.halted", "bot4 kill: test")
                    await bus.drain()
                    await bridge.flush()
                    nursery.cancel_scope.cancel()
            assert (bridge.sent, bridge.dropped) == (51, 0)

    trio.run(publish)
    with SharedConnection(RedisConfig(url=url, namespace=namespace, process="r")) as conn:
        reader = StreamReader(conn, "dash", "d1")
        assert reader.ensure_group("0") is True
        assert reader.ensure_group("0") is False
        first = reader.read(count=20, block_ms=100)
        assert len(first) == 20
        assert first[0].topic == "fill.BTC-USDT"
        assert first[0].payload == _fill(0)  # decoded back to the model object
        assert (first[0].origin, first[0].correlation_id, first[0].ts) == ("writer", "c0", 0)
        assert reader.ack(e.id for e in first[:10]) == 10
        # Unacknowledged entries come back to their consumer.
        assert [e.id for e in reader.read(pending=True)] == [e.id for e in first[10:]]
        rest = reader.read(count=100, block_ms=100)
        assert len(rest) == 31
        assert rest[-1].topic == "kernel.halted"
        assert rest[-1].payload == "bot4 kill: test"
        # Another group gets everything again; replay needs no group at all.
        audit = StreamReader(conn, "audit", "a1")
        audit.ensure_group("0")
        assert len(audit.read(count=1000, block_ms=100)) == 51
        replayed = reader.replay(first[-1].id)
        assert [e.seq for e in replayed] == [e.seq for e in rest]
        assert len(reader.replay("0")) == 51


def test_stream_length_is_bounded(url: str, namespace: str) -> None:
    config = RedisConfig(url=url, namespace=namespace, process="writer")
    with SharedConnection(config) as conn:
        bridge = StreamBridge(conn, maxlen=100, batch=500)
        from bot4.bus import Event

        events = [Event("fill.BTC-USDT", _fill(i), i, i, f"c{i}") for i in range(5000)]
        bridge.send_sync(events)
        length = StreamReader(conn, "g", "c").length()
        # MAXLEN ~ trims whole macro nodes: near the bound, never the whole history.
        assert 100 <= length < 1000
