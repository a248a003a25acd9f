"""Recording the events of a bus to JSON lines, and replaying them.

:class:`EventRecorder` subscribes to a bus (``BLOCK``, so nothing is lost)
and writes one JSON object per event as it arrives; :func:`replay` reads
such a file as a stream and publishes its events again with the same ts,
seq and correlation ids.  Both reach the bus through ``_RecordedBus``, the
part of :class:`bot4.bus.Bus` they use, since ``bot4.bus`` imports this
module (and re-exports both names).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from os import PathLike
from types import TracebackType
from typing import Any, Protocol, TextIO

import attrs
import trio

from bot4.bus_delivery import Subscription
from bot4.bus_events import BUS_ERROR, Backpressure, BusError, BusErrorInfo, Event, Handler
from bot4.bus_topics import _compile_pattern, _match

__all__ = ["EventRecorder", "replay"]


class _RecordedBus(Protocol):
    """What recording and replay use of :class:`bot4.bus.Bus`."""

    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        policy: Backpressure = ...,
        capacity: int = ...,
        name: str | None = ...,
    ) -> Subscription: ...

    async def publish_event(self, event: Event) -> None: ...

    async def drain(self) -> None: ...


def _identity_encode(payload: Any) -> Any:
    return payload


def _identity_decode(topic: str, data: Any) -> Any:
    return data


class EventRecorder:
    """Stream every event matching ``pattern`` (default all) to JSON lines.

    Use as ``async with EventRecorder(bus, path, encode=...) as rec:``.
    Each line holds topic, ts, seq, correlation id and ``encode(payload)``
    (``bus.error`` payloads are encoded by the recorder itself).  Lines are
    written as events arrive, so memory use does not grow with the run.
    The subscription uses ``BLOCK`` so nothing is lost: a slow disk paces
    the publishers.  Leaving the block writes every event queued so far,
    then unsubscribes and closes the file.
    """

    def __init__(
        self,
        bus: _RecordedBus,
        path: str | PathLike[str],
        *,
        encode: Callable[[Any], Any] = _identity_encode,
        pattern: str = "#",
        capacity: int = 4096,
        name: str = "recorder",
    ) -> None:
        self._bus = bus
        self._path = path
        self._encode = encode
        self._pattern = pattern
        self._capacity = capacity
        self._name = name
        self._file: TextIO | None = None
        self._sub: Subscription | None = None
        self.recorded = 0

    @property
    def subscription(self) -> Subscription:
        """The recorder's subscription (for its counters)."""
        if self._sub is None:
            raise BusError(f"recorder {self._name!r} is not recording")
        return self._sub

    def _write(self, event: Event) -> None:
        assert self._file is not None
        if event.topic == BUS_ERROR and isinstance(event.payload, BusErrorInfo):
            data = attrs.asdict(event.payload)
        else:
            data = self._encode(event.payload)
        line = json.dumps(
            {
                "topic": event.topic,
                "ts": event.ts,
                "seq": event.seq,
                "correlation_id": event.correlation_id,
                "payload": data,
            },
            separators=(",", ":"),
        )
        self._file.write(line + "\n")
        self.recorded += 1

    async def __aenter__(self) -> EventRecorder:
        # Opening may touch the disk: do it in a thread.  Writes, however,
        # are synchronous and buffered: a few µs per line, far cheaper than a
        # thread hop per event; the OS absorbs the disk latency.
        self._file = await trio.to_thread.run_sync(
            functools.partial(open, self._path, "w", encoding="utf-8")
        )
        self._sub = self._bus.subscribe(
            self._pattern,
            self._write,
            policy=Backpressure.BLOCK,
            capacity=self._capacity,
            name=self._name,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._sub is not None
        assert self._file is not None
        try:
            if exc_type is None:
                await self._sub.drain()
        finally:
            self._sub.unsubscribe()
            self._file.close()


def _json_lines(path: str | PathLike[str]) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not a JSON line: {exc}") from exc
            if not isinstance(record, dict):
                # A bad file is a value problem, not a caller's type error.
                raise ValueError(  # noqa: TRY004
                    f"{path}:{number}: expected a JSON object"
                )
            yield record


async def replay(
    path: str | PathLike[str],
    bus: _RecordedBus,
    *,
    decode: Callable[[str, Any], Any] = _identity_decode,
    pattern: str = "#",
    drain_each: bool = True,
) -> int:
    """Publish the events recorded in ``path`` again; return how many.

    Same order, topics, ts, seq and correlation ids; payloads come from
    ``decode(topic, data)`` (``bus.error`` payloads are rebuilt as
    :class:`BusErrorInfo`).  Only events matching ``pattern`` are replayed:
    to feed a pipeline, replay its inputs (``pattern="market.#"``) and let it
    regenerate the rest.  With ``drain_each`` the bus is drained after each
    event, so every event is fully processed before the next, which makes
    the run independent of scheduling.  The bus must not have published
    beyond the first replayed seq.  The file is read as a stream.
    """
    fixed, tail = _compile_pattern(pattern)
    count = 0
    for record in _json_lines(path):
        topic = record["topic"]
        if not _match(fixed, tail, topic.split(".")):
            continue
        data = record["payload"]
        payload = BusErrorInfo(**data) if topic == BUS_ERROR else decode(topic, data)
        event = Event(topic, payload, record["ts"], record["seq"], record["correlation_id"])
        await bus.publish_event(event)
        count += 1
        if drain_each:
            await bus.drain()
    return count
