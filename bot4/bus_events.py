"""The event bus's values and errors: what it hands out and what it raises.

:class:`Event` is the frozen envelope a subscriber receives (``_make_event``
builds one the fast way, for the publish paths); :class:`EventBatch` holds,
as columns, the batched events a batch subscriber receives in its place;
:class:`BusErrorInfo` is the payload of the bus's own ``bus.error``
reports.  :class:`Backpressure` names what publishing does at a full queue,
and ``Handler``, ``BatchHandler`` and ``Filter`` the callables a
subscription takes.  The exceptions form the tree drawn in :mod:`bot4.bus`,
which describes the design and re-exports every public name here; this
module imports nothing else of the bus.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import trio

from bot4.errors import Bot4Error

__all__ = [
    "BUS_ERROR",
    "Backpressure",
    "BatchHandler",
    "BusClosed",
    "BusError",
    "BusErrorInfo",
    "Event",
    "EventBatch",
    "Filter",
    "Handler",
    "SubscriberFailed",
    "WouldBlock",
]

BUS_ERROR = "bus.error"
"""Topic on which the bus reports handler exceptions and FAIL overflows."""


# ---------------------------------------------------------------- exceptions


class BusError(Bot4Error):
    """Base class of every error raised by the event bus (a Bot4Error)."""


class WouldBlock(BusError, trio.WouldBlock):
    """``publish_nowait`` found a full ``BLOCK`` subscriber.

    The event was delivered to nobody; retry with ``await publish(...)``.
    """

    def __init__(self, subscriber: str, topic: str) -> None:
        super().__init__(
            f"subscriber {subscriber!r} (BLOCK) is full; publish_nowait({topic!r}) would block"
        )
        self.subscriber = subscriber
        self.topic = topic


class SubscriberFailed(BusError):
    """A ``FAIL`` subscription's queue overflowed, so it was closed."""

    def __init__(self, subscriber: str, topic: str, capacity: int) -> None:
        super().__init__(
            f"subscriber {subscriber!r} (FAIL) overflowed its capacity of "
            f"{capacity} on topic {topic!r} and was closed"
        )
        self.subscriber = subscriber
        self.topic = topic
        self.capacity = capacity


class BusClosed(BusError):
    """The bus was closed: no more publishing or subscribing."""


# ------------------------------------------------------------------- values


@attrs.frozen(slots=True)
class Event:
    """The envelope every subscriber receives.

    ``ts`` is the event time in integer nanoseconds since the epoch (UTC);
    ``seq`` increases strictly per bus; ``correlation_id`` ties together
    every event caused by the same original event.  The payload type depends
    on the topic, which the bus cannot know, hence ``Any``.
    """

    topic: str
    payload: Any
    ts: int
    seq: int
    correlation_id: str


# Building an Event is the largest per-event cost of publishing: attrs' frozen
# __init__ stores each field through object.__setattr__, which looks the slot
# up by name every time (~450 ns for five fields).  The publish paths fill the
# slots through their descriptors instead (~250 ns): same object, still
# frozen afterwards (the test suite checks it equals the attrs-built one).
_new = object.__new__
_set_topic = Event.__dict__["topic"].__set__
_set_payload = Event.__dict__["payload"].__set__
_set_ts = Event.__dict__["ts"].__set__
_set_seq = Event.__dict__["seq"].__set__
_set_cid = Event.__dict__["correlation_id"].__set__


def _make_event(topic: str, payload: Any, ts: int, seq: int, correlation_id: str) -> Event:
    event: Event = _new(Event)
    _set_topic(event, topic)
    _set_payload(event, payload)
    _set_ts(event, ts)
    _set_seq(event, seq)
    _set_cid(event, correlation_id)
    return event


class EventBatch:
    """Consecutive batched events for one subscriber, delivered as one item.

    Columns, one entry per event in publish order: ``topics``, ``payloads``,
    ``ts`` and ``seqs``; ``correlation_ids`` holds the id given to the
    publish, or None for the bus's own (``prefix`` + seq, see
    :meth:`correlation_id`), so a batch builds no id string per event.
    ``topic``, ``seq`` and ``correlation_id`` describe the first event (what
    a ``bus.error`` report about the batch names).  A handler must not keep
    the batch past its call expecting it to stay the same: it is the bus's
    until delivered, then the handler's.
    """

    __slots__ = ("correlation_ids", "payloads", "prefix", "seqs", "topics", "ts")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.topics: list[str] = []
        self.payloads: list[Any] = []
        self.ts: list[int] = []
        self.seqs: list[int] = []
        self.correlation_ids: list[str | None] = []

    def __len__(self) -> int:
        return len(self.seqs)

    def __repr__(self) -> str:
        return f"<EventBatch {len(self)} events from seq {self.seq}>"

    def correlation_id_at(self, index: int) -> str:
        """The correlation id of event ``index`` (the bus's own if none given)."""
        cid = self.correlation_ids[index]
        return f"{self.prefix}{self.seqs[index]}" if cid is None else cid

    def events(self) -> Iterator[Event]:
        """The batch as the envelopes a per-event subscriber gets (equal ones)."""
        prefix = self.prefix
        for topic, payload, ts, seq, cid in zip(
            self.topics, self.payloads, self.ts, self.seqs, self.correlation_ids, strict=True
        ):
            yield _make_event(topic, payload, ts, seq, f"{prefix}{seq}" if cid is None else cid)

    @property
    def topic(self) -> str:
        return self.topics[0]

    @property
    def seq(self) -> int:
        return self.seqs[0]

    @property
    def correlation_id(self) -> str:
        return self.correlation_id_at(0)


@attrs.frozen(slots=True)
class BusErrorInfo:
    """Payload of ``bus.error`` events.

    ``subscriber`` is the failing subscription's name, ``topic`` and
    ``event_seq`` identify the event it failed on, ``error_type`` and
    ``message`` describe the exception (its class name and ``str``).
    """

    subscriber: str
    topic: str
    event_seq: int
    error_type: str
    message: str


class Backpressure(enum.Enum):
    """What publishing does when a subscriber's queue is full."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    FAIL = "fail"


Handler = Callable[[Event], Awaitable[None] | None]
"""An ``async def`` or plain function taking an Event; returns None."""

BatchHandler = Callable[[EventBatch], Awaitable[None] | None]
"""An ``async def`` or plain function taking an EventBatch; returns None."""

Filter = Callable[[Event], bool]
"""Subscriber-side predicate; events for which it is false are not queued."""
