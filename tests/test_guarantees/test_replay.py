"""`bot4 replay` is safe on any file, and replays what was recorded.

Replay builds no exchange from the recording's settings, connects nowhere,
reads no credentials and opens no file the recording names: a crafted header
pointing at a local HTTP server, key files, a venue state file, a data file,
a database and Redis reaches none of them. The policy is the recorded one,
hot reloads included; missing plugins are named before anything runs; a
difference is shown whole.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio

from bot4.data import iter_ticks
from bot4.model import MarketData
from bot4.plugins import PluginManager
from bot4.recording_read import read_records
from bot4.replay import compare, replay
from bot4.risk import default_rules_path
from bot4.session import SessionConfig, StrategyConfig, policy_sha256, run_session
from tests.conftest import REPO, record_paper_session, run_bot4, write_ticks

PARAMS = {"fast": 10, "slow": 60, "size": "0.01", "stop_loss_pct": "2", "take_profit_pct": "4"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real paper session's recording (with orders, fills and rejections)."""
    out = record_paper_session(tmp_path_factory.mktemp("recorded"))
    return out / "recording.jsonl.gz"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [record for _, record in read_records(path)]


def _write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _listener() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))
    server.listen(64)
    return server


def _connections(server: socket.socket) -> int:
    """Connections made to ``server``: a connect completes in the kernel's
    accept queue even though nobody accepts, so count what is queued."""
    server.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def _url(server: socket.socket) -> str:
    host, port = server.getsockname()[:2]
    return f"{host}:{port}"


class Fifos:
    """Named pipes standing for files the replay must not open. Opening one
    for reading blocks (no writer), and while a reader has it open a
    non-blocking open for writing succeeds: that is how an open is seen."""

    def __init__(self, folder: Path, *names: str) -> None:
        self.paths = {name: folder / name for name in names}
        for path in self.paths.values():
            os.mkfifo(path)
        self.opened: set[str] = set()

    def poll(self) -> None:
        for name, path in self.paths.items():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader, not opened
                    raise
                continue
            self.opened.add(name)
            os.close(fd)  # the reader gets end-of-file and goes on


def _replay_watched(
    recording: Path, fifos: Fifos, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot4", "replay", str(recording)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            fifos.poll()
            if time.monotonic() > deadline:
                pytest.fail("the replay did not finish (blocked on a file it opened?)")
            time.sleep(0.02)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _hostile_header(
    header: dict[str, Any], exchange: str, params: dict[str, Any], fifos: Fifos
) -> dict[str, Any]:
    config = header["config"]
    config["exchange"] = exchange
    config["exchange_params"] = params
    config["data"] = str(fifos.paths["data.csv"])
    config["rules"] = [str(fifos.paths["rules.yaml"])]
    header["plugins"] = [
        {**p, "name": exchange, "plugin": exchange} if p["kind"] == "exchange" else p
        for p in header.get("plugins", [])
    ]
    return header


def test_a_crafted_ccxt_recording_connects_nowhere_and_opens_no_named_file(
    recorded: Path, tmp_path: Path
) -> None:
    http, service = _listener(), _listener()
    fifos = Fifos(tmp_path, "api.key", "api.secret", "data.csv", "rules.yaml")
    records = _lines(recorded)
    records[0]["payload"] = _hostile_header(
        records[0]["payload"],
        "ccxt",
        {
            "exchange": "binance",
            "api_url": f"http://{_url(http)}",
            "urls": {"api": f"http://{_url(http)}/api"},
            "api_key_file": str(fifos.paths["api.key"]),
            "secret_file": str(fifos.paths["api.secret"]),
            "symbols": ["BTC-USDT", "ETH-USDT"],
        },
        fifos,
    )
    crafted = _write(tmp_path / "crafted.jsonl", records)
    env = {
        "BOT4_DATABASE_URL": f"postgresql://postgres@{_url(service)}/test",
        "BOT4_REDIS_URL": f"redis://{_url(service)}/0",
    }
    result = _replay_watched(crafted, fifos, env)
    assert fifos.opened == set()
    assert _connections(http) == 0
    assert _connections(service) == 0
    # Played back from the recording itself, the venue's events give the same
    # decisions: a genuine live recording replays without the venue.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("replay matched: ")
    assert int(result.stdout.split()[2]) > 50
    http.close()
    service.close()


def test_a_paper_recording_is_simulated_in_memory_from_plain_numbers_only(
    recorded: Path, tmp_path: Path
) -> None:
    fifos = Fifos(tmp_path, "feed.csv", "data.csv", "rules.yaml")
    state = tmp_path / "paper-state.sqlite"
    records = _lines(recorded)
    records[0]["payload"] = _hostile_header(
        records[0]["payload"],
        "paper",
        {"state": str(state), "feed": str(fifos.paths["feed.csv"]), "slippage_bps": "1"},
        fifos,
    )
    result = _replay_watched(_write(tmp_path / "crafted.jsonl", records), fifos, {})
    assert fifos.opened == set()
    assert not state.exists()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("replay matched: ")
    assert "paper setting 'state' is not used" in result.stderr


def test_a_paper_setting_that_is_not_a_number_is_refused(recorded: Path, tmp_path: Path) -> None:
    records = _lines(recorded)
    records[0]["payload"]["config"]["exchange_params"] = {"taker_fee": "/etc/passwd"}
    result = run_bot4("replay", str(_write(tmp_path / "crafted.jsonl", records)))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "bot4: session.start: paper.taker_fee: '/etc/passwd' is not a number"
    )


def test_the_header_lists_plugins_with_versions_and_the_policy_hash(recorded: Path) -> None:
    header = _lines(recorded)[0]["payload"]
    installed = {p.name: p.version for p in PluginManager.load().plugins}
    used = {(p["kind"], p["name"]): p for p in header["plugins"]}
    assert used[("strategy", "sma_cross")]["version"] == installed["sma_cross"]
    assert used[("exchange", "paper")]["version"] == installed["paper"]
    assert ("risk_rules", "correlation") in used
    loaded = {p["name"]: p["version"] for p in header["plugins_loaded"]}
    assert loaded == {p.name: p.version for p in PluginManager.load().plugins if p.ok}
    texts = {f.name: f.read_text() for f in sorted((REPO / "rules").glob("*.yaml"))}  # cwd=REPO
    assert header["rules"] == texts
    assert header["policy_sha256"] == policy_sha256(texts)


def test_a_missing_plugin_is_named_before_the_replay_starts(recorded: Path, tmp_path: Path) -> None:
    records = _lines(recorded)
    header = records[0]["payload"]
    header["config"]["strategies"][0]["name"] = "grid_magic"
    header["plugins"].append(
        {"kind": "strategy", "name": "grid_magic", "plugin": "bot4-grid", "version": "2.1.0"}
    )
    out = tmp_path / "kept"
    result = run_bot4("replay", str(_write(tmp_path / "crafted.jsonl", records)), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bot4: ")
    assert "strategy 'grid_magic' (plugin bot4-grid 2.1.0)" in lines[0]
    assert not out.exists()  # nothing ran


def test_a_difference_is_shown_whole_with_both_line_numbers(recorded: Path, tmp_path: Path) -> None:
    records = _lines(recorded)
    index = next(i for i, r in enumerate(records) if r["topic"].startswith("fill."))
    records[index]["payload"]["price"] = "1.00"
    tampered = records[index]["payload"]
    result = run_bot4("replay", str(_write(tmp_path / "tampered.jsonl", records)))
    assert result.returncode == 1
    text = result.stdout
    original = next(line for line in text.splitlines() if "original line" in line)
    again = next(line for line in text.splitlines() if "replay   line" in line)
    assert f"original line {index + 1}: {records[index]['topic']} " in original
    # Whole: every field of both records, the tampered one and the replay's.
    assert json.loads(original.split(f"{records[index]['topic']} ", 1)[1]) == tampered
    replayed = json.loads(again.split(f"{records[index]['topic']} ", 1)[1])
    assert replayed["client_order_id"] == tampered["client_order_id"]
    assert replayed["price"] != "1.00"


# --- a hot reload during the session --------------------------------------------------

FREEZE = """\
description: Added while the session ran.
rules:
  - name: freeze-entries
    description: No new risk from now on.
    priority: 5
    when: not order.reducing
    reject:
      reason: "entries frozen"
"""


def _reloading_session(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_path(), rules)
    ticks = list(iter_ticks(write_ticks(tmp_path / "ticks.csv", seconds=1500)))

    def feed() -> Iterator[MarketData]:
        for i, tick in enumerate(ticks):
            if i == 1500:  # the kernel polls every 256 ticks: it reloads at 1536
                (rules / "25-freeze.yaml").write_text(FREEZE)
            yield tick

    config = SessionConfig(
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        rules=(str(rules),),
        out=str(tmp_path / "out"),
        journal="off",
    )
    result = trio.run(lambda: run_session(config, feed=feed(), services=[], reload_every=0.0))
    assert result.stats.reloads == 1
    assert result.recording is not None
    shutil.rmtree(rules)  # the replay uses the recorded text, not these files
    return result.recording


def test_a_session_with_a_hot_reload_replays_to_a_match(tmp_path: Path) -> None:
    recording = _reloading_session(tmp_path)
    records = _lines(recording)
    reloads = [r for r in records if r["topic"] == "policy.reload"]
    assert len(reloads) == 1
    recorded_rules = reloads[0]["payload"]["rules"]
    assert recorded_rules["25-freeze.yaml"] == FREEZE
    assert reloads[0]["payload"]["sha256"] == policy_sha256(recorded_rules)
    at = records.index(reloads[0])
    decided = [r["payload"].get("rule") for r in records[at:] if r["topic"] == "risk.rejected"]
    assert "freeze-entries" in decided
    assert any(r["topic"] == "risk.approved" for r in records[:at])

    result = trio.run(replay, recording)
    assert result.mismatch is None
    assert result.compared > 50

    # The reload is replayed from its record: without it the decisions differ.
    without = _write(tmp_path / "no-reload.jsonl", records[:at] + records[at + 1 :])
    assert trio.run(replay, without).mismatch is not None


def test_a_reload_whose_text_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    records = _lines(_reloading_session(tmp_path))
    at = next(i for i, r in enumerate(records) if r["topic"] == "policy.reload")
    records[at]["payload"]["rules"]["25-freeze.yaml"] = FREEZE.replace("5", "6")
    result = run_bot4("replay", str(_write(tmp_path / "forged.jsonl", records)))
    assert result.returncode == 2
    assert result.stderr.strip().endswith(
        f":{at + 1}: policy.reload: the rule text does not match its sha256"
    )


def test_a_session_stopped_between_two_events_replays_to_a_match(tmp_path: Path) -> None:
    """Stopped (as by a signal) right after its first order: the venue still
    holds that order's fill, which the session never took. The replay must
    end where the recording ends, not simulate past it. The data file, read
    only in part, is closed when the session returns (not left to the garbage
    collector, which may finalize it before its reader: a ResourceWarning)."""
    data = write_ticks(tmp_path / "ticks.csv", seconds=1500)
    kernels: list[Any] = []  # keeps the venue, and whatever it holds, alive
    config = SessionConfig(
        data=str(data),
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        out=str(tmp_path / "out"),
        journal="off",
    )

    def stop_after_first_order(kernel: Any) -> None:
        place = kernel.exchange.place_order

        async def placed_then_stop(order: Any) -> Any:
            state = await place(order)
            kernel.request_stop("SIGINT")
            return state

        kernel.exchange.place_order = placed_then_stop
        kernels.append(kernel)

    result = trio.run(lambda: run_session(config, services=[], on_kernel=stop_after_first_order))
    assert result.stopped == "SIGINT"
    assert kernels
    assert not _open_files(data)
    assert result.recording is not None
    records = _lines(result.recording)
    assert records[-1]["topic"] == "order.placed"  # its fill was never taken
    assert not any(r["topic"].startswith("fill.") for r in records)
    replayed = trio.run(replay, result.recording)
    assert replayed.mismatch is None
    assert replayed.compared > 0


def test_a_recording_that_ends_early_is_named_with_the_next_record(
    recorded: Path, tmp_path: Path
) -> None:
    records = _lines(recorded)
    last = max(i for i, r in enumerate(records) if r["topic"].startswith("fill."))
    short = _write(tmp_path / "short.jsonl", records[:last])
    compared, mismatch = compare(short, recorded)
    assert compared > 0
    assert mismatch is not None
    head, detail = mismatch.split("\n")
    assert head == "the original ended early; the replay goes on with"
    # The file's own line number (a compact recording also has declaration lines).
    line = list(read_records(recorded))[last][0]
    assert detail.startswith(f"  replay line {line}: {records[last]['topic']} ")
    assert json.loads(detail.split(f"{records[last]['topic']} ", 1)[1]) == records[last]["payload"]
    reverse = compare(recorded, short)[1]
    assert reverse is not None
    assert reverse.startswith("the replay ended early; the original goes on with")


def _open_files(path: Path) -> list[str]:
    """This process's file descriptors open on ``path`` (Linux /proc)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed
            if Path(os.readlink(fd)) == path.resolve():
                found.append(fd.name)
    return found


def _as_live(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same recording, as if made against a live venue (no paper engine
    at replay: the venue's side is played back from the records)."""
    header = records[0]["payload"]
    header["config"]["exchange"] = "ccxt"
    header["config"]["exchange_params"] = {"exchange": "binance"}
    header["plugins"] = [
        {**p, "name": "ccxt", "plugin": "ccxt"} if p["kind"] == "exchange" else p
        for p in header["plugins"]
    ]
    return records


def test_a_hot_reload_is_replayed_against_the_recorded_venue_too(tmp_path: Path) -> None:
    records = _as_live(_lines(_reloading_session(tmp_path)))
    live = _write(tmp_path / "live.jsonl", records)
    result = trio.run(replay, live)
    assert result.mismatch is None
    at = next(i for i, r in enumerate(records) if r["topic"] == "policy.reload")
    without = _write(tmp_path / "no-reload.jsonl", records[:at] + records[at + 1 :])
    assert trio.run(replay, without).mismatch is not None


def test_a_venue_refusal_and_failure_are_answered_from_the_recording(tmp_path: Path) -> None:
    from bot4.errors import ExchangeUnavailable, InvalidOrder

    data = write_ticks(tmp_path / "ticks.csv", seconds=1500)
    config = SessionConfig(
        data=str(data),
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        out=str(tmp_path / "out"),
        journal="off",
    )
    calls: list[str] = []

    def flaky_venue(kernel: Any) -> None:
        place = kernel.exchange.place_order

        async def placed(order: Any) -> Any:
            calls.append(order.client_order_id)
            distinct = list(dict.fromkeys(calls))
            if len(distinct) == 2 and order.client_order_id == distinct[1]:
                raise InvalidOrder("qty below the venue's minimum")
            if len(distinct) == 4 and order.client_order_id == distinct[3]:
                raise ExchangeUnavailable("503 maintenance")
            return await place(order)

        kernel.exchange.place_order = placed

    result = trio.run(lambda: run_session(config, services=[], on_kernel=flaky_venue))
    assert result.recording is not None
    records = _lines(result.recording)
    errors = [r["payload"] for r in records if r["topic"] == "kernel.error"]
    assert any("InvalidOrder: qty below" in e for e in errors)
    assert any("giving up on" in e and "ExchangeUnavailable: 503" in e for e in errors)
    live = _write(tmp_path / "live.jsonl", _as_live(records))
    replayed = trio.run(replay, live)
    assert replayed.mismatch is None, replayed.mismatch
    # Without the recorded refusal the replayed venue has no answer: a difference.
    at = next(i for i, r in enumerate(records) if "InvalidOrder" in str(r["payload"]))
    cut = _write(tmp_path / "cut.jsonl", records[:at] + records[at + 1 :])
    mismatch = trio.run(replay, cut).mismatch
    assert mismatch is not None
    assert "the recording holds no answer for order" in mismatch


def _perp_ticks(path: Path) -> Path:
    """Ticks with a mark and a funding rate column from 07:45 UTC (so the
    08:00 funding time falls inside), the marks at the mid except three
    spikes that take any 3x position past its liquidation price."""
    t0 = datetime(2024, 3, 1, 7, 45, tzinfo=UTC)
    lines = ["timestamp,symbol,bid,ask,last,volume,mark,funding_rate"]
    for i in range(1500):
        ts = (t0 + timedelta(seconds=i)).isoformat()
        wave = math.sin(i / 60) + 0.3 * math.sin(i / 7)
        btc = 50000 + 400 * wave
        eth = 3000 + 30 * wave
        spike = {600: 0.5, 900: 1.5, 1200: 0.5}.get(i, 1.0)
        rate = "0.0001" if i % 300 else ""  # now and then a tick without one
        lines.append(
            f"{ts},BTC-USDT,{btc - 0.5:.2f},{btc + 0.5:.2f},{btc:.2f},2,{btc * spike:.2f},{rate}"
        )
        lines.append(f"{ts},ETH-USDT,{eth - 0.05:.2f},{eth + 0.05:.2f},{eth:.2f},20,,{rate}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_session_on_marks_and_funding_rates_replays_to_a_match(tmp_path: Path) -> None:
    """The paper venue liquidates on the data's marks and funds at its rates;
    the recording keeps both, so the replay's venue does the same. Without
    the marks the replay would not liquidate: a mismatch."""
    config = SessionConfig(
        data=str(_perp_ticks(tmp_path / "perp.csv")),
        strategies=(StrategyConfig("sma_cross", {**PARAMS, "leverage": "3"}),),
        out=str(tmp_path / "out"),
        journal="off",
    )
    result = trio.run(lambda: run_session(config, services=[]))
    assert result.stats.liquidations >= 1
    assert result.stats.funding_paid != 0  # at 08:00, at the data's rate (none configured)
    assert result.recording is not None
    records = _lines(result.recording)
    liquidated = [r for r in records if r["topic"].startswith("fill.") and "liq-" in str(r)]
    assert liquidated
    replayed = trio.run(replay, result.recording)
    assert replayed.mismatch is None
    assert replayed.compared > 50

    for record in records:
        if record["topic"].startswith("market."):
            record["payload"]["mark"] = None
    unmarked = _write(tmp_path / "unmarked.jsonl", records)
    assert trio.run(replay, unmarked).mismatch is not None
