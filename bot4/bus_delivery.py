"""Subscriptions and the bus's subscriber side: queues, backpressure,
delivery tasks, draining and closing.

A :class:`Subscription` is one subscriber's bounded queue, policy and
counters.  :class:`BusDelivery` is the part of :class:`bot4.bus.Bus` that
works on those queues once routing has chosen the subscriptions for an
event: it queues the event (or adds it to the open batch), applies the
policy when a queue is full, runs one delivery task per subscription,
reports handler and filter errors, and drains and closes.  Routing,
numbering, envelopes and the publish methods are in :mod:`bot4.bus`, whose
docstring describes the design; ``Bus`` subclasses ``BusDelivery``, and this
module does not import ``bot4.bus``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bot4.bus_events import (
    BUS_ERROR,
    Backpressure,
    BatchHandler,
    BusError,
    BusErrorInfo,
    Event,
    EventBatch,
    Filter,
    Handler,
    SubscriberFailed,
)
from bot4.bus_topics import _compile_pattern

__all__ = ["DEFAULT_BATCH_SIZE", "BusDelivery", "Subscription"]

DEFAULT_BATCH_SIZE = 4096
"""Events a batch takes at most before the next one starts a new batch."""


def _count(item: Event | EventBatch) -> int:
    """Events in a queued item (a batch holds several)."""
    return len(item) if isinstance(item, EventBatch) else 1


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
        bus: BusDelivery,
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


class BusDelivery:
    """The subscriber side of :class:`bot4.bus.Bus`, which subclasses it.

    A base class rather than a collaborator the bus calls: the publish paths
    call these methods for every event, and an inherited method costs the
    same lookup as the class's own, where a collaborator would add one.
    The state below is set by ``Bus.__init__``.  ``_flush_errors``, which
    publishes the queued ``bus.error`` reports, is the bus's own: it routes
    and numbers them like any event.
    """

    _subs: list[Subscription]
    _routes: dict[str, _Route]
    _cid_prefix: str
    _busy: int
    _idle: trio.lowlevel.ParkingLot
    _delivery_tasks: set[trio.lowlevel.Task]
    _pending: deque[tuple[BusErrorInfo, str]]
    _closed: bool
    _flush_errors: Callable[[], None]

    # -- queueing routed events

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

    async def _dispatch(self, subs: tuple[Subscription, ...], event: Event) -> None:
        rest = self._dispatch_now(subs, event)
        if rest is not None:
            await rest

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

    async def _dispatch_batched(self, subs: tuple[Subscription, ...], event: Event) -> None:
        rest = self._batch_now(
            subs, event.topic, event.payload, event.ts, event.seq, event.correlation_id
        )
        if rest is not None:
            await rest

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

    # -- errors (queued here; Bus._flush_errors publishes them)

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
