"""The outage spill (exactly once, in order, torn lines, a foreign journal),
the automatic migration of an empty PostgreSQL schema (and the refusal of a
schema of another version), the runs of a session id with its restart-loop
line, and the journal's metrics from a real session."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import trio

from bot4.journal import SchemaBehind, open_store
from bot4.journal.migrations import MIGRATIONS
from bot4.journal.records import Record
from bot4.journal.runs import WINDOW_S, end_of_run, start_of_run
from bot4.journal.spill import SpillFile, replay_spill
from bot4.metrics import Metrics
from bot4.model import Rejected
from bot4.session import SessionConfig, StrategyConfig, run_session
from tests.conftest import run_bot4, write_ticks
from tests.journalkit import PG_URL, fill, fresh_schema, order

PARAMS = {"fast": 10, "slow": 40, "size": "0.01", "stop_loss_pct": "0.2", "take_profit_pct": "0.4"}


def _records(n: int) -> list[Record]:
    out: list[Record] = []
    for i in range(n):
        o = order(i)
        out.append(
            Record.decision(
                Rejected(rule="journal", reason="journal unavailable", order=o), i, None
            )
        )
        out.append(Record.fill(fill(i, o), i))
    return out


def _bodies(path: Path) -> list[tuple[str, int]]:
    store = open_store(path)
    try:
        return [(r.kind, r.ts_ns) for r in store.iter_records()]
    finally:
        store.close()


def test_a_spill_is_written_once_in_order_whatever_replays_it(tmp_path: Path) -> None:
    journal = tmp_path / "journal.sqlite"
    store = open_store(journal)
    spill = SpillFile.for_writer(tmp_path / "spill.jsonl", store.location)
    records = _records(10)
    spill.append(0, records[:7])
    spill.append(7, records[7:])
    kept = spill.path.read_bytes()
    assert replay_spill(store, spill, chunk=3) == 20
    assert not spill.path.exists()
    store.close()
    expected = [(r.kind.value, r.ts_ns) for r in records]
    assert _bodies(journal) == expected
    # Again (a crash before the file's removal): nothing twice.
    spill.path.write_bytes(kept)
    again = SpillFile.existing(spill.path)
    assert again is not None
    assert again.count == 20
    store = open_store(journal)
    assert replay_spill(store, again) == 0
    store.close()
    assert _bodies(journal) == expected


def test_a_commit_the_client_did_not_hear_of_is_not_written_again(tmp_path: Path) -> None:
    """The mark says how far the journal got, whatever the writer believed."""
    store = open_store(tmp_path / "journal.sqlite")
    spill = SpillFile.for_writer(tmp_path / "spill.jsonl", store.location)
    records = _records(3)
    store.append(records[:4], marks=((spill.key, json.dumps(4)),))  # committed...
    spill.append(0, records)  # ...but seen as failed, so spilled too
    assert replay_spill(store, spill) == 2
    assert [r.ts_ns for r in store.iter_records()] == [r.ts_ns for r in records]
    store.close()


def test_a_torn_last_line_is_ignored_and_a_foreign_journal_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "journal.sqlite")
    spill = SpillFile.for_writer(tmp_path / "spill.jsonl", store.location)
    spill.append(0, _records(2))
    with spill.path.open("ab") as fh:
        fh.write(b'[4,"decision",9')  # the process died mid-write
    left = SpillFile.existing(spill.path)
    assert left is not None
    assert left.count == 4
    other = open_store(tmp_path / "other.sqlite")
    with pytest.raises(Exception, match=r"records kept for the journal .*journal\.sqlite"):
        replay_spill(other, left)
    other.close()
    assert replay_spill(store, left) == 4
    store.close()


def test_an_empty_postgres_schema_is_migrated_on_open() -> None:
    for schema in fresh_schema():
        store = open_store(PG_URL, schema=schema)  # no migrate: a fresh database
        assert store.created
        store.close()
        store = open_store(PG_URL, schema=schema)
        assert not store.created  # the second open finds it done
        store.close()


def test_a_schema_of_another_version_is_refused_in_one_line(tmp_path: Path) -> None:
    for schema in fresh_schema():
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
            conn.execute(f"SET search_path = {schema}")
            conn.execute(
                "CREATE TABLE journal_schema_version"
                " (version INTEGER PRIMARY KEY, description TEXT, applied_at TEXT)"
            )
            for statement in MIGRATIONS[0].postgres:
                conn.execute(statement)
            conn.execute("INSERT INTO journal_schema_version VALUES (1, 'v1', 'then')")
        data = write_ticks(tmp_path / "ticks.csv", seconds=200)
        url = f"{PG_URL}?options=-csearch_path%3D{schema}"
        done = run_bot4(
            "run", "--data", str(data), "--out", str(tmp_path / "out"), "--no-chart",
            env={"BOT4_DATABASE_URL": url},
            timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "schema version 1" in lines[0]
        assert "bot4 journal migrate" in lines[0]
        assert "Traceback" not in done.stderr


_CRASHING = textwrap.dedent(
    """
    import os, sys, trio
    from bot4.data import iter_sample
    from bot4.session import SessionConfig, StrategyConfig, run_session
    import itertools
    config = SessionConfig(strategies=(StrategyConfig("sma_cross", {}),), out=sys.argv[1],
                           record=False, journal=sys.argv[2])
    seen = itertools.count()
    async def tick(_):
        if next(seen) == 50:
            os._exit(3)  # a crash: no clean stop, nothing flushed
    trio.run(lambda: run_session(config, progress=tick))
    """
)


def _clean_run(out: Path, journal: Path, metrics: Metrics | None = None) -> int:
    config = SessionConfig(
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        out=str(out),
        record=False,
        journal=str(journal),
        data=str(write_ticks(out.parent / "ticks.csv", seconds=300)),
    )
    result = trio.run(lambda: run_session(config, metrics=metrics))
    assert result.history is not None
    return result.history.restarts


def test_a_restart_loop_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, journal = tmp_path / "out", tmp_path / "journal.sqlite"
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", _CRASHING, str(out), str(journal)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 3, done.stderr
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="bot4.journal"):
        assert _clean_run(out, journal, metrics) == 3
    lines = [r.getMessage() for r in caplog.records if "restarted" in r.getMessage()]
    assert len(lines) == 1
    assert f"restarted 3 times in {WINDOW_S} s without a clean stop (run 4)" in lines[0]
    assert metrics.sample_values()["bot4_session_restarts"] == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bot4.journal"):
        assert _clean_run(out, journal) == 0  # the run before stopped cleanly
    assert not [r for r in caplog.records if "restarted" in r.getMessage()]
    store = open_store(journal)
    assert store.state_value("runs:s1")["runs"] == 5
    store.close()


def test_only_recent_unclean_runs_count() -> None:
    second = 1_000_000_000
    first = start_of_run(None, now_ns=100 * second)
    assert (first.run, first.restarts) == (1, 0)
    crashed = start_of_run(first.value, now_ns=110 * second)
    assert (crashed.run, crashed.restarts) == (2, 1)
    late = start_of_run(crashed.value, now_ns=(100 + WINDOW_S + 1) * second)
    assert (late.run, late.restarts) == (3, 1)  # run 1 is out of the window, run 2 not
    clean = start_of_run(end_of_run(late), now_ns=(102 + WINDOW_S) * second)
    assert (clean.run, clean.restarts) == (4, 0)


def test_a_session_reports_its_journal_writes_to_the_metrics(tmp_path: Path) -> None:
    metrics = Metrics()
    out = tmp_path / "out"
    out.mkdir()
    _clean_run(out, tmp_path / "journal.sqlite", metrics)
    values = metrics.sample_values()
    assert values["bot4_journal_write_seconds_count"] >= 2  # start and the last flush at least
    assert values["bot4_journal_queue_depth"] == 0
    assert values["bot4_journal_lag_seconds"] == 0
    assert values["bot4_journal_write_failures_total"] == 0


def test_a_spill_finds_its_sqlite_journal_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("journal.sqlite")  # named relatively, as `--out .` would
    spill = SpillFile.for_writer(tmp_path / "spill.jsonl", store.location)
    spill.append(0, _records(1))
    store.close()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    store = open_store(tmp_path / "journal.sqlite")
    left = SpillFile.existing(tmp_path / "spill.jsonl")
    assert left is not None
    assert replay_spill(store, left) == 2
    store.close()


def test_a_read_command_never_creates_tables_in_an_empty_schema() -> None:
    for schema in fresh_schema():
        with pytest.raises(SchemaBehind, match="bot4 journal migrate"):
            open_store(PG_URL, schema=schema, create=False)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            found = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            ).fetchone()
        assert found == (0,)
