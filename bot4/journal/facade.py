"""The trio face of a :class:`~bot4.journal.store.Store`.

Every call runs in a worker thread, one call at a time (a
``CapacityLimiter(1)``), so a backend's single connection, or its pool, is
never used by two threads at once and the trio loop never blocks on disk or
network. Calls run in the order they are made; cancellation waits for the
call in flight (a half-sent transaction is never abandoned).

``inline=True`` runs each call on the trio thread instead, for a journal
whose writes are CPU work nobody waits for: a SQLite file against a venue
that dies with the process (:func:`bot4.journal.service.journal_for`). There
the worker thread cost more CPU than the writes themselves (the GIL passed
back and forth with the kernel: bench_journal's kernel case, 0.53x -> 0.65x
of the journal-off order path); the loop is held for the length of a batch's
transaction, which a backtest does not feel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import trio
import trio.lowlevel

from bot4.journal.records import FillRow, OrderRow, Record, StoredRecord
from bot4.journal.riskstate import RiskEventRow, RiskStateRow, RunHistory
from bot4.journal.spill import SpillFile, replay_spill
from bot4.journal.store import Store
from bot4.journal.verify import VerifyReport
from bot4.model import MarketData

__all__ = ["Journal"]

P = ParamSpec("P")
T = TypeVar("T")


class Journal:
    """A :class:`Store` for trio code: each call runs in a worker thread, one
    at a time, in call order (on the trio thread with ``inline``: the
    module's docstring). Cancellation waits for the call in flight (a
    half-sent transaction is never abandoned)."""

    def __init__(self, store: Store, *, inline: bool = False) -> None:
        self.store = store
        self.inline = inline
        self._limiter = trio.CapacityLimiter(1)

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def location(self) -> str:
        return self.store.location

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.inline:
            # Still a checkpoint before the call, as the thread's hand-off is.
            await trio.lowlevel.checkpoint()
            return fn(*args, **kwargs)
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    async def append(
        self,
        records: Sequence[Record],
        *,
        durable: bool = False,
        marks: Sequence[tuple[str, str]] = (),
    ) -> int:
        return await self._call(self.store.append, records, durable=durable, marks=marks)

    async def replay_spill(self, spill: SpillFile, chunk: int) -> int:
        """:func:`bot4.journal.spill.replay_spill` in the journal's thread."""
        return await self._call(replay_spill, self.store, spill, chunk)

    async def state_value(self, key: str) -> Any:
        return await self._call(self.store.state_value, key)

    async def append_market(self, ticks: Sequence[MarketData]) -> None:
        await self._call(self.store.append_market, ticks)

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
        with trio.CancelScope(shield=True):
            await self._call(self.store.close)
