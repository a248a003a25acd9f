"""Risk state in the journal (bot4.journal.riskstate), on both backends:
records written by the journal writer's hooks, read back as recovery reads
them. The SIGKILL runs are in tests/test_guarantees/test_restart.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio

from bot4.journal import Journal, Record, RecordKind, SchemaBehind, Store, open_store
from bot4.journal.migrations import LATEST, MIGRATIONS, VERSION_TABLE_SQL
from bot4.journal.recovery import RecoveryReport, _restore_risk_state
from bot4.journal.riskstate import PEAK_KEY, PEAK_STEP, cleared_key, peak_to_journal
from bot4.journal.writer import JournalWriter, VenueKind
from bot4.model import Approved, Fill, Rejected, RiskAction, RiskActionKind, Side
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path
from bot4.risk.windows import WindowSpec
from tests.journalkit import PG_URL, T0, fresh_schema, order

NS = 1_000_000_000
# The default rules with windows (stop-outs per hour, orders per minute),
# without the correlation pack's rule.
RULES = ("00-exits.yaml", "10-breaker.yaml", "40-rate-limit.yaml", "99-default.yaml")


def _policy() -> RiskPolicy:
    return RiskPolicy.load([default_rules_path() / name for name in RULES])


@attrs.frozen
class Backend:
    target: str
    schema: str | None

    def open(self) -> Store:
        return open_store(self.target, schema=self.schema, migrate=True)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(str(tmp_path / "journal.sqlite"), None)
        return
    for schema in fresh_schema():
        yield Backend(PG_URL, schema)


def _fill(n: int, side: Side, qty: str, price: str) -> Fill:
    return Fill(
        f"f{n}", f"s1-e-{n}", "BTC-USDT", side, Decimal(qty), Decimal(price), Decimal(0),
        T0 + timedelta(seconds=n),
    )  # fmt: skip


def test_risk_state_keeps_the_latest_value_per_key(backend: Backend) -> None:
    store = backend.open()
    try:
        first = store.append(
            [
                Record.risk_state(PEAK_KEY, {"peak": "100"}, 1),
                Record.risk_state("ladder.BTC-USDT", {"rung": 1, "side": "buy"}, 2, "BTC-USDT"),
            ]
        )
        store.append(
            [
                Record.risk_state(PEAK_KEY, {"peak": "101.5"}, 3),
                Record.risk_state("ladder.BTC-USDT", None, 4, "BTC-USDT"),
            ]
        )
        state = store.risk_state()
        assert state[PEAK_KEY].value == {"peak": "101.5"}
        assert state[PEAK_KEY].ts_ns == 3
        assert state["ladder.BTC-USDT"].value is None
        assert store.risk_state(since_seq=store.last_seq) == {}
        assert set(store.risk_state(since_seq=first)) == {PEAK_KEY, "ladder.BTC-USDT"}
        assert store.verify().ok  # the new kinds are ordinary chained records
    finally:
        store.close()


def test_risk_events_come_back_in_event_time_within_the_horizon(backend: Backend) -> None:
    store = backend.open()
    try:
        # Out of order on purpose: read back in event-time order.
        store.append([Record.risk_event("stop_outs", "BTC-USDT", t * NS) for t in (3, 1, 2)])
        cleared = store.append([Record.risk_state(cleared_key("stop_outs"), {}, 4 * NS)])
        store.append(
            [Record.risk_event("stop_outs", "ETH-USDT", t * NS) for t in (10, 20)]
            + [Record.risk_event("orders", "BTC-USDT", 7 * NS)]
        )
        every = store.risk_events("stop_outs")
        assert [(r.symbol, r.ts_ns // NS) for r in every] == [
            ("BTC-USDT", 1),
            ("BTC-USDT", 2),
            ("BTC-USDT", 3),
            ("ETH-USDT", 10),
            ("ETH-USDT", 20),
        ]
        after = store.risk_events("stop_outs", since_seq=cleared)
        assert [r.ts_ns // NS for r in after] == [10, 20]
        # Within 15 s of the newest (20 s): 10 s is in, 3 s is out.
        near = store.risk_events("stop_outs", horizon_ns=15 * NS)
        assert [r.ts_ns // NS for r in near] == [10, 20]
        assert [r.ts_ns // NS for r in store.risk_events("orders")] == [7]
        assert store.risk_events("nothing", horizon_ns=NS) == []
    finally:
        store.close()


def test_history_counts_the_earlier_runs(backend: Backend) -> None:
    store = backend.open()
    try:
        store.append([Record(RecordKind.SESSION, {"session_id": "s1"}, 111)])
        a = order(1)
        store.append(
            [
                Record.decision(Approved(order=a, rules=("x", "y")), 2, None),
                Record.decision(Approved(order=order(2), rules=("x",)), 3, None),
                Record.decision(Rejected(rule="max-size", reason="big", order=order(3)), 4, None),
                Record.decision(Rejected(rule="max-size", reason="big", order=order(4)), 5, None),
                Record.decision(Rejected(rule="breaker-tripped", reason="t", order=a), 6, None),
                Record.action(RiskAction(RiskActionKind.ADD_MARGIN, "BTC-USDT", "lad", "r"), 7),
                Record.action(RiskAction(RiskActionKind.TRIP_BREAKER, None, "dd", "r"), 8),
            ]
        )
        store.append([Record(RecordKind.SESSION, {"session_id": "s1"}, 222)])
        second = store.append([Record(RecordKind.SESSION, {"session_id": "s1"}, 333)])
        history = store.history(0, second)
        assert history.runs == 2
        assert history.started_ns == 111
        assert history.orders_approved == 2
        assert history.orders_rejected == 3
        assert history.rejections_by_rule == {"max-size": 2, "breaker-tripped": 1}
        assert history.risk_actions == {"add_margin": 1, "trip_breaker": 1}
        assert history.breaker_trips == 1
        assert store.history(second, second + 1).runs == 0
    finally:
        store.close()


def test_writer_hooks_journal_what_recovery_restores(backend: Backend) -> None:
    """The writer hears the tracker's peak, the policy's windows and the
    breaker; a fresh tracker and policy get the same state back."""
    policy = _policy()
    tracker = PortfolioTracker(Decimal(10000))
    store = backend.open()
    journal = Journal(store)
    writer = JournalWriter(journal, venue=VenueKind.LIVE)
    writer.attach_hooks(policy, tracker, clock=lambda: 42)
    buy = _fill(1, Side.BUY, "1", "100")
    tracker.apply(buy)
    for price in ("150", "300", "250"):  # a peak of 10,200 unrealised, then 10,150
        tracker.mark("BTC-USDT", Decimal(price))
    book = tracker.snapshot()
    for t in (10, 20):
        policy.on_fill(buy, book, t * NS, True)  # two stop-outs ...
    policy.breaker.trip("by hand", 25 * NS)
    policy.breaker.reset()  # ... forgotten by the reset
    policy.on_fill(buy, book, 30 * NS, True)
    policy.record_order("BTC-USDT", 31 * NS)
    policy.breaker.trip("again", 32 * NS)
    kinds = [r.kind for r in writer._pending]
    assert kinds.count(RecordKind.RISK_EVENT) == 4
    assert kinds.count(RecordKind.BREAKER) == 3  # trip, reset, trip: from the breaker's hooks
    assert kinds.count(RecordKind.RISK_STATE) == 3  # two new peaks, the reset's clear

    async def main() -> RecoveryReport:
        await writer.checkpoint()  # committed now, durably
        assert writer._pending == []
        fresh_policy = _policy()
        fresh = PortfolioTracker(Decimal(10000))
        fresh.apply(buy)
        report = RecoveryReport(fresh_venue=False)
        records: list[Record] = []
        await _restore_risk_state(journal, report, fresh, _Kernel(), fresh_policy, 0, records, 7)
        # A latch the kernel found stale is cleared in recovery's own batch.
        assert records == [Record.risk_state("ladder.ETH-USDT", None, 7)]
        # One stop-out came back (the two before the reset did not) and the order.
        assert fresh_policy._events.count(_spec(fresh_policy, "stop_outs_1h"), "X", 31 * NS) == 1
        assert (
            fresh_policy._events.count(_spec(fresh_policy, "orders_1m"), "BTC-USDT", 40 * NS) == 1
        )
        assert fresh.peak_equity == peak_to_journal(Decimal(10200))
        await journal.aclose()
        return report

    report = trio.run(main)
    assert report.window_events == {"orders": 1, "stop_outs": 1}
    assert Decimal(report.peak_equity) == Decimal("10201.02")  # 10,200 rounded up by 0.01 %


class _Kernel:
    """The kernel's part in the restore: latches (Kernel.restore_risk_state)."""

    def restore_risk_state(self, state: dict[str, object]) -> tuple[int, list[str]]:
        return 0, ["ladder.ETH-USDT"]


def _spec(policy: RiskPolicy, name: str) -> WindowSpec:
    return policy.compiled.windows[name]


def test_a_rising_book_writes_a_bounded_number_of_peaks(tmp_path: Path) -> None:
    tracker = PortfolioTracker(Decimal(100000))
    store = open_store(tmp_path / "j.sqlite")
    writer = JournalWriter(Journal(store), venue=VenueKind.LIVE)
    writer.attach_hooks(None, tracker)
    tracker.apply(_fill(1, Side.BUY, "1", "50000"))
    price = Decimal(50000)
    for _ in range(20000):  # +2,000 in steps of 0.1: 20,000 new highs, +2 % equity
        price += Decimal("0.1")
        tracker.mark("BTC-USDT", price)
        written = [r.payload["value"]["peak"] for r in writer._pending]
        # Never below the true peak, at most PEAK_STEP above it.
        assert tracker.peak_equity <= Decimal(written[-1])
        assert Decimal(written[-1]) <= tracker.peak_equity * (1 + PEAK_STEP) + Decimal("1e-8")
    assert tracker.peak_equity == Decimal(102000)
    # ln(1.02) / ln(1.0001) ~ 198 records, not 20,000.
    assert 150 < len(writer._pending) < 200
    store.close()


def test_a_journal_at_version_2_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(VERSION_TABLE_SQL)
    for m in MIGRATIONS[:2]:
        for statement in m.sqlite:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO journal_schema_version VALUES (?, ?, 'then')", (m.version, m.description)
        )
    conn.commit()
    conn.close()
    with pytest.raises(SchemaBehind, match="needs 3"):
        open_store(path, migrate=False)
    store = open_store(path)
    try:
        assert store.schema_version == LATEST == 3
        store.append([Record.risk_state(PEAK_KEY, {"peak": "1"}, 1)])
        assert store.risk_state()[PEAK_KEY].value == {"peak": "1"}
    finally:
        store.close()
