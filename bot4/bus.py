"""In-process event bus for bot4, built on trio.

This module holds :class:`Bus` (subscribing, routing, numbering, publishing)
and :func:`open_bus`, and re-exports the names of the modules it is built
from, so ``from bot4.bus import ...`` stays the one import for all of them:

* :mod:`bot4.bus_events`: the values and errors (``Event``, ``EventBatch``,
  ``BusErrorInfo``, ``Backpressure``, the handler types, the exceptions);
* :mod:`bot4.bus_topics`: topic and pattern validation and matching;
* :mod:`bot4.bus_delivery`: ``Subscription``, and ``BusDelivery``, the
  subscriber side ``Bus`` inherits (queueing, backpressure, delivery tasks,
  ``drain`` and ``close``);
* :mod:`bot4.bus_recording`: ``EventRecorder`` and ``replay``.

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

import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from bot4.bus_delivery import DEFAULT_BATCH_SIZE, BusDelivery, Subscription, _Route
from bot4.bus_events import (
    BUS_ERROR,
    Backpressure,
    BatchHandler,
    BusClosed,
    BusError,
    BusErrorInfo,
    Event,
    EventBatch,
    Filter,
    Handler,
    SubscriberFailed,
    WouldBlock,
    _make_event,
    _new,
    _set_cid,
    _set_payload,
    _set_seq,
    _set_topic,
    _set_ts,
)
from bot4.bus_recording import EventRecorder, replay
from bot4.bus_topics import _check_topic, _match, topic_matches

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

ROUTE_CACHE_SIZE = 65_536
"""Topics cached before the route cache is cleared (bounds its memory)."""

DEFAULT_CAPACITY = 1024


# The publish paths stay in this module and read _make_event and _match as its
# globals: tests patch bot4.bus._make_event and bot4.bus._match to count the
# envelopes built and the topics matched.
class Bus(BusDelivery):
    """The event bus.  Create it with :func:`open_bus`.

    ``Bus(nursery, clock=...)`` works with a nursery you own; call
    :meth:`close` (after :meth:`drain` if you want queued events delivered)
    before that nursery exits.  Subscribing, routing and publishing are
    here; queueing, delivery, ``drain`` and ``close`` are inherited from
    :class:`bot4.bus_delivery.BusDelivery`.
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

    # -- errors

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
