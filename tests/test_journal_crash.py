"""Crash test: a bot trading against the durable paper exchange is killed with
SIGKILL at random points and restarted each time; at the end nothing the
exchange accepted is unknown to the journal, nothing was placed twice, and the
journal's positions equal the exchange's.

The bot is ``tests/journal_crash_driver.py`` (a real session: kernel, default
rules with the stop-out breaker out of reach, sma_cross, the journal service,
recovery on start). Kill points, from a
seeded RNG: half after a random delay from the start (anywhere: start-up,
recovery, trading), a quarter right *before* the N-th ``place_order`` of that
run (the intent is journaled, the exchange never hears of it), a quarter right
*after* it (the exchange accepted, the bot never saw the answer). After the
last kill, one more start runs recovery only, then the journal and the
exchange's own state file are compared.

    BOT4_CRASH_KILLS=50 (default)   kills against SQLite
    BOT4_CRASH_KILLS_PG=15          kills against PostgreSQL (skipped if absent)
    BOT4_CRASH_LONG=1               200 kills each
    BOT4_CRASH_SEED=...             another sequence of kill points
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot4 import codec
from bot4.data import sample_path
from bot4.journal import open_store
from bot4.journal.recovery import replay_fills
from bot4.model import Fill
from bot4.portfolio import PortfolioTracker
from tests.conftest import REPO
from tests.journalkit import PG_URL, fresh_schema

DRIVER = REPO / "tests" / "journal_crash_driver.py"
LONG = os.environ.get("BOT4_CRASH_LONG", "") not in ("", "0")
KILLS = {
    "sqlite": 200 if LONG else int(os.environ.get("BOT4_CRASH_KILLS", "50")),
    "postgres": 200 if LONG else int(os.environ.get("BOT4_CRASH_KILLS_PG", "15")),
}
SEED = int(os.environ.get("BOT4_CRASH_SEED", "20240301"))


def _spawn(
    workdir: Path, journal: str, schema: str | None, extra: list[str]
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        str(DRIVER),
        "--dir",
        str(workdir),
        "--data",
        str(sample_path()),
        "--journal",
        journal,
        *(["--schema", schema] if schema else []),
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _venue(state: Path) -> tuple[dict[str, dict[str, Any]], list[Fill], dict[str, Decimal]]:
    """Everything the exchange ever accepted, from its own state file."""
    conn = sqlite3.connect(state)
    try:
        orders = {
            cid: json.loads(body)
            for cid, body in conn.execute("SELECT client_order_id, body FROM paper_orders")
        }
        fills = [
            codec.decode(json.loads(b))
            for (b,) in conn.execute("SELECT body FROM paper_fills ORDER BY n")
        ]
        (meta,) = conn.execute("SELECT value FROM paper_meta WHERE key = 'positions'").fetchone()
    finally:
        conn.close()
    positions = {p["symbol"]: Decimal(p["qty"]) for p in json.loads(meta)}
    return orders, fills, positions


def _crash_run(
    workdir: Path, journal: str, schema: str | None, kills: int, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED + kills)
    modes: Counter[str] = Counter()
    clean_exits = 0
    started = time.monotonic()
    while sum(modes.values()) < kills:
        assert clean_exits < 10, "the bot kept finishing before it could be killed"
        roll = rng.random()
        if roll < 0.5:
            mode, extra, delay = "timer", [], rng.uniform(0.05, 1.6)
        else:
            when = "before" if roll < 0.75 else "after"
            mode, extra, delay = (
                f"{when}-place",
                [
                    "--kill-at-place",
                    str(rng.randint(1, 8)),
                    "--kill-when",
                    when,
                ],
                30.0,
            )
        proc = _spawn(workdir, journal, schema, extra)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        out, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            modes[mode] += 1
        else:
            assert proc.returncode == 0, f"the bot failed on its own ({mode}):\n{err[-3000:]}"
            clean_exits += 1
    # One more start: recovery only (an empty feed), then a clean exit.
    final = _spawn(workdir, journal, schema, ["--ticks", "0"])
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err[-3000:]
    last_report = json.loads(out.strip().splitlines()[-1])["recovery"]
    wall = time.monotonic() - started

    orders, venue_fills, venue_positions = _venue(workdir / "paper.sqlite")
    store = open_store(journal, schema=schema, create=False)
    try:
        rows = {r.order.client_order_id: r for r in store.orders()}
        intents = [r.client_order_id for r in store.records(kinds=["intent"])]
        reports = [r.payload for r in store.records(kinds=["recovery"])]
        journal_fills = [f.fill for f in store.fills()]
        verified = store.verify()
    finally:
        store.close()

    kernel_ids = {c for c in orders if "." not in c}
    children = set(orders) - kernel_ids
    # Every order the exchange accepted is known to the journal ...
    unknown = sorted(c for c in kernel_ids if c not in rows)
    assert unknown == [], f"accepted by the exchange, unknown to the journal: {unknown[:10]}"
    unacked = sorted(c for c in kernel_ids if rows[c].status in ("intent", "never_sent"))
    assert unacked == [], f"the journal does not know the exchange has these: {unacked[:10]}"
    orphans = sorted(c for c in children if c.rsplit(".", 1)[0] not in rows)
    assert orphans == [], f"exits of orders the journal does not know: {orphans[:10]}"
    # ... as the same order it wrote ahead (never a different order under its id) ...
    for cid in kernel_ids:
        assert codec.decode(orders[cid]["placed"]) == rows[cid].order, cid
    # ... no intent is left unresolved, and none the exchange lacks is called sent.
    assert [c for c, r in rows.items() if r.status == "intent"] == []
    never = {c for c, r in rows.items() if r.status == "never_sent"}
    assert never.isdisjoint(orders), "an intent marked never-sent reached the exchange"
    # Nothing placed twice: no client id was ever written ahead twice (the
    # counter resumes past every id used), and each id is one exchange order.
    assert len(intents) == len(set(intents)), "a client order id was reused"
    eids = [o["exchange_order_id"] for o in orders.values()]
    assert len(eids) == len(set(eids))
    # The fills and positions agree.
    assert {f.fill_id for f in journal_fills} == {f.fill_id for f in venue_fills}
    tracker = PortfolioTracker(Decimal(100000))
    replay_fills(tracker, journal_fills, {cid: r.order for cid, r in rows.items()})
    mine = {s: p.qty for s, p in tracker.positions().items()}
    venue = {s: q for s, q in venue_positions.items() if q}
    assert mine == venue
    assert {s: Decimal(q) for s, q in last_report["positions"].items()} == venue
    assert last_report["mismatches"] == []
    assert verified.ok, verified

    recovered = sum(int(r["intents_recovered"]) for r in reports)
    never_sent = sum(int(r["never_sent"]) for r in reports)
    summary = (
        f"crash test ({'sqlite' if schema is None else 'postgres'}): {sum(modes.values())} "
        f"SIGKILLs ({dict(modes)}), {clean_exits} runs ended before their kill, "
        f"{len(reports)} restarts with recovery, in {wall:.1f}s\n"
        f"  exchange orders {len(orders)} ({len(kernel_ids)} from the kernel, "
        f"{len(children)} attached exits), fills {len(venue_fills)}, "
        f"positions {dict((s, str(q)) for s, q in venue.items())}\n"
        f"  journal intents {len(intents)}; recovered intents (accepted, answer lost) "
        f"{recovered}; never sent {never_sent}; orders adopted "
        f"{sum(int(r['orders_adopted']) for r in reports)}; fills recovered "
        f"{sum(int(r['fills_recovered']) for r in reports)}; "
        f"records {verified.records}; verify ok"
    )
    with capsys.disabled():
        print("\n" + summary)
    assert recovered > 0
    assert never_sent > 0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_crash_recovery_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _crash_run(tmp_path, str(tmp_path / "journal.sqlite"), None, KILLS["sqlite"], capsys)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_crash_recovery_postgres(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for schema in fresh_schema():
        store = open_store(PG_URL, schema=schema, migrate=True)  # bot4 journal migrate
        store.close()
        _crash_run(tmp_path, PG_URL, schema, KILLS["postgres"], capsys)
