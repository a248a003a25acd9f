"""The journal writer: the kernel's write-ahead hook and the bus subscriber,
batching everything into few transactions (group commit).

Batching. Records queue in memory and are written in one transaction per
batch (``Store.append``: one ``executemany`` per table, one ``journal_orders``
statement per order): when ``batch`` records are queued, every ``interval``
seconds otherwise (256 and 50 ms against a live venue; 4096 and 0.5 s against
a paper one, where nobody outside the process waits for a record), with the
next durable intent or checkpoint, and a last
time when the writer stops (a clean stop, a signal, the end of the data: the
session drains the bus first, so every event it published is written). The
queue is bounded: past ``8 * batch`` records the bus subscriber waits for the
flush (a ``BLOCK`` subscription), which slows the kernel instead of losing
anything.

The write-ahead intent, by :class:`VenueKind` (set explicitly by the session
from the exchange, :func:`venue_kind`):

* ``LIVE``, a venue whose state outlives this process (a real exchange, the
  paper exchange with a ``state:`` file, any exchange that does not say
  otherwise): :meth:`JournalWriter.write_ahead` commits the intent, with every
  record queued before it, in a durable transaction (``synchronous=FULL`` /
  ``synchronous_commit=on`` with ``intent_sync="full"``) and returns only then;
  the kernel calls ``place_order`` after it. A failed commit raises and the
  kernel rejects the order (rule ``journal``). A crash at any point leaves
  every intent of an order that may have reached the venue in the journal;
  what it can lose is the records queued since the last commit (at most
  ``interval`` old: acknowledgements, updates and fills, which recovery
  fetches again from the venue, and decisions about them).
* ``PAPER``, a venue that dies with the process (the in-memory paper and
  replay venues): nothing leaves the process, so a crash loses the venue's
  orders with the journal's and there is nothing to reconcile. The intent is
  queued like every other record (still before the order's own records) and
  rides the next batch: a crash loses the records after the last committed
  batch, intents included. Only here may records be lost.

A database outage (:mod:`bot4.journal.spill`). A write that fails keeps its
records: with a spill file (the session service gives one, next to the
session's output) the failed batch is appended to it, fsynced, and memory
holds no more than the batch being written; every later write first writes
what the spill holds, in order, so the records reach the journal in the
order they were queued, each exactly once (a journal_state mark written
with every batch says how far this writer got). Meanwhile every intent
fails, so every new order is refused (rule ``journal``) and those refusals
are kept like the rest. A stop during the outage leaves the spill for the
next start, which writes it before anything else. One line is logged when
the journal goes away and one when it is back.

Metrics: with ``metrics`` (the session's :class:`bot4.metrics.Metrics`)
every write is timed (``observe_journal_write``), every failure counted,
and the queue depth (memory and spill) and the age of its oldest record are
reported after each flush.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, Protocol

import trio

from bot4.bus import Backpressure, Bus, Event, EventBatch
from bot4.journal.errors import JournalError
from bot4.journal.facade import Journal
from bot4.journal.records import Record, RecordKind
from bot4.journal.riskstate import PEAK_KEY, cleared_key, peak_to_journal
from bot4.journal.spill import SpillFile, mark_key
from bot4.model import Approved, Fill, MarketData, Order, OrderState, Rejected, RiskAction
from bot4.model import RiskActionKind as _Kind
from bot4.portfolio import PortfolioTracker
from bot4.protection import TOPIC as PROTECTION_TOPIC

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_INTERVAL",
    "PAPER_BATCH",
    "PAPER_INTERVAL",
    "JournalMetrics",
    "JournalWriter",
    "VenueKind",
    "venue_kind",
]

log = logging.getLogger("bot4.journal")

_TOPICS = ("risk.", "order.", "fill.", "kernel.")
_RULE_PREFIX = re.compile(r"^([a-z0-9][a-z0-9._-]*): ")
DEFAULT_BATCH = 256
DEFAULT_INTERVAL = 0.05
# Against a paper-kind venue nothing outside the process waits for a record
# and a crash may lose the batch anyway: fewer, larger transactions. A commit
# costs about as much as writing a hundred records, and at 50 ms a batch held
# a few dozen (profiled on bench_journal's kernel case).
PAPER_BATCH = 4096
PAPER_INTERVAL = 0.5


class JournalMetrics(Protocol):
    """The hooks :class:`bot4.metrics.Metrics` gives the journal."""

    def observe_journal_write(self, seconds: float) -> None: ...

    def set_journal_queue(self, depth: int, lag_seconds: float) -> None: ...

    def count_journal_failure(self) -> None: ...


class VenueKind(enum.Enum):
    """Whether the venue's orders outlive this process (the write-ahead
    protocol the journal follows for it)."""

    LIVE = "live"  # intents committed durably before place_order
    PAPER = "paper"  # intents ride the batch: the venue dies with the process


def venue_kind(exchange: object) -> VenueKind:
    """The kind of ``exchange``: ``PAPER`` only when it says its state does
    not survive the process (``durable = False``: the in-memory paper and
    replay venues); any other exchange is ``LIVE``, the safe side."""
    return VenueKind.PAPER if getattr(exchange, "durable", True) is False else VenueKind.LIVE


class JournalWriter:
    """The kernel's write-ahead hook and the bus subscriber, over one journal."""

    def __init__(
        self,
        journal: Journal,
        *,
        batch: int | None = None,
        interval: float | None = None,
        market_data: bool = False,
        shadow: PortfolioTracker | None = None,
        venue: VenueKind,
        spill: SpillFile | None = None,
        metrics: JournalMetrics | None = None,
    ) -> None:
        self.journal = journal
        # Where failed batches wait for the journal (None: in memory).
        self.spill = spill
        self.metrics = metrics
        # Each record's index, in queue order, and the journal_state mark
        # that says how far they are written (bot4.journal.spill).
        self._next = 0
        self._key = mark_key(spill.token if spill is not None else uuid.uuid4().hex)
        # Set by the session service: journal_state marks the last flush of a
        # clean stop writes (the run's end, bot4.journal.runs).
        self.closing_marks: Callable[[], Sequence[tuple[str, str]]] | None = None
        self._behind_since: float | None = None  # monotonic time of the oldest unwritten
        self._down_since: float | None = None  # the journal's outage, while it lasts
        # The one switch between the two write-ahead protocols (the module's
        # docstring): set by the session from the exchange it trades on.
        self.venue = venue
        self.wait_for_intents = venue is VenueKind.LIVE
        paper = venue is VenueKind.PAPER
        if batch is None:
            batch = PAPER_BATCH if paper else DEFAULT_BATCH
        self.batch = max(1, batch)
        if interval is None:
            interval = PAPER_INTERVAL if paper else DEFAULT_INTERVAL
        self.interval = interval
        self.market_data = market_data
        # Positions as the journal saw them, for the position records.
        self.shadow = shadow if shadow is not None else PortfolioTracker()
        self._pending: list[Record] = []
        self._ticks: list[MarketData] = []
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._clock: Callable[[], int] = time.time_ns
        self._trips_hooked = False  # breaker trips come from the breaker's hook
        self.intents = 0
        self.flushes = 0
        self.records = 0
        self.errors = 0
        self.last_error: str = ""

    # -- the write-ahead (kernel -> journal) ------------------------------------

    async def write_ahead(self, order: Order) -> None:
        """Commit the intent (and whatever is queued) before the order is sent."""
        if not self.wait_for_intents:
            self.intents += 1
            self.enqueue(Record.intent(order, time.time_ns()))
            return
        async with self._lock:
            batch, self._pending = self._pending, []
            batch.append(Record.intent(order, time.time_ns()))
            # On failure the queued records are kept; the intent is void.
            await self._commit(batch, durable=True, keep=len(batch) - 1)
            self.intents += 1

    # -- the bus (everything else) ------------------------------------------------

    def attach(
        self,
        bus: Bus,
        policy: Any = None,
        *,
        tracker: PortfolioTracker | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """Subscribe to the bus, then :meth:`attach_hooks`."""
        # Every topic comes in batches (bot4.bus): no envelope is built and no
        # handler is called per event for the journal, which was most of its
        # cost on the kernel's side of the order path. Ticks are kept only
        # with ``market_data``; without it they are not routed here at all,
        # so a tick no one else wants costs the bus nothing. The topics kept
        # are chosen in the handler (a filter cannot go with batches); the
        # bus's own reports (never batched) reach _on_other, which drops them.
        bus.subscribe(
            "#",
            self._on_other,
            on_batch=self._on_batch,
            batch_topics="#",
            policy=Backpressure.BLOCK,
            capacity=4096,
            name="journal",
            exclude=None if self.market_data else "market.*",
        )
        self.attach_hooks(policy, tracker, clock=clock)

    def attach_hooks(
        self,
        policy: Any = None,
        tracker: PortfolioTracker | None = None,
        *,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """Hear of the risk state that must survive a restart: the breaker's
        trips and resets and the windows' events (``policy``), the peak
        equity (``tracker``). ``clock`` gives the event time to stamp state
        with (the kernel's)."""
        if clock is not None:
            self._clock = clock
        breaker = getattr(policy, "breaker", None)
        if breaker is not None and hasattr(breaker, "on_reset"):
            breaker.on_reset(self._breaker_reset)
        if breaker is not None and hasattr(breaker, "on_trip"):
            breaker.on_trip(self._breaker_trip)
            self._trips_hooked = True
        if hasattr(policy, "watch_windows"):
            policy.watch_windows(self._window_event)
        if tracker is not None:
            tracker.watch_peak(self._new_peak)

    def _breaker_reset(self) -> None:
        self._pending.append(Record.breaker(False, "", time.time_ns(), rule="reset"))
        self._wake.set()

    def _breaker_trip(self, reason: str, now_ns: int) -> None:
        # A rule's trip reads "<rule>: <reason>": keep the rule on the record
        # (``bot4 journal show --rule``), as the risk action has it.
        named = _RULE_PREFIX.match(reason)
        rule = named.group(1) if named else "breaker"
        self._pending.append(Record.breaker(True, reason, now_ns, rule=rule))
        self._wake.set()

    # -- risk state (kernel, policy, tracker -> journal) ---------------------------

    def note(self, key: str, value: Any, ts_ns: int, symbol: str | None = None) -> None:
        """Queue the new value of a risk-state key (``None`` clears it)."""
        self.enqueue(Record.risk_state(key, value, ts_ns, symbol))

    def _window_event(self, kind: str, symbol: str, ts_ns: int) -> None:
        if ts_ns < 0:  # the windows forgot this kind (a breaker reset)
            self.note(cleared_key(kind), {}, self._clock())
        else:
            self.enqueue(Record.risk_event(kind, symbol, ts_ns))

    def _new_peak(self, peak: Decimal) -> Decimal:
        # Journal the peak rounded up and hear of it again only above that:
        # a restored peak is never below the true one, and a rising book
        # writes one record per 0.01 % of new high, not one per tick.
        level = peak_to_journal(peak)
        self.note(PEAK_KEY, {"peak": str(level)}, self._clock())
        return level

    async def checkpoint(self) -> None:
        """Commit everything queued now, durably, when the venue outlives the
        process; against a venue that does not (nothing is restored) just
        hurry the next flush."""
        if not self.wait_for_intents:
            self._wake.set()
            return
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self._commit(batch, durable=True)
            except JournalError as exc:  # kept; the writer's next flush retries
                self._failed(exc, "checkpoint")

    # -- writing, and keeping what could not be written ----------------------------

    async def _commit(
        self,
        batch: list[Record],
        *,
        durable: bool,
        keep: int | None = None,
        marks: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Write what the spill holds, then ``batch`` and ``marks`` (with the
        lock held). A :class:`JournalError` keeps the first ``keep`` records
        of the batch (all of them by default: spilled, or back in the queue)
        and is raised."""
        start = self._next
        self._next += len(batch)
        began = time.monotonic()
        try:
            if self.spill is not None and self.spill.count:
                written = await self.journal.replay_spill(self.spill, self.batch)
                self.records += written
            if self.spill is not None:
                marks = ((self._key, json.dumps(self._next)), *marks)
            await self.journal.append(batch, durable=durable, marks=marks)
        except JournalError:
            await self._keep(start, batch if keep is None else batch[:keep])
            raise
        except BaseException:  # cancelled or a bug: keep them in memory
            self._pending[:0] = batch if keep is None else batch[:keep]
            raise
        if self.metrics is not None:
            self.metrics.observe_journal_write(time.monotonic() - began)
        self.flushes += 1
        self.records += len(batch)
        if self._down_since is not None:
            log.warning(
                "journal %s is back after %.1f s: every record kept meanwhile is written",
                self.journal.location,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        # What arrived during the write is no older than its start.
        self._behind_since = began if self._pending else None

    async def _keep(self, start: int, records: list[Record]) -> None:
        if self.metrics is not None:
            self.metrics.count_journal_failure()
        if not records:
            return
        if self.spill is not None:
            try:
                await trio.to_thread.run_sync(self.spill.append, start, records)
            except OSError as exc:  # a full or broken disk: memory is what is left
                log.error("journal spill %s failed: %s", self.spill.path, exc)  # noqa: TRY400
            else:
                return
        self._pending[:0] = records

    def _failed(self, exc: JournalError, what: str) -> None:
        self.errors += 1
        self.last_error = str(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
            where = f"kept in {self.spill.path}" if self.spill is not None else "kept in memory"
            # One line per outage, no traceback: the error names the journal.
            log.error(
                "journal %s failed: %s; new orders are refused (rule journal), "
                "records are %s until it is back",
                what,
                exc,
                where,
            )

    def _report_queue(self) -> None:
        if self.metrics is None:
            return
        depth = len(self._pending) + (self.spill.count if self.spill is not None else 0)
        if depth == 0:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()
        lag = time.monotonic() - self._behind_since if self._behind_since is not None else 0.0
        self.metrics.set_journal_queue(depth, lag)

    def enqueue(self, record: Record) -> None:
        if not self._pending and self._behind_since is None:
            self._behind_since = time.monotonic()
        self._pending.append(record)
        if len(self._pending) >= self.batch:
            self._wake.set()

    def _on_other(self, event: Event) -> Awaitable[None] | None:
        if event.topic.startswith(_TOPICS):
            self._take(event.topic, event.payload, event.ts, event.correlation_id)
            return self._backpressure()
        return None

    def _on_batch(self, batch: EventBatch) -> Awaitable[None] | None:
        """A batch of events, in publish order: the records they make.
        Synchronous unless the queue is past its bound (then the bus waits,
        BLOCK, for the flush this returns)."""
        take, payloads, stamps = self._take, batch.payloads, batch.ts
        for i, topic in enumerate(batch.topics):
            take(topic, payloads[i], stamps[i], batch.correlation_id_at(i))
        return self._backpressure()

    def _take(self, topic: str, payload: Any, ts: int, cid: str) -> None:
        """The records of one event (none for a topic the journal does not keep)."""
        if topic.startswith("market."):
            if self.market_data and isinstance(payload, MarketData):
                self._ticks.append(payload)
                if len(self._ticks) >= self.batch:
                    self._wake.set()
            return
        if topic in ("risk.approved", "risk.rejected") and isinstance(payload, Approved | Rejected):
            self.enqueue(Record.decision(payload, ts, cid))
        elif topic == "risk.action" and isinstance(payload, RiskAction):
            self.enqueue(Record.action(payload, ts))
            if payload.kind is _Kind.TRIP_BREAKER and not self._trips_hooked:
                self.enqueue(Record.breaker(True, payload.reason, ts, rule=payload.rule))
        elif topic in ("order.placed", "order.update") and isinstance(payload, OrderState):
            self.enqueue(Record.state(payload, ts, ack=topic == "order.placed"))
        elif topic.startswith("fill.") and isinstance(payload, Fill):
            self.enqueue(Record.fill(payload, ts))
            self.shadow.apply(payload)
            position = self.shadow.position(payload.symbol)
            body: Any = position if position is not None else {"symbol": payload.symbol, "qty": "0"}
            self.enqueue(
                Record(RecordKind.POSITION, body, ts, payload.client_order_id, payload.symbol)
            )
        elif topic == "kernel.halted":
            self.enqueue(Record(RecordKind.HALT, {"reason": str(payload)}, ts))
        elif topic == "kernel.error":
            self.enqueue(Record(RecordKind.ERROR, {"message": str(payload)}, ts))
        elif topic == PROTECTION_TOPIC and isinstance(payload, dict):
            symbol = str(payload.get("symbol"))
            self.enqueue(Record(RecordKind.PROTECTION, payload, ts, symbol=symbol))

    def _backpressure(self) -> Awaitable[None] | None:
        if len(self._pending) >= 8 * self.batch:
            return self._flush_behind()
        return None

    async def _flush_behind(self) -> None:
        try:
            await self.flush()  # backpressure: the bus (BLOCK) waits for us
        except JournalError as exc:  # kept (spilled); the timer retries
            self._failed(exc, "flush")

    # -- group commit ---------------------------------------------------------------

    async def flush(self, marks: Sequence[tuple[str, str]] = ()) -> None:
        """Write everything queued (after the spill); ``marks`` ride along.
        Raises :class:`JournalError` with the records kept."""
        async with self._lock:
            batch, self._pending = self._pending, []
            ticks, self._ticks = self._ticks, []
            if batch or marks or (self.spill is not None and self.spill.count):
                # The marks of a clean stop are durable, with the last records.
                await self._commit(batch, durable=bool(marks), marks=marks)
            if ticks:
                await self.journal.append_market(ticks)

    async def run(self) -> None:
        """Flush on the timer or when a batch is full; flush and close at the end."""
        try:
            while True:
                with trio.move_on_after(self.interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                try:
                    await self.flush()
                except JournalError as exc:  # kept; the next flush retries
                    self._failed(exc, "flush")
                    self._report_queue()
                    await trio.sleep(min(1.0, self.interval * 10))
                self._report_queue()
        finally:
            with trio.CancelScope(shield=True):
                marks = self.closing_marks() if self.closing_marks is not None else ()
                try:
                    await self.flush(marks)
                except JournalError as exc:
                    self.errors += 1
                    self.last_error = str(exc)
                    kept = self.spill.count if self.spill is not None else len(self._pending)
                    where = self.spill.path if self.spill is not None else "memory (lost)"
                    log.error(  # noqa: TRY400 - the error names the journal
                        "journal: last flush failed: %s; %d records kept in %s, written "
                        "when this session next starts",
                        exc,
                        kept,
                        where,
                    )
                self._report_queue()
                await self.journal.aclose()
