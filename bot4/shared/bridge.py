"""Bus events mirrored to a Redis Stream, for other processes and dashboards.

Writing (:class:`StreamBridge`): a bus subscription appends matching events
to a local buffer (a plain function, so it costs the bus a list append); a
flusher task encodes each batch in a worker thread and sends it as one
EVALSHA whose script runs ``XADD <stream> MAXLEN ~ <n> * e <json>`` per
event: one round trip per batch however large, and the stream stays bounded
(``~``: trimmed by whole macro nodes, so it may briefly hold a little more).
While Redis is away the buffer keeps the newest ``max_pending`` events (the
rest are counted in ``dropped``) and the flusher retries.

Each entry has one field ``e``: JSON with ``topic``, ``ts``, ``seq``,
``cid`` (correlation id), ``origin`` (the process) and ``payload``
(:func:`bot4.codec.encode`, so :func:`bot4.codec.decode` gives the model
objects back).

Reading (:class:`StreamReader`): consumer groups with ``XREADGROUP`` and
``XACK`` (each group gets every event once; within a group consumers share
them; unacknowledged events are read again with ``pending=True``), and
``replay(from_id)`` with ``XRANGE`` for anyone who wants history.
"""

from __future__ import annotations

import contextlib
import enum
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import attrs
import redis
import trio

from bot4 import codec
from bot4.bus import Backpressure, Bus, Event, Subscription, topic_matches
from bot4.shared.connection import SharedConnection, SharedUnavailable

DEFAULT_MAXLEN = 100_000
DEFAULT_PATTERNS = ("signal.#", "risk.#", "order.#", "fill.#", "kernel.#")
_BATCH = 2000

_XADD_BATCH = """
local key, maxlen = KEYS[1], ARGV[1]
local last = false
for i = 2, #ARGV do
  last = redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i])
end
return last
"""


# Per attrs class: its name, field names and one attrgetter for all of them,
# computed once. The bridge encodes every event, and walking attrs.fields()
# per object (as codec.encode does) costs more than sending it to Redis.
# The output is exactly codec.encode's (the tests compare them).
_CLASSES: dict[type[Any], tuple[str, tuple[str, ...], Callable[[Any], Any]]] = {}
_SCALARS = frozenset({str, int, float, bool, type(None)})


def fast_encode(value: Any) -> Any:
    """Exactly :func:`bot4.codec.encode`, faster for the model classes."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is Decimal:
        return str(value)
    spec = _CLASSES.get(kind)
    if spec is None:
        if not attrs.has(kind):
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, Mapping):
                return {str(k): fast_encode(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [fast_encode(v) for v in value]
            return codec.encode(value)
        names = tuple(f.name for f in attrs.fields(kind))
        getter = operator.attrgetter(*names)
        get_all = getter if len(names) > 1 else (lambda v, g=getter: (g(v),))
        spec = _CLASSES[kind] = (kind.__name__, names, get_all)
    out: dict[str, Any] = {"_t": spec[0]}
    for name, item in zip(spec[1], spec[2](value), strict=True):
        sub = type(item)
        if sub in _SCALARS:
            out[name] = item
        elif sub is Decimal:
            out[name] = str(item)
        elif sub is datetime:
            out[name] = item.isoformat()
        else:
            out[name] = fast_encode(item)
    return out


_dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode


def encode_event(event: Event, origin: str) -> str:
    return _dumps(
        {
            "topic": event.topic,
            "ts": event.ts,
            "seq": event.seq,
            "cid": event.correlation_id,
            "origin": origin,
            "payload": fast_encode(event.payload),
        }
    )


@attrs.frozen
class BridgedEvent:
    """One stream entry read back: its stream id and the event's fields."""

    id: str
    topic: str
    ts: int
    seq: int
    correlation_id: str
    origin: str
    payload: Any

    @property
    def ms(self) -> int:
        """Server time (ms since the epoch) when the entry was added."""
        return int(self.id.split("-", 1)[0])


def decode_entry(entry_id: str, fields: dict[str, str], *, objects: bool = True) -> BridgedEvent:
    data = json.loads(fields["e"])
    payload = data.get("payload")
    if objects:
        # Not a bot4 model object (a plain string, say): keep the JSON form.
        with contextlib.suppress(ValueError, TypeError):
            payload = codec.decode(payload)
    return BridgedEvent(
        entry_id,
        data["topic"],
        int(data["ts"]),
        int(data["seq"]),
        data["cid"],
        data.get("origin", ""),
        payload,
    )


class StreamBridge:
    """Mirror bus events matching ``patterns`` to the stream ``<ns>:events``
    (or ``stream``). Use :meth:`attach` then run :meth:`run` in a nursery;
    :meth:`flush` sends what is buffered (the session's end calls it)."""

    def __init__(
        self,
        conn: SharedConnection,
        *,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        stream: str | None = None,
        maxlen: int = DEFAULT_MAXLEN,
        max_pending: int = 1_000_000,
        batch: int = _BATCH,
    ) -> None:
        if maxlen < 1 or batch < 1 or max_pending < 1:
            raise ValueError("maxlen, batch and max_pending must be positive")
        self.conn = conn
        self.patterns = tuple(patterns)
        self.stream = stream or conn.config.key("events")
        self.maxlen = maxlen
        self.max_pending = max_pending
        self.batch = batch
        self.origin = conn.config.process
        self.sent = 0
        self.dropped = 0
        self.last_id: str | None = None
        self.last_error = ""
        self._buffer: list[Event] = []
        self._wake = trio.Event()
        self._script = conn.client.register_script(_XADD_BATCH)
        self._subs: list[Subscription] = []
        self._matches: dict[str, bool] = {}

    def attach(self, bus: Bus) -> None:
        # One subscription with a filter, not one per pattern: one delivery
        # task keeps the stream in the bus's seq order across topics.
        if not self.patterns:
            return
        self._subs.append(
            bus.subscribe(
                "#",
                self._append,
                filter=self._wanted,
                policy=Backpressure.BLOCK,
                capacity=65_536,
                name="redis-bridge",
            )
        )

    def _wanted(self, event: Event) -> bool:
        topic = event.topic
        hit = self._matches.get(topic)
        if hit is None:
            if len(self._matches) > 65_536:  # topic spaces can be unbounded
                self._matches.clear()
            hit = self._matches[topic] = any(topic_matches(p, topic) for p in self.patterns)
        return hit

    def detach(self) -> None:
        for sub in self._subs:
            sub.unsubscribe()
        self._subs.clear()

    def _append(self, event: Event) -> None:
        buffer = self._buffer
        buffer.append(event)
        if len(buffer) > self.max_pending:
            excess = len(buffer) - self.max_pending
            del buffer[:excess]
            self.dropped += excess
        self._wake.set()

    def send_sync(self, events: Sequence[Event]) -> str | None:
        """Encode and add ``events`` to the stream (one round trip per batch)."""
        last: str | None = None
        for start in range(0, len(events), self.batch):
            chunk = events[start : start + self.batch]
            args = [str(self.maxlen), *(encode_event(e, self.origin) for e in chunk)]

            def add(_c: redis.Redis, args: list[str] = args) -> Any:
                return self._script(keys=[self.stream], args=args)

            last = str(self.conn.run(add))
        return last

    async def flush(self) -> None:
        """Send everything buffered now; on failure the events go back to
        the front of the buffer and SharedUnavailable is raised."""
        while self._buffer:
            events, self._buffer = self._buffer, []
            try:
                last = await trio.to_thread.run_sync(
                    self.send_sync, events, limiter=self.conn.limiter
                )
            except SharedUnavailable as exc:
                self.last_error = str(exc)
                self._buffer[:0] = events
                del self._buffer[: max(0, len(self._buffer) - self.max_pending)]
                raise
            self.sent += len(events)
            if last is not None:
                self.last_id = last

    async def run(self, *, retry: float = 0.5) -> None:
        """Flush whenever events arrive, until cancelled; retries while Redis is away."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.flush()
            except SharedUnavailable:
                await trio.sleep(retry)
                self._wake.set()


class StreamReader:
    """Follow the stream as a consumer group member (blocking calls; from trio
    run them with ``trio.to_thread.run_sync``)."""

    def __init__(
        self,
        conn: SharedConnection,
        group: str,
        consumer: str,
        *,
        stream: str | None = None,
        objects: bool = True,
    ) -> None:
        self.conn = conn
        self.stream = stream or conn.config.key("events")
        self.group = group
        self.consumer = consumer
        self.objects = objects

    def ensure_group(self, start: str = "0") -> bool:
        """Create the group (and the stream) if needed, delivering entries
        after ``start`` (``0`` = everything kept, ``$`` = only new ones).
        False if it existed."""

        def create(c: redis.Redis) -> bool:
            try:
                c.xgroup_create(self.stream, self.group, id=start, mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    return False
                raise
            return True

        return self.conn.run(create)

    def read(
        self, count: int = 1000, block_ms: int | None = 1000, *, pending: bool = False
    ) -> list[BridgedEvent]:
        """New entries for this consumer (``pending``: its delivered but not
        acknowledged ones, from the start)."""
        start = "0" if pending else ">"
        answer = self.conn.run(
            lambda c: c.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: start},
                count=count,
                block=None if pending else block_ms,
            )
        )
        return self._decode(answer)

    def ack(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        if not ids:
            return 0
        return int(self.conn.run(lambda c: c.xack(self.stream, self.group, *ids)))

    def replay(self, from_id: str = "0", count: int | None = None) -> list[BridgedEvent]:
        """Entries after ``from_id`` (exclusive), oldest first, without the group."""
        start = "-" if from_id in ("0", "0-0", "-") else f"({from_id}"
        entries = cast(
            list[tuple[str, dict[str, str]]],
            self.conn.run(lambda c: c.xrange(self.stream, min=start, count=count)),
        )
        return [decode_entry(i, f, objects=self.objects) for i, f in entries]

    def length(self) -> int:
        return int(self.conn.run(lambda c: c.xlen(self.stream)))

    def _decode(self, answer: Any) -> list[BridgedEvent]:
        out: list[BridgedEvent] = []
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                if fields:  # a pending entry trimmed away comes back empty
                    out.append(decode_entry(entry_id, fields, objects=self.objects))
        return out
