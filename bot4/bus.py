"""In-process event bus for bot4, built on trio.

Design
------
* **Topics** are dot-separated strings (``market.BTC-USDT``, ``order.new``).
  A segment is non-empty and holds no whitespace, ``*`` or ``#``.
* **Patterns** use MQTT/AMQP wildcards: ``*`` matches exactly one segment,
  ``#`` (only as the last segment) matches zero or more trailing segments,
  so ``order.#`` matches ``order`` and ``order.new.limit``.
* **Routing** is cached: the first publish on a topic computes the tuple of
  matching subscriptions; later publishes on that topic are one dict hit.
  Any subscribe/unsubscribe clears the cache.  The cache is bounded
  (``ROUTE_CACHE_SIZE``) because topic spaces such as ``fill.<order id>``
  are unbounded and must not leak memory.
* **Delivery**: every subscription owns a bounded FIFO queue and one
  delivery task in the bus's nursery, so each subscriber sees events in
  publish order and a slow subscriber only delays itself.  (With several
  tasks publishing at once and a full ``BLOCK`` subscriber, their events
  reach it in the order they found room, which may differ from seq order.)  Handlers may be
  ``async def`` or plain functions (called inline by the delivery task; they
  must be quick and return ``None``).  A subscription's optional ``filter``
  predicate runs in the publisher's task; rejected events are never queued.
* **Backpressure** (per subscription, when its queue is full):

  - ``BLOCK``: the publisher waits for room.  This is the one policy where a
    slow subscriber *does* pace the publisher, and through it everyone
    else; use it only for consumers that must not lose events (recorders).
    ``publish_nowait`` raises :class:`WouldBlock` instead of waiting and
    delivers the event to nobody.
  - ``DROP_OLDEST``: the oldest queued event is discarded and
    ``Subscription.dropped`` is incremented; the newest events survive.
  - ``FAIL``: the subscription is closed, its queued events discarded
    (counted in ``dropped``), :attr:`Subscription.error` set to a
    :class:`SubscriberFailed`, and an error event published on
    ``bus.error``; publishing continues for everyone else.

* **Errors in handlers** (and filters) never kill the bus: the exception is
  counted in ``Subscription.failed``, kept in ``Subscription.last_error``,
  reported as an :class:`Event` on ``bus.error`` whose payload is a
  :class:`BusErrorInfo`, and delivery continues with the next event.  An
  error raised while handling a ``bus.error`` event is *not* re-published
  (that would loop forever); it is only counted and kept on the
  subscription.  Events the bus emits itself never block: a full ``BLOCK``
  subscriber misses them (counted in ``dropped``).
* **Events** are frozen :class:`Event` envelopes carrying ``ts`` (event time,
  int ns since the epoch, from the publisher or the bus clock), ``seq``
  (strictly increasing per bus) and ``correlation_id`` (given, or a fresh
  ``<bus prefix>-<seq>`` id, which is unique and cheap).  Use
  :meth:`Bus.reply` (or ``reply_nowait``) to publish a consequence under its
  cause's id.
* **Publishing does not checkpoint** unless it must wait for a full
  ``BLOCK`` subscriber: handlers run when the publishing task next yields.
  A producer loop that never awaits anything else should yield itself
  (``await bus.drain()`` or ``trio.lowlevel.checkpoint()``).
  :meth:`Bus.post` is the synchronous form for hot paths: it makes no
  coroutine unless it must wait, and builds no envelope for a topic that
  no subscriber matches (the seq still advances).
* **Batches**: a subscriber that takes events in bulk (a recorder, a
  report) subscribes with ``on_batch`` and ``batch_topics`` (default
  ``market.*``).  Events on those topics reach it as one
  :class:`EventBatch` (columns: topics, payloads, ts, seqs, correlation
  ids) instead of one envelope each; its other topics reach ``handler`` as
  events.  Order is exact: the open batch is the last item of the
  subscriber's queue and takes consecutive batched events until the
  delivery task takes it, it holds ``batch_size`` events, or any other
  event is queued for that subscriber (which closes it, so the batch is
  delivered before that event, and a later batched event starts a new
  batch).  Draining and closing treat a batch as one queued item, so
  ``drain()`` delivers it.  A batch takes one queue slot (backpressure
  applies when a new one is queued; ``dropped`` counts its events).
  Per-event subscribers of the same topics are unaffected, and
  :meth:`Bus.post` builds an envelope only if one of them matches.
  ``bus.error`` is never batched; a filter cannot be combined with batches.
* **Shutdown**: leaving ``open_bus`` normally drains every queue (all queued
  events are delivered) and then closes the bus, so delivery tasks end on
  their own.  Leaving it with an exception or by cancellation cancels the
  nursery, which cancels running handlers; either way no task outlives the
  ``async with`` block.
* **Replay**: :class:`EventRecorder` streams events to a JSON-lines file,
  :func:`replay` publishes them again with the same ts/seq/correlation ids.

Exceptions
----------
::

    BusError              base class of every bus error (a bot4.errors.Bot4Error)
    ├── WouldBlock        publish_nowait hit a full BLOCK subscriber
    │                     (also a trio.WouldBlock)
    ├── SubscriberFailed  a FAIL subscription overflowed and was closed
    └── BusClosed         publish/subscribe on a closed bus

``BusError`` itself is raised when a handler would wait for itself: it
publishes into its own full ``BLOCK`` queue, or calls ``drain()``.  Invalid
topics and patterns raise :class:`ValueError` naming the value (non-strings
raise :class:`TypeError`).
"""

from __future__ import annotations

import enum
import functools
import json
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from os import PathLike
from types import TracebackType
from typing import Any, TextIO

import attrs
import trio

from bot4.errors import Bot4Error

__all__ = [
    "BUS_ERROR",
    "Backpressure",
    "BatchHandler",
    "Bus",
    "BusClosed",
    "BusError",
    "BusErrorInfo",
    "Event",
    "EventBatch",
    "EventRecorder",
    "Filter",
    "Handler",
    "SubscriberFailed",
    "Subscription",
    "WouldBlock",
    "open_bus",
    "replay",
    "topic_matches",
]

BUS_ERROR = "bus.error"
"""Topic on which the bus reports handler exceptions and FAIL overflows."""

ROUTE_CACHE_SIZE = 65_536
"""Topics cached before the route cache is cleared (bounds its memory)."""

DEFAULT_CAPACITY = 1024

DEFAULT_BATCH_SIZE = 4096
"""Events a batch takes at most before the next one starts a new batch."""


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


def _count(item: Event | EventBatch) -> int:
    """Events in a queued item (a batch holds several)."""
    return len(item) if isinstance(item, EventBatch) else 1


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


# ----------------------------------------------------------------- matching

_SEGMENT = r"[^\s.*#]+"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|#")


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str):
        raise TypeError(f"invalid topic {topic!r}: not a string")
    if _TOPIC_RE.fullmatch(topic) is None:
        raise ValueError(
            f"invalid topic {topic!r}: expected non-empty dot-separated "
            "segments without whitespace, '*' or '#'"
        )


def _compile_pattern(pattern: str) -> tuple[tuple[str, ...], bool]:
    """Split a pattern into (fixed segments, ends with '#')."""
    if not isinstance(pattern, str):
        raise TypeError(f"invalid pattern {pattern!r}: not a string")
    segments = pattern.split(".")
    for i, seg in enumerate(segments):
        if _PATTERN_SEGMENT_RE.fullmatch(seg) is None:
            raise ValueError(
                f"invalid pattern {pattern!r}: segment {seg!r} must be "
                "non-empty, without whitespace, and '*'/'#' must fill a "
                "whole segment"
            )
        if seg == "#" and i != len(segments) - 1:
            raise ValueError(
                f"invalid pattern {pattern!r}: '#' is only allowed as the last segment"
            )
    if segments[-1] == "#":
        return tuple(segments[:-1]), True
    return tuple(segments), False


def _match(fixed: tuple[str, ...], tail: bool, segments: list[str]) -> bool:
    if len(segments) != len(fixed) and not (tail and len(segments) >= len(fixed)):
        return False
    return all(want == "*" or want == got for want, got in zip(fixed, segments, strict=False))


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern``; both are validated."""
    fixed, tail = _compile_pattern(pattern)
    _check_topic(topic)
    return _match(fixed, tail, topic.split("."))


# ------------------------------------------------------------- subscription


class Subscription:
    """One subscriber: its queue, policy, counters and delivery task.

    Counters: ``delivered`` (handler returned normally), ``failed`` (handler
    or filter raised), ``dropped`` (events lost to backpressure); a batch
    counts as its events in ``delivered`` and ``dropped``, as one in
    ``failed``.  ``closed``
    turns true on ``unsubscribe()``, on a FAIL overflow (then ``error`` holds
    the :class:`SubscriberFailed`) and when the bus closes.
    """

    __slots__ = (
        "_batch_fixed",
        "_batch_size",
        "_batch_tail",
        "_blocked",
        "_bus",
        "_busy",
        "_exclude",
        "_fixed",
        "_idle",
        "_limit",
        "_open",
        "_queue",
        "_room",
        "_tail",
        "_task",
        "_waiter",
        "batch_topics",
        "capacity",
        "delivered",
        "dropped",
        "error",
        "failed",
        "filter",
        "handler",
        "last_error",
        "name",
        "on_batch",
        "pattern",
        "policy",
    )

    def __init__(
        self,
        bus: Bus,
        pattern: str,
        handler: Handler,
        filter: Filter | None,
        policy: Backpressure,
        capacity: int,
        name: str,
        on_batch: BatchHandler | None = None,
        batch_topics: str = "market.*",
        batch_size: int = DEFAULT_BATCH_SIZE,
        exclude: str | None = None,
    ) -> None:
        self.name = name
        self.pattern = pattern
        self.handler = handler
        self.filter = filter
        self.policy = policy
        self.capacity = capacity
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self.error: SubscriberFailed | None = None
        self.last_error: Exception | None = None
        self._bus = bus
        self._fixed, self._tail = _compile_pattern(pattern)
        # Topics matching ``exclude`` are not routed here at all: for a topic
        # no one else wants, publishing then builds nothing.
        self._exclude = None if exclude is None else _compile_pattern(exclude)
        # Batches: topics matching both patterns reach ``on_batch`` in an
        # EventBatch; the open batch (``_open``) is the last item of the
        # queue, not yet taken by the delivery task, and takes the next
        # batched event without a queue slot or an envelope.
        self.on_batch = on_batch
        self.batch_topics = batch_topics
        self._batch_fixed, self._batch_tail = _compile_pattern(batch_topics)
        self._batch_size = batch_size
        self._open: EventBatch | None = None
        self._queue: deque[Event | EventBatch] = deque()
        # Room left is `_limit - len(queue)`; closing sets _limit to 0 so a
        # stale route tuple can never enqueue into a dead subscription, at no
        # cost on the fast path (the overflow branch checks `closed`).
        self._limit = capacity
        # Busy = queue non-empty or handler running; feeds Bus.drain().
        self._busy = False
        self._waiter: trio.lowlevel.Task | None = None
        self._task: trio.lowlevel.Task | None = None
        self._room = trio.lowlevel.ParkingLot()  # publishers waiting (BLOCK)
        # Count of those publishers: an int test per delivered event is much
        # cheaper than ParkingLot.__bool__ (a Python-level call).
        self._blocked = 0
        self._idle = trio.lowlevel.ParkingLot()  # Subscription.drain() callers

    @property
    def closed(self) -> bool:
        """True once the subscription no longer receives events."""
        return self._limit == 0

    @property
    def queued(self) -> int:
        """Items waiting in this subscription's queue (a batch is one)."""
        return len(self._queue)

    def unsubscribe(self) -> None:
        """Stop receiving events; queued events are discarded.  Idempotent.

        A handler call already in progress is allowed to finish.
        """
        self._bus._close_subscription(self)

    async def drain(self) -> None:
        """Wait until this subscription's queue is empty and its handler idle.

        Raises :class:`SubscriberFailed` if a FAIL overflow closed it.
        """
        await trio.lowlevel.checkpoint()
        while self._busy:
            await self._idle.park()
        if self.error is not None:
            raise self.error

    def __repr__(self) -> str:
        return (
            f"<Subscription {self.name!r} pattern={self.pattern!r} "
            f"policy={self.policy.name} delivered={self.delivered} "
            f"dropped={self.dropped} failed={self.failed} closed={self.closed}>"
        )


# Cached route: (the subscriptions taking the topic as events, the BLOCK ones
# among all, the subscriptions taking it in batches).  publish_nowait checks
# the second tuple, which is usually empty; the third is usually empty too
# except on market topics.
_Route = tuple[tuple[Subscription, ...], tuple[Subscription, ...], tuple[Subscription, ...]]


# ---------------------------------------------------------------------- bus


class Bus:
    """The event bus.  Create it with :func:`open_bus`.

    ``Bus(nursery, clock=...)`` works with a nursery you own; call
    :meth:`close` (after :meth:`drain` if you want queued events delivered)
    before that nursery exits.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._nursery = nursery
        self._clock = clock
        self._subs: list[Subscription] = []
        self._routes: dict[str, _Route] = {}
        self._seq = 0
        # Random per-bus prefix keeps generated correlation ids unique across
        # buses and processes while costing one f-string per event.
        self._cid_prefix = secrets.token_hex(4) + "-"
        self._busy = 0  # number of busy subscriptions
        self._idle = trio.lowlevel.ParkingLot()  # Bus.drain() callers
        self._delivery_tasks: set[trio.lowlevel.Task] = set()
        # Errors found while routing are queued here and published once the
        # routing loop is done (and always before yielding), so an error
        # event never overtakes the event that caused it.
        self._pending: deque[tuple[BusErrorInfo, str]] = deque()
        self._closed = False
        self._names = 0

    # -- properties

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or ``open_bus`` exited)."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """Sequence number of the last published event (0 if none)."""
        return self._seq

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """Live subscriptions, in subscription order."""
        return tuple(self._subs)

    # -- subscribing

    def subscribe(
        self,
        pattern: str,
        handler: Handler,
        *,
        filter: Filter | None = None,
        policy: Backpressure = Backpressure.BLOCK,
        capacity: int = DEFAULT_CAPACITY,
        name: str | None = None,
        on_batch: BatchHandler | None = None,
        batch_topics: str = "market.*",
        batch_size: int = DEFAULT_BATCH_SIZE,
        exclude: str | None = None,
    ) -> Subscription:
        """Deliver events whose topic matches ``pattern`` (and not
        ``exclude``, when given) to ``handler``.

        Starts the subscription's delivery task in the bus nursery.  Events
        published after this call (even before the task first runs) are
        delivered.  With ``on_batch``, events whose topic also matches
        ``batch_topics`` reach ``on_batch`` in :class:`EventBatch` items of
        at most ``batch_size`` events instead (see the module docstring);
        ``filter`` cannot be combined with batches (it takes an envelope).
        """
        if self._closed:
            raise BusClosed("cannot subscribe: the bus is closed")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if on_batch is not None:
            if batch_size < 1:
                raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
            if filter is not None:
                raise ValueError("a filter cannot be combined with on_batch")
        if name is None:
            self._names += 1
            label = getattr(handler, "__qualname__", type(handler).__name__)
            name = f"{label}#{self._names}"
        sub = Subscription(
            self,
            pattern,
            handler,
            filter,
            policy,
            capacity,
            name,
            on_batch,
            batch_topics,
            batch_size,
            exclude,
        )
        self._subs.append(sub)
        self._routes.clear()
        self._nursery.start_soon(self._deliver, sub, name=f"bus-deliver:{name}")
        return sub

    # -- publishing

    def _route_miss(self, topic: str) -> _Route:
        _check_topic(topic)
        segments = topic.split(".")
        subs = tuple(
            s
            for s in self._subs
            if _match(s._fixed, s._tail, segments)
            and (s._exclude is None or not _match(*s._exclude, segments))
        )
        batched = tuple(
            s
            for s in subs
            if s.on_batch is not None
            and topic != BUS_ERROR  # the bus's own reports are never held in a batch
            and _match(s._batch_fixed, s._batch_tail, segments)
        )
        route = (
            tuple(s for s in subs if s not in batched),
            tuple(s for s in subs if s.policy is Backpressure.BLOCK),
            batched,
        )
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _next_event(
        self, topic: str, payload: Any, correlation_id: str | None, ts: int | None
    ) -> Event:
        self._seq = seq = self._seq + 1
        return _make_event(
            topic,
            payload,
            self._clock() if ts is None else ts,
            seq,
            f"{self._cid_prefix}{seq}" if correlation_id is None else correlation_id,
        )

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        ts: int | None = None,
    ) -> Event:
        """Publish one event and return it.

        Waits only while a matching ``BLOCK`` subscriber is full; otherwise
        returns without yielding (handlers run at the caller's next yield).
        If cancelled while waiting, the event has reached the subscribers
        routed before the full one, and no others.
        """
        if self._closed:
            raise BusClosed(f"cannot publish {topic!r}: the bus is closed")
        route = self._routes.get(topic)
        if route is None:
            route = self._route_miss(topic)
        event = self._next_event(topic, payload, correlation_id, ts)
        if route[2]:
            rest = self._batch_now(route[2], topic, payload, event.ts, event.seq, correlation_id)
            if rest is not None:
                await rest
        rest = self._dispatch_now(route[0], event)
        if rest is not None:
            await rest
        return event

    def post(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        ts: int | None = None,
    ) -> Awaitable[None] | None:
        """:meth:`publish` for a hot path: synchronous unless it must wait.

        Routes the event exactly as ``publish`` does and returns None, with
        no coroutine made and no await, unless a matching ``BLOCK``
        subscriber is full: then it returns an awaitable the caller must
        await at once, which waits for room and delivers to the rest (the
        subscribers routed before the full one already have the event, as
        with ``publish``).  Use it as ``if (w := bus.post(...)) is not None:
        await w``.  A topic no subscriber matches builds no envelope and
        reads no clock: only the seq advances, so later seqs are the same
        as with ``publish``.
        """
        if self._closed:
            raise BusClosed(f"cannot publish {topic!r}: the bus is closed")
        route = self._routes.get(topic)
        if route is None:
            route = self._route_miss(topic)
        subs, _, batched = route
        if batched:
            # Batch subscribers take the event into their open batch: still
            # no envelope, unless a per-event subscriber needs one too.
            self._seq = seq = self._seq + 1
            if ts is None:
                ts = self._clock()
            rest = self._batch_now(batched, topic, payload, ts, seq, correlation_id)
            if not subs:
                return rest
            event = _make_event(
                topic,
                payload,
                ts,
                seq,
                f"{self._cid_prefix}{seq}" if correlation_id is None else correlation_id,
            )
            if rest is not None:
                return self._then_dispatch(rest, subs, event)
            return self._dispatch_now(subs, event)
        if not subs:
            self._seq += 1
            return None
        return self._dispatch_now(subs, self._next_event(topic, payload, correlation_id, ts))

    async def _then_dispatch(
        self, first: Awaitable[None], subs: tuple[Subscription, ...], event: Event
    ) -> None:
        await first
        rest = self._dispatch_now(subs, event)
        if rest is not None:
            await rest

    def _batch_now(
        self,
        subs: tuple[Subscription, ...],
        topic: str,
        payload: Any,
        ts: int,
        seq: int,
        correlation_id: str | None,
    ) -> Awaitable[None] | None:
        """Add one event to each batch subscriber's open batch, or queue a
        new batch holding it; like :meth:`_dispatch_now`, returns a coroutine
        only when a full ``BLOCK`` subscriber must be waited for."""
        for sub in subs:
            batch = sub._open
            if batch is not None:  # the common case: the open batch takes it
                batch.topics.append(topic)
                batch.payloads.append(payload)
                batch.ts.append(ts)
                batch.seqs.append(seq)
                batch.correlation_ids.append(correlation_id)
                if len(batch.seqs) >= sub._batch_size:
                    sub._open = None  # full: the next event starts another
                continue
            batch = EventBatch(self._cid_prefix)
            batch.topics.append(topic)
            batch.payloads.append(payload)
            batch.ts.append(ts)
            batch.seqs.append(seq)
            batch.correlation_ids.append(correlation_id)
            queue = sub._queue
            if len(queue) < sub._limit:
                queue.append(batch)
                if sub._batch_size > 1:
                    sub._open = batch
                if not sub._busy:
                    self._mark_busy(sub)
            elif not self._overflow(sub, batch):
                return self._batch_blocked(
                    subs, subs.index(sub), batch, topic, payload, ts, seq, correlation_id
                )
        return None

    async def _batch_blocked(
        self,
        subs: tuple[Subscription, ...],
        index: int,
        batch: EventBatch,
        topic: str,
        payload: Any,
        ts: int,
        seq: int,
        correlation_id: str | None,
    ) -> None:
        sub = subs[index]
        while not self._overflow(sub, batch):
            await self._wait_for_room(sub, batch)
        rest = self._batch_now(subs[index + 1 :], topic, payload, ts, seq, correlation_id)
        if rest is not None:
            await rest

    async def reply(
        self, to: Event, topic: str, payload: Any = None, *, ts: int | None = None
    ) -> Event:
        """Publish ``payload`` on ``topic`` under ``to``'s correlation id.

        ``ts`` defaults to the bus clock; pass ``ts=to.ts`` to keep the
        cause's event time (makes replayed pipelines clock-independent).
        """
        return await self.publish(topic, payload, correlation_id=to.correlation_id, ts=ts)

    def reply_nowait(
        self, to: Event, topic: str, payload: Any = None, *, ts: int | None = None
    ) -> Event:
        """:meth:`reply` for sync handlers: :meth:`publish_nowait` semantics."""
        return self.publish_nowait(topic, payload, correlation_id=to.correlation_id, ts=ts)

    async def publish_event(self, event: Event) -> None:
        """Publish an existing envelope unchanged (used by :func:`replay`).

        ``event.seq`` must exceed :attr:`last_seq`; the bus continues
        numbering from it.
        """
        if self._closed:
            raise BusClosed(f"cannot publish {event.topic!r}: the bus is closed")
        if event.seq <= self._seq:
            raise ValueError(
                f"cannot publish event seq {event.seq} on {event.topic!r}: "
                f"the bus is already at seq {self._seq} (seq must increase)"
            )
        route = self._routes.get(event.topic)
        if route is None:
            route = self._route_miss(event.topic)
        self._seq = event.seq
        if route[2]:
            await self._dispatch_batched(route[2], event)
        await self._dispatch(route[0], event)

    async def _dispatch_batched(self, subs: tuple[Subscription, ...], event: Event) -> None:
        rest = self._batch_now(
            subs, event.topic, event.payload, event.ts, event.seq, event.correlation_id
        )
        if rest is not None:
            await rest

    async def _dispatch(self, subs: tuple[Subscription, ...], event: Event) -> None:
        rest = self._dispatch_now(subs, event)
        if rest is not None:
            await rest

    def _dispatch_now(self, subs: tuple[Subscription, ...], event: Event) -> Awaitable[None] | None:
        """Route ``event`` to ``subs`` in order without waiting.

        Returns None when every subscriber took it (or dropped it by its
        policy), else a coroutine that waits for the first full ``BLOCK``
        subscriber and then routes to the remaining ones: the caller awaits
        it, so a synchronous caller pays for a coroutine only when it must
        really wait.
        """
        for sub in subs:
            if sub.filter is not None and not self._accepts(sub, event):
                continue
            queue = sub._queue
            if len(queue) < sub._limit:
                queue.append(event)
                sub._open = None  # a batch never takes events queued after this one
                if not sub._busy:
                    self._mark_busy(sub)
            elif not self._overflow(sub, event):
                return self._dispatch_blocked(subs, subs.index(sub), event)
        if self._pending:
            self._flush_errors()
        return None

    async def _dispatch_blocked(
        self, subs: tuple[Subscription, ...], index: int, event: Event
    ) -> None:
        sub = subs[index]
        while not self._overflow(sub, event):
            await self._wait_for_room(sub, event)
        rest = self._dispatch_now(subs[index + 1 :], event)
        if rest is not None:
            await rest

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        ts: int | None = None,
    ) -> Event:
        """Publish without ever waiting.

        Raises :class:`WouldBlock` (and delivers to nobody) if a matching
        ``BLOCK`` subscriber is full.
        """
        if self._closed:
            raise BusClosed(f"cannot publish {topic!r}: the bus is closed")
        route = self._routes.get(topic)
        if route is None:
            route = self._route_miss(topic)
        subs, blockers, batched = route
        event = self._next_event(topic, payload, correlation_id, ts)
        # All-or-nothing: find a full BLOCK subscriber before enqueueing
        # anywhere, so a caller retrying after WouldBlock makes no duplicates.
        # (A batch subscriber with an open batch has room for this event.)
        rejected: list[Subscription] = []
        for sub in blockers:
            if sub in batched:
                if sub._open is None and len(sub._queue) >= sub._limit > 0:
                    if self._seq == event.seq:
                        self._seq -= 1
                    raise WouldBlock(sub.name, topic)
                continue
            if len(sub._queue) >= sub._limit > 0:
                if sub.filter is None or self._accepts(sub, event):
                    if self._seq == event.seq:  # give the unused number back
                        self._seq -= 1
                    raise WouldBlock(sub.name, topic)
                rejected.append(sub)  # filter ran once already: skip below
        if batched:
            never = self._batch_now(batched, topic, payload, event.ts, event.seq, correlation_id)
            assert never is None  # every full BLOCK one was refused above
        for sub in subs:
            if sub.filter is not None and (sub in rejected or not self._accepts(sub, event)):
                continue
            queue = sub._queue
            if len(queue) < sub._limit:
                queue.append(event)
                sub._open = None
                if not sub._busy:
                    self._mark_busy(sub)
            else:
                self._overflow(sub, event)  # BLOCK is excluded by the check above
        if self._pending:
            self._flush_errors()
        return event

    async def publish_batch(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        correlation_id: str | None = None,
        ts: int | None = None,
    ) -> int:
        """Publish ``(topic, payload)`` pairs in order; return how many.

        Equivalent to calling :meth:`publish` for each pair, except that
        events without an explicit ``ts`` share one clock reading (they are
        published at the same instant) and ``correlation_id``, if given,
        applies to all of them.  Like ``publish`` it waits only for full
        ``BLOCK`` subscribers; each subscriber is woken once per batch.
        """
        if self._closed:
            raise BusClosed("cannot publish a batch: the bus is closed")
        if ts is None:
            ts = self._clock()
        # Hot loop: everything looked up once, and no Python-level function
        # call on the common path (cache hit, no filter, room in queue):
        # _make_event is inlined too.
        routes = self._routes
        prefix = self._cid_prefix
        new, set_topic, set_payload, set_ts, set_seq, set_cid = (
            _new,
            _set_topic,
            _set_payload,
            _set_ts,
            _set_seq,
            _set_cid,
        )
        count = 0
        for topic, payload in items:
            route = routes.get(topic)
            if route is None:
                route = self._route_miss(topic)
            self._seq = seq = self._seq + 1
            event = new(Event)
            set_topic(event, topic)
            set_payload(event, payload)
            set_ts(event, ts)
            set_seq(event, seq)
            set_cid(event, f"{prefix}{seq}" if correlation_id is None else correlation_id)
            if route[2]:
                rest = self._batch_now(route[2], topic, payload, ts, seq, correlation_id)
                if rest is not None:
                    await rest
            for sub in route[0]:
                if sub.filter is not None and not self._accepts(sub, event):
                    continue
                queue = sub._queue
                if len(queue) < sub._limit:
                    queue.append(event)
                    sub._open = None
                    if not sub._busy:
                        self._mark_busy(sub)
                else:
                    while not self._overflow(sub, event):
                        await self._wait_for_room(sub, event)
            count += 1
        if self._pending:
            self._flush_errors()
        return count

    # -- slow paths of publishing

    def _accepts(self, sub: Subscription, event: Event) -> bool:
        assert sub.filter is not None
        try:
            return bool(sub.filter(event))
        except Exception as exc:
            # A broken filter is the subscriber's fault: report it like a
            # handler error and do not deliver.
            sub.failed += 1
            sub.last_error = exc
            self._queue_error(sub, event, exc)
            return False

    def _overflow(self, sub: Subscription, event: Event | EventBatch) -> bool:
        """Handle an event (or a new batch) for a subscriber without room.

        Returns False only if the publisher has to wait (BLOCK, still full).
        """
        if sub._limit == 0:  # closed meanwhile: it no longer gets events
            return True
        queue = sub._queue
        if len(queue) < sub._limit:  # room appeared while we waited
            self._enqueue(sub, event)
            return True
        if sub.policy is Backpressure.DROP_OLDEST:
            sub.dropped += _count(queue.popleft())
            self._enqueue(sub, event)
            return True
        if sub.policy is Backpressure.FAIL:
            error = SubscriberFailed(sub.name, event.topic, sub.capacity)
            sub.error = error
            sub.dropped += sum(map(_count, queue)) + _count(event)
            self._close_subscription(sub)
            self._queue_error(sub, event, error)
            return True
        return False

    def _enqueue(self, sub: Subscription, item: Event | EventBatch) -> None:
        sub._queue.append(item)
        # A new batch is open for more events; anything else closes the one
        # before it, so batched events never overtake it.
        sub._open = item if isinstance(item, EventBatch) and sub._batch_size > 1 else None
        if not sub._busy:
            self._mark_busy(sub)

    async def _wait_for_room(self, sub: Subscription, event: Event | EventBatch) -> None:
        if trio.lowlevel.current_task() is sub._task:
            raise BusError(
                f"handler of {sub.name!r} published {event.topic!r} into its own "
                "full BLOCK queue; this would deadlock"
            )
        if self._pending:  # never hold error events across a yield
            self._flush_errors()
        sub._blocked += 1
        try:
            await sub._room.park()
        finally:
            sub._blocked -= 1

    def _mark_busy(self, sub: Subscription) -> None:
        sub._busy = True
        self._busy += 1
        task = sub._waiter
        if task is not None:
            sub._waiter = None
            trio.lowlevel.reschedule(task)

    # -- errors

    def _queue_error(
        self, sub: Subscription, event: Event | EventBatch, exc: BaseException
    ) -> None:
        if event.topic == BUS_ERROR:
            return  # errors about error events would loop; kept on `sub` only
        info = BusErrorInfo(
            subscriber=sub.name,
            topic=event.topic,
            event_seq=event.seq,
            error_type=type(exc).__name__,
            message=str(exc),
        )
        self._pending.append((info, event.correlation_id))

    def _flush_errors(self) -> None:
        """Publish queued ``bus.error`` events without ever waiting."""
        while self._pending:
            info, correlation_id = self._pending.popleft()
            if self._closed:
                continue
            route = self._routes.get(BUS_ERROR)
            if route is None:
                route = self._route_miss(BUS_ERROR)
            event = self._next_event(BUS_ERROR, info, correlation_id, None)
            for sub in route[0]:
                if sub.filter is not None and not self._accepts(sub, event):
                    continue
                if sub._limit == 0:
                    continue
                if len(sub._queue) >= sub._limit and sub.policy is Backpressure.BLOCK:
                    sub.dropped += 1  # bus-emitted events never block
                    continue
                # Errors raised here concern a bus.error event, so
                # _queue_error adds nothing and this loop terminates.
                self._overflow(sub, event)

    # -- delivery

    async def _deliver(self, sub: Subscription) -> None:
        """Delivery task: run ``sub``'s handler on its queue, in order."""
        me = trio.lowlevel.current_task()
        sub._task = me
        self._delivery_tasks.add(me)
        queue = sub._queue
        handler = sub.handler
        on_batch = sub.on_batch
        try:
            while True:
                if not queue:
                    if sub._limit == 0:
                        return
                    self._set_idle(sub)
                    await self._park(sub)
                    continue
                # Handle at most the events queued now, then yield if more
                # arrived: bounds how long this task can hog the scheduler.
                for _ in range(len(queue)):
                    if not queue:
                        break  # unsubscribed by the handler
                    event = queue.popleft()
                    if sub._blocked:
                        sub._room.unpark()
                    try:
                        if isinstance(event, EventBatch):
                            if event is sub._open:
                                sub._open = None  # taken: it must not grow any more
                            assert on_batch is not None
                            result = on_batch(event)
                            count = len(event)
                        else:
                            result = handler(event)
                            count = 1
                        if result is not None:
                            await result
                    except Exception as exc:
                        sub.failed += 1
                        sub.last_error = exc
                        self._queue_error(sub, event, exc)
                        if self._pending:
                            self._flush_errors()
                    else:
                        sub.delivered += count
                if queue:
                    await trio.lowlevel.checkpoint()
        finally:
            self._delivery_tasks.discard(me)
            self._set_idle(sub)

    def _set_idle(self, sub: Subscription) -> None:
        if sub._busy:
            sub._busy = False
            self._busy -= 1
            if self._busy == 0 and self._idle:
                self._idle.unpark_all()
        if sub._idle:
            sub._idle.unpark_all()

    async def _park(self, sub: Subscription) -> None:
        # Hand-rolled single-waiter park: cheaper than a ParkingLot on the
        # per-batch wakeup path, and only ever one task waits here.
        sub._waiter = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            sub._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    # -- draining and closing

    async def drain(self) -> None:
        """Wait until every queue is empty and every handler is idle.

        Events published by handlers meanwhile are waited for too.  Must not
        be called from a handler (it would wait for itself): raises BusError.
        """
        if trio.lowlevel.current_task() in self._delivery_tasks:
            raise BusError("drain() called from a bus handler would wait for itself")
        await trio.lowlevel.checkpoint()
        while self._busy:
            await self._idle.park()

    def _close_subscription(self, sub: Subscription) -> None:
        if sub._limit == 0:
            return
        sub._limit = 0
        sub._open = None
        sub._queue.clear()
        self._subs.remove(sub)
        self._routes.clear()
        sub._room.unpark_all()  # blocked publishers skip it from now on
        task = sub._waiter
        if task is not None:  # parked delivery task: let it exit
            sub._waiter = None
            trio.lowlevel.reschedule(task)

    def close(self) -> None:
        """Close the bus and every subscription; queued events are discarded.

        Delivery tasks finish their current handler call and exit.
        Idempotent.
        """
        self._closed = True
        for sub in list(self._subs):
            self._close_subscription(sub)


@asynccontextmanager
async def open_bus(*, clock: Callable[[], int] = time.time_ns) -> AsyncIterator[Bus]:
    """Open a bus whose delivery tasks live in a nursery owned by the block.

    ``clock`` returns int nanoseconds since the epoch and stamps events
    published without ``ts``.  On normal exit the bus is drained, then
    closed; on an exception or cancellation running handlers are cancelled.
    Draining waits for every handler, so a handler that never returns keeps
    the block open: bound it with ``trio.fail_after`` if that can happen.
    """
    try:
        async with trio.open_nursery() as nursery:
            bus = Bus(nursery, clock=clock)
            try:
                yield bus
                await bus.drain()
            finally:
                bus.close()
    except BaseExceptionGroup as group:
        # Delivery tasks never raise (handler errors become bus.error), so a
        # one-member group is just the body's own exception wrapped by the
        # strict nursery: re-raise it bare so callers can catch it normally.
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        context = inner.__context__
        try:
            raise inner
        finally:
            inner.__context__ = context


# -------------------------------------------------------------------- replay


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
        bus: Bus,
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
    bus: Bus,
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
