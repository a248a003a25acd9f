"""The journal's trio face bounds a write: a store call that does not return
is given up on after the timeout, every call is refused at once until it
returns, and a call given up on before it started never runs.

The store here is a real SQLite journal whose ``append`` is held on an event
by the test (a database that does not answer: the guarantee test with a
stopped PostgreSQL is ``test_guarantees/test_journal_outage.py``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from bot4.journal import JournalUnavailable, open_store
from bot4.journal.facade import Journal
from bot4.journal.records import Record, RecordKind
from bot4.journal.store import Store


class HeldStore:
    """A SQLite store whose appends wait for ``release`` while ``hold`` is set."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.hold = threading.Event()
        self.release = threading.Event()
        self.entered = threading.Event()
        self.appends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def append(self, records: Any, **kwargs: Any) -> int:
        self.appends += 1
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        result: int = self.inner.append(records, **kwargs)
        return result


def _record(n: int) -> Record:
    return Record(RecordKind.RECOVERY, {"n": n}, time.time_ns())


async def _returned(journal: Journal) -> None:
    """Until the call given up on has returned (its thread's end is a
    threading.Event, so it is polled)."""
    for _ in range(3000):
        if journal.stuck_for() is None:
            return
        await trio.sleep(0.01)
    raise AssertionError("the held call never returned")


@pytest.fixture
def held(tmp_path: Path) -> HeldStore:
    store = HeldStore(open_store(str(tmp_path / "journal.db")))
    yield store
    store.release.set()
    store.inner.close()


def test_a_write_that_does_not_return_is_given_up_on_and_the_next_refused_at_once(
    held: HeldStore,
) -> None:
    journal = Journal(held, timeout=0.3)  # type: ignore[arg-type]

    async def main() -> None:
        await journal.append([_record(0)])  # an answering store: written
        held.hold.set()
        began = time.monotonic()
        with pytest.raises(JournalUnavailable, match=r"no answer in 0\.3 s"):
            await journal.append([_record(1)])
        assert 0.25 < time.monotonic() - began < 2.0
        assert journal.abandoned == 1
        assert journal.stuck_for() is not None
        # While that call is still inside the store: refused at once, and
        # the store is not called (its one connection is busy).
        began = time.monotonic()
        for reader in (journal.append([_record(2)]), journal.state()):
            with pytest.raises(JournalUnavailable, match="has not returned"):
                await reader
        assert time.monotonic() - began < 0.2
        assert held.appends == 2
        # It returns (the server answers again): the next call goes through.
        held.hold.clear()
        held.release.set()
        await _returned(journal)
        await journal.append([_record(3)])
        assert held.appends == 3

    trio.run(main)
    # The call given up on was written when it returned: 0, 1 and 3.
    got = sorted(r.payload["n"] for r in held.inner.iter_records() if r.kind == "recovery")
    assert got == [0, 1, 3]


def test_a_call_that_could_not_start_in_time_never_runs(held: HeldStore) -> None:
    # The worker slot is taken (held here by the test) past the call's
    # timeout: the call is refused, is not taken for one still running, and
    # does not run once the slot is free.
    journal = Journal(held, timeout=0.3)  # type: ignore[arg-type]
    borrower = object()

    async def main() -> None:
        await journal._limiter.acquire_on_behalf_of(borrower)
        with pytest.raises(JournalUnavailable, match=r"no answer in 0\.3 s"):
            await journal.append([_record(1)])
        assert journal.stuck_for() is None
        journal._limiter.release_on_behalf_of(borrower)
        await trio.sleep(0.2)
        assert held.appends == 0
        await journal.append([_record(2)])
        assert held.appends == 1

    trio.run(main)


def test_cancelling_from_outside_waits_for_the_call_up_to_the_timeout(
    held: HeldStore,
) -> None:
    journal = Journal(held, timeout=0.5)  # type: ignore[arg-type]

    async def main() -> None:
        held.hold.set()
        began = time.monotonic()
        with trio.move_on_after(0.05), pytest.raises(JournalUnavailable):
            await journal.append([_record(1)])
        # Not cut at 0.05 s (a transaction is not abandoned for a
        # cancellation alone): given up on at the timeout.
        assert time.monotonic() - began >= 0.45
        held.hold.clear()
        held.release.set()

    trio.run(main)
