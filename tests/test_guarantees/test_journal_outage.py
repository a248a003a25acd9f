"""Nothing is lost in a database outage (a PostgreSQL of the test's own,
really stopped and started again), a fresh database starts without a manual
step, and a restart loop is seen.

* Mid-session outage: the server stops while the session trades; orders are
  refused (rule ``journal``) while it is down; it comes back; afterwards the
  journal holds every record the session published (each decision, the
  refusals among them, risk action, acknowledgement, update, fill and its
  position, protective level), each exactly once, in one unbroken checksum
  chain.
* A server that does not answer (every process of it stopped with SIGSTOP:
  connections open, nothing answers): no write holds the kernel longer than
  the journal's timeout; orders are refused meanwhile and the ticks go on;
  once it answers, the journal holds every record, each once.
* Outage until the end: the session stops with the server still down; its
  records wait in ``journal-spill.jsonl``; the next start writes them, once,
  before its own; the same spill replayed again (a crash between the write
  and the file's removal) writes nothing twice.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from bot4_paper import PaperExchange

from bot4.bus import Event
from bot4.data import iter_sample
from bot4.journal import JournalLocked, open_store
from bot4.journal.service import JournalService
from bot4.journal.spill import SPILL_FILE
from bot4.kernel import Kernel
from bot4.model import MarketData, Rejected
from bot4.session import SessionConfig, StrategyConfig, run_session
from tests.own_postgres import OwnPostgres, own_postgres

TICKS = 6_000
DOWN_AT = 1_500
PARAMS = {"fast": 10, "slow": 40, "size": "0.01", "stop_loss_pct": "0.2", "take_profit_pct": "0.4"}


class LiveVenue(PaperExchange):
    """The paper venue as a live-kind one: intents must be durable first."""

    durable = True


@pytest.fixture
def server() -> Iterator[OwnPostgres]:
    yield from own_postgres()


def _kind_of(event: Event) -> str | None:
    topic = event.topic
    if topic in ("risk.approved", "risk.rejected"):
        return "decision"
    return {
        "risk.action": "action",
        "order.placed": "ack",
        "order.update": "update",
        "kernel.protection": "protection",
    }.get(topic, "fill" if topic.startswith("fill.") else None)


def _session(
    out: Path, url: str, *, on_tick: Any = None, ticks: int = TICKS, timeout: float | None = None
) -> tuple[Counter[str], int, Kernel, JournalService]:
    venue = LiveVenue.from_config(
        {"feed": list(itertools.islice(iter_sample(), ticks)), "balance": "10000"}
    )
    published: Counter[str] = Counter()
    refused = [0]
    box: dict[str, Kernel] = {}

    def on_kernel(kernel: Kernel) -> None:
        box["kernel"] = kernel

        def count(event: Event) -> None:
            kind = _kind_of(event)
            if kind is not None:
                published[kind] += 1
            if isinstance(event.payload, Rejected) and event.payload.rule == "journal":
                refused[0] += 1

        kernel.bus.subscribe("#", count, capacity=100_000, name="test-count")

    seen = itertools.count(1)
    service = (
        JournalService(url, interval=0.05)
        if timeout is None
        else JournalService(url, interval=0.05, timeout=timeout)
    )

    async def tick(_: MarketData) -> None:
        if on_tick is not None:
            on_tick(next(seen), refused[0], service)

    config = SessionConfig(
        strategies=(StrategyConfig("sma_cross", PARAMS),), out=str(out), record=False, journal="off"
    )
    trio.run(
        lambda: run_session(
            config, exchange=venue, services=[service], on_kernel=on_kernel, progress=tick
        )
    )
    return published, refused[0], box["kernel"], service


def _journal(url: str) -> tuple[Counter[str], Counter[str], bool, list[tuple[Any, ...]]]:
    store = open_store(url, migrate=False)
    try:
        records = list(store.iter_records())
        report = store.verify()
    finally:
        store.close()
    kinds = Counter(r.kind for r in records)
    rules = Counter(r.rule for r in records if r.kind == "decision")
    keys = [(r.kind, r.ts_ns, r.client_order_id, r.body) for r in records]
    return kinds, rules, report.ok, keys


def test_a_mid_session_outage_loses_no_record(
    server: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = {"down": False, "back": False, "probed": False}
    held = {"memory": 0, "spilled": 0, "back_at": 0}

    def on_tick(n: int, refused: int, service: JournalService) -> None:
        if n == DOWN_AT and not state["down"]:
            server.stop()
            state["down"] = True
        elif state["down"] and not state["back"]:
            writer = service.writer
            assert writer is not None
            # While it is down: memory holds a batch at most, the rest is on disk.
            held["memory"] = max(held["memory"], len(writer._pending))
            held["spilled"] = max(held["spilled"], writer.spill.count if writer.spill else 0)
            if refused >= 3:
                server.start()  # three orders refused for the journal: enough
                state["back"] = True
                held["back_at"] = n
        elif state["back"] and not state["probed"] and n == held["back_at"] + 1_000:
            # The restarted server forgot the writer's lock; the writer took
            # it again: a second bot4 on this journal is still refused.
            with pytest.raises(JournalLocked):
                open_store(server.url, lock=True).close()
            state["probed"] = True

    with caplog.at_level(logging.WARNING, logger="bot4.journal"):
        published, refused, kernel, service = _session(
            tmp_path / "out", server.url, on_tick=on_tick
        )
    assert state["back"], "the session must have tried orders during the outage"
    assert state["probed"]
    assert held["spilled"] > 0
    assert held["memory"] <= 256  # one batch (the live default)
    assert refused >= 3
    assert kernel.stats.ticks == TICKS
    kinds, rules, chain_ok, keys = _journal(server.url)
    assert sum(published.values()) > 100
    for kind, n in published.items():
        assert kinds[kind] == n, (kind, kinds[kind], n)
    assert kinds["position"] == published["fill"]
    assert rules["journal"] == refused  # the refusals themselves are journaled
    assert len(set(keys)) == len(keys)  # nothing twice
    assert chain_ok
    assert not (tmp_path / "out" / SPILL_FILE).exists()  # all of it written
    assert service.writer is not None
    assert service.writer.errors > 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("records are kept in" in m for m in messages) == 1  # one line per outage
    assert any("is back after" in m for m in messages)


HUNG_TIMEOUT = 1.0  # the journal's bound on a write, for this test


def test_a_server_that_does_not_answer_never_holds_the_session(
    server: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the bound the first write-ahead after the pause waits for as
    # long as the server hangs, and the kernel with it: no tick, no stop, no
    # risk rule. The watchdog resumes the server after 30 s whatever happens,
    # so that such a regression fails here instead of hanging the suite.
    state = {"paused_at": 0.0, "resumed": False, "by_watchdog": False}
    gaps: list[float] = []
    last = [0.0]

    def watchdog() -> None:
        time.sleep(30)
        if state["paused_at"] and not state["resumed"]:
            state["by_watchdog"] = True
            server.resume()

    def on_tick(n: int, refused: int, service: JournalService) -> None:
        now = time.monotonic()
        if state["paused_at"] and not state["resumed"]:
            gaps.append(now - last[0])
        last[0] = now
        if n == DOWN_AT and not state["paused_at"]:
            server.pause()
            state["paused_at"] = now
            threading.Thread(target=watchdog, daemon=True).start()
        elif state["paused_at"] and not state["resumed"] and refused >= 3:
            server.resume()  # three orders refused while it hung: enough
            state["resumed"] = True

    with caplog.at_level(logging.WARNING, logger="bot4.journal"):
        published, refused, kernel, service = _session(
            tmp_path / "out", server.url, on_tick=on_tick, timeout=HUNG_TIMEOUT
        )
    assert not state["by_watchdog"], "the session stood still while the server hung"
    assert state["resumed"]
    assert refused >= 3
    assert kernel.stats.ticks == TICKS
    # The longest any tick waited while the server hung: one write's bound
    # (the write-ahead given up on), plus room for a loaded machine.
    assert max(gaps) < HUNG_TIMEOUT + 2.0, max(gaps)
    assert service.writer is not None
    assert service.writer.journal.abandoned >= 1
    kinds, rules, chain_ok, keys = _journal(server.url)
    for kind, n in published.items():
        assert kinds[kind] == n, (kind, kinds[kind], n)
    assert kinds["position"] == published["fill"]
    assert rules["journal"] == refused
    assert len(set(keys)) == len(
        keys
    )  # the write given up on, committed later, is not written twice
    assert chain_ok
    assert not (tmp_path / "out" / SPILL_FILE).exists()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("records are kept in" in m for m in messages) == 1  # one line per outage
    assert any("does not answer" in m for m in messages)
    assert any("is back after" in m for m in messages)


def test_an_outage_until_the_end_is_written_at_the_next_start(
    server: OwnPostgres, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    def on_tick(n: int, _: int, __: JournalService) -> None:
        if n == DOWN_AT:
            server.stop()

    published, refused, _kernel, _ = _session(out, server.url, on_tick=on_tick, ticks=3_000)
    assert refused >= 1
    spill = out / SPILL_FILE
    assert spill.exists()
    kept = spill.read_bytes()
    server.start()
    # The next start on this output folder writes the spill first (an
    # empty feed: recovery and nothing else).
    _, _, _, second = _session(out, server.url, ticks=0)
    assert second.replayed > 0
    assert not spill.exists()
    kinds, rules, chain_ok, _keys = _journal(server.url)
    for kind, n in published.items():
        assert kinds[kind] == n, (kind, kinds[kind], n)
    assert rules["journal"] == refused
    assert chain_ok
    # A crash after the spill was written but before its file was removed:
    # the same file again writes nothing.
    spill.write_bytes(kept)
    _, _, _, third = _session(out, server.url, ticks=0)
    assert third.replayed == 0
    assert not spill.exists()
    kinds_after, _, chain_ok, keys_after = _journal(server.url)
    assert kinds_after["decision"] == kinds["decision"]
    assert len(set(keys_after)) == len(keys_after)
    assert chain_ok
    shutil.rmtree(out)


_CRASH_IN_OUTAGE = """
import itertools, json, os, subprocess, sys, trio
from bot4_paper import PaperExchange
from bot4.data import iter_sample
from bot4.journal.service import JournalService
from bot4.session import SessionConfig, StrategyConfig, run_session

out, url, stop = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
PARAMS = json.loads(sys.argv[4])

class LiveVenue(PaperExchange):
    durable = True

venue = LiveVenue.from_config({"feed": list(itertools.islice(iter_sample(), 6000)),
                               "balance": "10000"})
seen = itertools.count(1)

async def tick(_):
    n = next(seen)
    if n == 1500:
        subprocess.run(stop, check=True, capture_output=True)  # the database goes away
    if n == 4000:
        os._exit(9)  # and the bot dies during the outage: no last flush

config = SessionConfig(strategies=(StrategyConfig("sma_cross", PARAMS),), out=out,
                       record=False, journal="off")
trio.run(lambda: run_session(config, exchange=venue, services=[JournalService(url)],
                             progress=tick))
"""


def test_a_crash_during_the_outage_keeps_what_was_spilled(
    server: OwnPostgres, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    stop = [
        *server.prefix,
        str(server.bin / "pg_ctl"),
        "-D",
        str(server.data),
        "-m",
        "fast",
        "-w",
        "stop",
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CRASH_IN_OUTAGE, str(out), server.url, json.dumps(stop),
         json.dumps(PARAMS)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 9, done.stderr
    spill = out / SPILL_FILE
    assert spill.exists()
    lines = spill.read_text().splitlines()
    refusals = sum('"journal"' in line and '"decision"' in line for line in lines[1:])
    assert refusals >= 1  # the refusals made during the outage were on disk before the crash
    server.start()
    _, _, _, after = _session(out, server.url, ticks=0)
    assert after.replayed == len(lines) - 1
    assert not spill.exists()
    _, rules, chain_ok, keys = _journal(server.url)
    assert rules["journal"] == refusals
    assert len(set(keys)) == len(keys)
    assert chain_ok
