"""The journal as a session service: what ``bot4 run`` plugs in by default.

:func:`journal_service` (called from :func:`bot4.session.default_services`)
opens the journal named by the config's ``journal`` key, else
``$BOT4_DATABASE_URL``, else ``<out>/journal.sqlite``; runs recovery
(:mod:`bot4.journal.recovery`) before the kernel starts; then:

* sets ``kernel.journal`` to a :class:`~bot4.journal.writer.JournalWriter`
  told the venue's kind (:func:`~bot4.journal.writer.venue_kind`): against a
  live venue its ``write_ahead`` commits the order intent (with everything
  queued before it) durably *before* the kernel calls ``place_order`` (a
  commit that fails raises, and the kernel rejects the order, rule
  ``journal``: no durable intent, no order); against the in-memory paper
  venue the intent rides the next batch (:mod:`bot4.journal.writer`);
* subscribes to the bus (one ``BLOCK`` subscription, so nothing is dropped:
  a journal that falls behind slows the kernel down instead) for decisions
  (``risk.approved``/``risk.rejected``, with the deciding rule), risk actions,
  acknowledgements (``order.placed``), order updates, fills (each followed by
  the position it leaves), halts, kernel errors and the protective levels
  kept for each position (``kernel.protection``);
* keeps the risk state a restart must not lose (:mod:`bot4.journal.riskstate`):
  breaker trips and resets from the breaker's own hooks, every event the
  rules' windows count (from the policy), the peak equity when it rises
  (from the tracker, rounded up, at most one record per 0.01 % of new high)
  and the ladder latches (``kernel.risk_journal``); the kernel calls
  :meth:`JournalWriter.checkpoint` after a trip, a stop-out or a rung, which
  commits the queue durably before it goes on;
* writes those in batches (group commit): a flush when ``batch`` records are
  queued, every ``interval`` seconds otherwise, always together with the next
  intent, and a last one when the session ends. Records queued past
  ``8 * batch`` make the subscriber wait for the flush (backpressure);
* keeps what the database cannot take during an outage in
  ``<out>/journal-spill.jsonl`` (:mod:`bot4.journal.spill`) and writes it
  when the database is back; a spill an earlier run left (it stopped, or
  died, during an outage) is written first, before this run's session
  record, exactly once;
* counts the runs of the session id and logs a restart loop
  (:mod:`bot4.journal.runs`); reports write latency, queue depth and lag and
  failures to the session's metrics.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from bot4.journal import open_store, resolve_target
from bot4.journal.facade import CALL_TIMEOUT, Journal
from bot4.journal.records import Record, RecordKind
from bot4.journal.recovery import RecoveryReport, recover
from bot4.journal.riskstate import RunHistory
from bot4.journal.runs import RunStart, end_of_run, runs_key, start_of_run
from bot4.journal.spill import SPILL_FILE, SpillFile
from bot4.journal.store import Store
from bot4.journal.writer import (
    JournalWriter,
    VenueKind,
    venue_kind,
)
from bot4.portfolio import PortfolioTracker

__all__ = [
    "JournalService",
    "JournalWriter",
    "VenueKind",
    "journal_for",
    "journal_service",
    "venue_kind",
]

log = logging.getLogger("bot4.journal")


class JournalService:
    """A :data:`bot4.session.SessionService` that journals the session."""

    def __init__(
        self,
        target: str,
        *,
        batch: int | None = None,
        interval: float | None = None,
        intent_sync: str | None = None,
        market_data: bool = False,
        schema: str | None = None,
        timeout: float | None = CALL_TIMEOUT,
    ) -> None:
        self.target = target
        self.timeout = timeout  # seconds a write may take before orders are refused
        self.batch = batch
        self.interval = interval
        self.intent_sync = intent_sync
        self.market_data = market_data
        self.schema = schema
        self.report: RecoveryReport | None = None
        self.history: RunHistory | None = None
        self.writer: JournalWriter | None = None
        self.run_start: RunStart | None = None
        self.replayed = 0  # records an earlier run's spill held, written at this start

    async def __call__(self, ctx: Any, nursery: trio.Nursery) -> None:
        venue = venue_kind(ctx.exchange)
        durable_venue = venue is VenueKind.LIVE
        # An fsync per intent buys nothing when the venue itself forgets
        # everything with the process (the in-memory paper exchange).
        sync = self.intent_sync or ("full" if durable_venue else "normal")

        def opener() -> Store:
            return open_store(self.target, lock=True, intent_sync=sync, schema=self.schema)

        store = await trio.to_thread.run_sync(opener)
        journal = journal_for(store, venue, timeout=self.timeout)
        shadow = PortfolioTracker()
        spill_path = Path(ctx.out) / SPILL_FILE
        session_id = ctx.config.session_id
        try:
            # An earlier run stopped (or died) with the journal down: its
            # records first, before anything of this run.
            left = await trio.to_thread.run_sync(SpillFile.existing, spill_path)
            if left is not None:
                self.replayed = await journal.replay_spill(left, 1024)
                log.warning(
                    "journal: %d records an earlier run kept in %s are written to %s",
                    self.replayed,
                    spill_path,
                    journal.location,
                )
            start = start_of_run(await journal.state_value(runs_key(session_id)), pid=os.getpid())
            self.run_start = start
            loop = start.line(session_id)
            if loop is not None:
                log.warning("%s", loop)
            session = {
                "session_id": ctx.config.session_id,
                "exchange": ctx.config.exchange,
                "fresh_venue": not durable_venue,
                "pid": os.getpid(),
            }
            session_seq = await journal.append(
                [Record(RecordKind.SESSION, session, time.time_ns())],
                durable=True,
                marks=(start.mark(session_id),),
            )
            self.report = await recover(
                journal,
                ctx.exchange,
                tracker=ctx.tracker,
                kernel=ctx.kernel,
                policy=ctx.policy,
                session_id=ctx.config.session_id,
                fresh_venue=not durable_venue,
                shadow=shadow,
            )
            # The earlier runs of this session: those of the venue epoch.
            epoch = int((await journal.state()).get("epoch", 0))
            history = await journal.history(epoch, session_seq)
            self.history = attrs.evolve(
                history,
                fills=self.report.fills_replayed + self.report.fills_recovered,
                starts=start.run,
                restarts=start.restarts,
            )
        except BaseException:
            await journal.aclose()
            raise
        writer = JournalWriter(
            journal,
            batch=self.batch,
            interval=self.interval,
            market_data=self.market_data,
            shadow=shadow,
            venue=venue,
            spill=SpillFile.for_writer(spill_path, journal.location),
            metrics=ctx.metrics,
        )

        def clean_stop() -> Sequence[tuple[str, str]]:
            return ((runs_key(session_id), json.dumps(end_of_run(start), sort_keys=True)),)

        writer.closing_marks = clean_stop
        writer.attach(ctx.bus, ctx.policy, tracker=ctx.tracker, clock=lambda: ctx.kernel.now_ns)
        ctx.kernel.journal = writer
        ctx.kernel.risk_journal = writer
        ctx.history = self.history
        self.writer = writer
        nursery.start_soon(writer.run, name="journal-writer")


def journal_for(store: Store, venue: VenueKind, *, timeout: float | None = CALL_TIMEOUT) -> Journal:
    """The :class:`Journal` a session writes ``store`` through against a
    venue of kind ``venue``: its calls on the trio thread for a SQLite file
    against a paper-kind venue (CPU work nobody waits for: the facade's
    docstring), in a worker thread otherwise (a live venue's loop must keep
    running through an fsync; PostgreSQL waits on the network), each write
    waited for ``timeout`` seconds at most."""
    inline = store.backend == "sqlite" and venue is VenueKind.PAPER
    return Journal(store, inline=inline, timeout=timeout)


def journal_service(config: Any, **options: Any) -> Sequence[JournalService]:
    """The journal service for a session config: none when ``journal: off``."""
    target = resolve_target(getattr(config, "journal", None), config.out)
    if target is None:
        return []
    return [JournalService(target, **options)]
