"""The trio face of a :class:`~bot4.journal.store.Store`.

Every call runs in a worker thread, one call at a time, so a backend's
single connection, or its pool, is never used by two threads at once and the
trio loop never blocks on disk or network. Calls run in the order they are
made.

**A journal that does not answer never holds the session.** A call still
running after ``timeout`` seconds (:data:`CALL_TIMEOUT` by default) is left
to finish in its thread and raises :class:`JournalUnavailable` at once: a
server that hangs (stopped, its disk stuck, a host gone quiet with the
connection open) would otherwise hold every order's write-ahead, and with
it the kernel's loop, for as long as it hangs, and no tick, stop or risk
rule would be looked at meanwhile. Until that call returns, every call is
refused at once without reaching the store (the one connection it needs is
busy): the writer spills what it holds (:mod:`bot4.journal.spill`) and new
orders are refused (rule ``journal``), as in any outage. When the call
returns, the next call goes through; whatever the call had written is
known to the spill's replay (its marks), so nothing is written twice. A
call that had not started when its time ran out never starts.
Cancellation from outside waits for the call in flight, ``timeout`` at most
(a transaction is not abandoned for a cancellation alone).

``inline=True`` runs each call on the trio thread instead, for a journal
whose writes are CPU work nobody waits for: a SQLite file against a venue
that dies with the process (:func:`bot4.journal.service.journal_for`). There
the worker thread cost more CPU than the writes themselves (the GIL passed
back and forth with the kernel: bench_journal's kernel case, 0.53x -> 0.65x
of the journal-off order path); the loop is held for the length of a batch's
transaction, which a backtest does not feel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import trio
import trio.lowlevel

from bot4.journal.errors import JournalUnavailable
from bot4.journal.records import FillRow, OrderRow, Record, StoredRecord
from bot4.journal.riskstate import RiskEventRow, RiskStateRow, RunHistory
from bot4.journal.spill import SpillFile, replay_spill
from bot4.journal.store import Store
from bot4.journal.verify import VerifyReport
from bot4.model import MarketData

__all__ = ["CALL_TIMEOUT", "Journal"]

# Seconds a call may run before the session stops waiting for it. A durable
# commit takes milliseconds (an fsync on a slow disk, a few hundred); past
# this the journal is taken as not answering and orders are refused.
CALL_TIMEOUT = 3.0

P = ParamSpec("P")
T = TypeVar("T")


class _Call:
    """One call's hand-over between the trio thread and its worker: whether
    it started, whether it ended, and whether trio stopped waiting first (a
    call abandoned before it started never runs)."""

    __slots__ = ("abandoned", "began", "ended", "lock", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False
        self.ended = threading.Event()
        self.began = time.monotonic()


class Journal:
    """A :class:`Store` for trio code: each call runs in a worker thread, one
    at a time, in call order, and is waited for ``timeout`` seconds at most
    (on the trio thread with ``inline``, no bound: the module's docstring)."""

    def __init__(
        self, store: Store, *, inline: bool = False, timeout: float | None = CALL_TIMEOUT
    ) -> None:
        self.store = store
        self.inline = inline
        self.timeout = timeout
        self._limiter = trio.CapacityLimiter(1)
        self._order = trio.Lock()  # calls in the order made, one at a time
        self._stuck: _Call | None = None  # a call that outlived its timeout, still running
        self.abandoned = 0  # calls given up on after timeout (for tests and metrics)

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def location(self) -> str:
        return self.store.location

    def stuck_for(self) -> float | None:
        """Seconds the call given up on has been running, None when none is."""
        stuck = self._stuck
        if stuck is None or stuck.ended.is_set():
            return None
        return time.monotonic() - stuck.began

    def _refuse_if_stuck(self) -> None:
        stuck = self._stuck
        if stuck is None:
            return
        if stuck.ended.is_set():
            self._stuck = None
            return
        raise JournalUnavailable(
            f"journal at {self.location}: a call made {time.monotonic() - stuck.began:.1f} s "
            "ago has not returned (the database does not answer)"
        )

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A call with no time bound (reads, recovery, closing): refused at
        once while a call given up on is still running, else waited for."""
        return await self._run(lambda: fn(*args, **kwargs), None)

    async def _timed(
        self, limit: float | None, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A call of the session's write path, waited for ``limit`` s at most."""
        return await self._run(lambda: fn(*args, **kwargs), limit)

    async def _run(self, fn: Callable[[], T], limit: float | None) -> T:
        if self.inline:
            # Still a checkpoint before the call, as the thread's hand-off is.
            await trio.lowlevel.checkpoint()
            return fn()
        self._refuse_if_stuck()
        async with self._order:
            self._refuse_if_stuck()  # the call before this one may have been given up on
            if limit is None:
                return await trio.to_thread.run_sync(fn, limiter=self._limiter)
            call = _Call()

            def run() -> T:
                with call.lock:
                    if call.abandoned:
                        raise JournalUnavailable("abandoned before it started")  # seen by no one
                    call.started = True
                try:
                    return fn()
                finally:
                    call.ended.set()

            # Shielded from outside cancellation (it waits for the call, as
            # a transaction must not be cut), bounded by the limit alone.
            with trio.CancelScope(shield=True), trio.move_on_after(limit):
                return await trio.to_thread.run_sync(
                    run, limiter=self._limiter, abandon_on_cancel=True
                )
            with call.lock:
                call.abandoned = True
                started = call.started
            self.abandoned += 1
            if started and not call.ended.is_set():
                self._stuck = call
            raise JournalUnavailable(
                f"journal at {self.location}: no answer in {limit:g} s "
                "(the database does not answer); new orders are refused until it does"
            )

    async def append(
        self,
        records: Sequence[Record],
        *,
        durable: bool = False,
        marks: Sequence[tuple[str, str]] = (),
    ) -> int:
        return await self._timed(
            self.timeout, self.store.append, records, durable=durable, marks=marks
        )

    async def replay_spill(self, spill: SpillFile, chunk: int) -> int:
        """:func:`bot4.journal.spill.replay_spill` in the journal's thread,
        waited for ``timeout`` per chunk of the spill (each is a transaction)."""
        limit = None if self.timeout is None else self.timeout * (1 + spill.count // chunk)
        return await self._timed(limit, replay_spill, self.store, spill, chunk)

    async def state_value(self, key: str) -> Any:
        return await self._call(self.store.state_value, key)

    async def append_market(self, ticks: Sequence[MarketData]) -> None:
        await self._timed(self.timeout, self.store.append_market, ticks)

    async def orders(self, statuses: Sequence[str] | None = None) -> list[OrderRow]:
        return await self._call(self.store.orders, statuses)

    async def fills(self, since_seq: int = 0) -> list[FillRow]:
        return await self._call(self.store.fills, since_seq)

    async def state(self) -> dict[str, Any]:
        return await self._call(self.store.state)

    async def risk_state(self, since_seq: int = 0) -> dict[str, RiskStateRow]:
        return await self._call(self.store.risk_state, since_seq)

    async def risk_events(
        self, kind: str, *, since_seq: int = 0, horizon_ns: int | None = None
    ) -> list[RiskEventRow]:
        return await self._call(
            self.store.risk_events, kind, since_seq=since_seq, horizon_ns=horizon_ns
        )

    async def history(self, after_seq: int, before_seq: int) -> RunHistory:
        return await self._call(self.store.history, after_seq, before_seq)

    async def records(self, **filters: Any) -> list[StoredRecord]:
        return await self._call(self.store.records, **filters)

    async def verify(self) -> VerifyReport:
        return await self._call(self.store.verify)

    async def aclose(self) -> None:
        """Close the store, unless a call given up on is still inside it
        (closing under it would race that thread): the process's exit drops
        the connection then."""
        if self.stuck_for() is not None:
            return
        with trio.CancelScope(shield=True):
            await self._call(self.store.close)
