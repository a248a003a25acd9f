"""The journal's write-ahead and its batches (SQLite and PostgreSQL, real
databases, a real session).

* Against a live-kind venue (one whose orders outlive the process) every
  order intent is committed before ``place_order`` is called: the venue
  itself, inside ``place_order``, opens the journal from a second
  connection and finds the intent there. The same probe against a
  paper-kind venue (intents ride the batch) finds intents not yet written,
  so the probe can tell the two apart.
* A clean stop (a real SIGINT, handled as ``bot4 run`` handles it) leaves
  every record in the journal: each decision, risk action, acknowledgement,
  order update, fill (and its position) and protective level the session
  published, and every intent, even with batches that would otherwise never
  have been flushed before the stop.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
from bot4_paper import PaperExchange

from bot4.bus import Event
from bot4.cli.signals import SignalStop
from bot4.data import iter_sample
from bot4.journal import open_store
from bot4.journal.service import JournalService
from bot4.kernel import Kernel
from bot4.model import MarketData, Order, OrderState
from bot4.session import SessionConfig, StrategyConfig, run_session
from tests.journalkit import PG_URL, fresh_schema

TICKS = 6_000
STOP_AT = 4_500  # the SIGINT comes here, with the data not yet over
PARAMS = {"fast": 10, "slow": 40, "size": "0.01", "stop_loss_pct": "0.2", "take_profit_pct": "0.4"}

Probe = Callable[[str], tuple[int, str | None]]  # cid -> (intent records, orders row status)
Target = tuple[str, str | None, Probe]  # journal target, PostgreSQL schema, probe


class ProbingVenue(PaperExchange):
    """The paper venue, of the kind the test says, that looks into the
    journal from its own connection each time an order reaches it."""

    live = True
    probe: Probe | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, int, str | None]] = []

    @property
    def durable(self) -> bool:  # what the session reads the venue's kind from
        return self.live

    async def place_order(self, order: Order) -> OrderState:
        assert self.probe is not None
        self.seen.append((order.client_order_id, *self.probe(order.client_order_id)))
        return await super().place_order(order)


_INTENT_SQL = "SELECT COUNT(*) FROM journal_records WHERE kind = 'intent' AND client_order_id = ?"
_ROW_SQL = "SELECT status FROM journal_orders WHERE client_order_id = ?"


def _sqlite_probe(path: Path) -> Probe:
    def probe(cid: str) -> tuple[int, str | None]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # a second connection
        try:
            n = conn.execute(_INTENT_SQL, (cid,)).fetchone()[0]
            row = conn.execute(_ROW_SQL, (cid,)).fetchone()
        finally:
            conn.close()
        return int(n), None if row is None else str(row[0])

    return probe


def _pg_probe(schema: str) -> Probe:
    def probe(cid: str) -> tuple[int, str | None]:
        with psycopg.connect(PG_URL, autocommit=True, options=f"-c search_path={schema}") as c:
            n = c.execute(_INTENT_SQL.replace("?", "%s"), (cid,)).fetchone()
            row = c.execute(_ROW_SQL.replace("?", "%s"), (cid,)).fetchone()
        assert n is not None
        return int(n[0]), None if row is None else str(row[0])

    return probe


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "sqlite":
        path = tmp_path / "journal.sqlite"
        yield str(path), None, _sqlite_probe(path)
        return
    for schema in fresh_schema():
        open_store(PG_URL, schema=schema, migrate=True).close()
        yield PG_URL, schema, _pg_probe(schema)


def _ticks() -> list[MarketData]:
    return list(itertools.islice(iter_sample(), TICKS))


# Bus topics the journal keeps, as the record kind each becomes.
def _kind_of(event: Event) -> str | None:
    topic = event.topic
    if topic in ("risk.approved", "risk.rejected"):
        return "decision"
    if topic == "risk.action":
        return "action"
    if topic == "order.placed":
        return "ack"
    if topic == "order.update":
        return "update"
    if topic.startswith("fill."):
        return "fill"
    if topic == "kernel.protection":
        return "protection"
    return None


def _session(
    tmp: Path,
    target: str,
    schema: str | None,
    probe: Probe,
    *,
    live: bool,
    signal_at: int | None = None,
    batch: int = 256,
    interval: float = 0.05,
) -> tuple[ProbingVenue, Counter[str], Kernel]:
    venue = ProbingVenue.from_config({"feed": _ticks(), "balance": "10000"})
    assert isinstance(venue, ProbingVenue)
    venue.live, venue.probe = live, probe
    published: Counter[str] = Counter()
    box: dict[str, Kernel] = {}
    stop = SignalStop()
    seen = itertools.count(1)

    def on_kernel(kernel: Kernel) -> None:
        box["kernel"] = kernel
        stop.attach(kernel)

        def count(event: Event) -> None:
            kind = _kind_of(event)
            if kind is not None:
                published[kind] += 1

        kernel.bus.subscribe("#", count, capacity=100_000, name="test-count")

    async def tick(_: MarketData) -> None:
        if next(seen) == signal_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real signal, handled as bot4 run does

    config = SessionConfig(
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        out=str(tmp),
        record=False,
        journal="off",  # the service below is the journal
    )
    service = JournalService(target, schema=schema, batch=batch, interval=interval)
    with stop.installed():
        trio.run(
            lambda: run_session(
                config,
                exchange=venue,
                services=[service],
                on_kernel=on_kernel,
                progress=tick if signal_at is not None else None,
            )
        )
    return venue, published, box["kernel"]


def test_a_live_venue_finds_each_intent_committed_before_place_order(
    target: Target, tmp_path: Path
) -> None:
    where, schema, probe = target
    venue, _, kernel = _session(tmp_path / "live", where, schema, probe, live=True)
    assert len(venue.seen) >= 20, "the session must trade for the test to mean something"
    missing = [cid for cid, n, status in venue.seen if n != 1 or status != "intent"]
    assert missing == []  # each intent committed, its order not yet answered
    assert kernel.stats.approved >= len(venue.seen) // 2


def test_the_probe_sees_a_paper_venues_intents_ride_the_batch(
    target: Target, tmp_path: Path
) -> None:
    """The control: with intents batched, place_order comes before most of
    them are written; the probe above is not blind."""
    where, schema, probe = target
    venue, _, _ = _session(tmp_path / "paper", where, schema, probe, live=False)
    assert len(venue.seen) >= 20
    not_yet = [cid for cid, n, _ in venue.seen if n == 0]
    assert len(not_yet) > len(venue.seen) // 2


@pytest.mark.parametrize("live", [True, False], ids=["live", "paper"])
def test_a_clean_stop_leaves_every_record(target: Target, tmp_path: Path, live: bool) -> None:
    """SIGINT mid-session, with batches so large and a timer so slow that
    only the stop's own flush can write what is queued."""
    where, schema, probe = target
    venue, published, kernel = _session(
        tmp_path / "stop",
        where,
        schema,
        probe,
        live=live,
        signal_at=STOP_AT,
        batch=1_000_000,
        interval=3600.0,
    )
    assert kernel.stop_reason == "SIGINT"
    assert kernel.stats.ticks < TICKS  # stopped with data left
    store = open_store(where, schema=schema, migrate=False)
    try:
        kinds = Counter(r.kind for r in store.iter_records())
        report = store.verify()
    finally:
        store.close()
    assert sum(published.values()) > 50
    for kind, n in published.items():
        assert kinds[kind] == n, (kind, kinds[kind], n)
    assert kinds["position"] == published["fill"]
    assert kinds["intent"] == len(venue.seen)
    assert report.ok, report.as_dict()
    assert report.unresolved_intents == []
