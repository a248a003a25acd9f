"""Signals and errors: a session always ends cleanly, an error is one line.

SIGINT and SIGTERM stop `bot4 run` between two events: summary printed,
summary.json, chart, recording and journal written, exit 0; a second signal
exits at once. An error the user caused (a bad data row mid-run, a bad config
value, an unreachable database or Redis, a bad rule file) prints one line,
``bot4: <file>:<line>: <message>``, and exits 2, never a traceback
(``--debug`` shows it). A bad data row ends the session as a signal does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from bot4.journal import open_store
from bot4.journal.service import journal_service
from bot4.recording_read import read_records
from bot4.session import SessionConfig, StrategyConfig, run_session
from tests.conftest import REPO, make_plugin_dist, run_bot4, write_ticks

PARAMS = {"fast": 10, "slow": 60, "size": "0.01", "stop_loss_pct": "2", "take_profit_pct": "4"}
CONFIG = """\
strategies:
  - name: sma_cross
    params: {fast: 10, slow: 60, size: "0.01", stop_loss_pct: "2", take_profit_pct: "4"}
"""
SLOW_CLOSE = '''
import trio

import bot4
from bot4_paper import PaperExchange

BOT4_API = 1


class SlowClose(PaperExchange):
    """A venue whose goodbye takes a minute: the shutdown is still running
    when the second signal comes."""

    async def close(self):
        await trio.sleep(60)
        await super().close()


@bot4.hookimpl
def register_exchanges(register):
    register("slowclose", SlowClose.from_config, description="paper, slow to close")
'''


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _start_run(
    tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    data = write_ticks(tmp_path / "ticks.csv", seconds=3000)
    (tmp_path / "session.yaml").write_text(CONFIG)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot4",
            "run",
            *("--data", str(data), "--config", str(tmp_path / "session.yaml")),
            *("--out", str(tmp_path / "out"), "--speed", "20", *extra),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def _wait_until_trading(tmp_path: Path, proc: subprocess.Popen[str]) -> None:
    """Until the session has recorded a few hundred events (it is running)."""
    recording = tmp_path / "out" / "recording.jsonl.gz"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if recording.exists() and recording.stat().st_size > 20_000:
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the session did not start trading")


def _no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "ExceptionGroup" not in stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_session_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start_run(tmp_path)
    _wait_until_trading(tmp_path, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _no_traceback(err)
    assert f"bot4: {sig.name}: stopping" in err
    assert "bot4 session summary" in out
    assert f"stopped: {sig.name} after " in out
    folder = tmp_path / "out"
    summary = json.loads((folder / "summary.json").read_text())
    assert 0 < summary["ticks"] < 6000  # stopped early, not at the end of the data
    assert (folder / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [r for _, r in read_records(folder / "recording.jsonl.gz")]
    ticks = [r for r in records if r["topic"].startswith("market.")]
    assert len(ticks) == summary["ticks"]  # every tick handled was recorded, whole
    verified = run_bot4("journal", "verify", str(folder / "journal.sqlite"))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # The recording ends between two events: the stopped session replays.
    replayed = run_bot4("replay", str(folder / "recording.jsonl.gz"))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.startswith("replay matched: ")
    # The journal is free: the next session on it starts (and resumes).
    again = run_bot4(
        "run",
        *("--data", str(write_ticks(tmp_path / "short.csv", seconds=30))),
        *("--out", str(folder), "--no-chart"),
    )
    assert again.returncode == 0, again.stderr


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    site = make_plugin_dist(
        tmp_path / "site",
        dist="bot4-slowclose",
        module="bot4_slowclose",
        source=SLOW_CLOSE,
        entry_name="slowclose",
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    # The suite loads only the bundled plugins (tests/conftest.py): name this one too.
    plugins = ",".join(filter(None, [os.environ.get("BOT4_PLUGINS", ""), "slowclose"]))
    env = {"PYTHONPATH": path, "BOT4_PLUGINS": plugins}
    proc = _start_run(tmp_path, "--exchange", "slowclose", env=env)
    _wait_until_trading(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # the start lines, then the first signal's handler
    while line.startswith(("risk packs in use:", "policy:", "protection:")):
        line = proc.stderr.readline()
    assert line.startswith("bot4: SIGINT: stopping")
    time.sleep(1)  # the venue's close (a minute) is under way
    assert proc.poll() is None
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert time.monotonic() - sent < 10
    assert proc.returncode == 130
    assert "SIGINT again: exiting now" in err
    _no_traceback(err)


def _bad_row(tmp_path: Path) -> tuple[Path, int]:
    data = write_ticks(tmp_path / "ticks.csv", seconds=1500)
    lines = data.read_text().splitlines()
    bad = 2001  # a line in the middle of the run
    lines[bad - 1] = (
        lines[bad - 1].replace(",BTC-USDT,", ",BTC-USDT,", 1).rsplit(",", 3)[0] + ",x,1,2"
    )
    data.write_text("\n".join(lines) + "\n")
    return data, bad


def test_a_bad_data_row_mid_run_ends_the_session_like_a_signal(tmp_path: Path) -> None:
    data, bad = _bad_row(tmp_path)
    out = tmp_path / "out"
    result = run_bot4("run", "--data", str(data), "--out", str(out), "--no-chart")
    assert result.returncode == 2
    # The session had started (its start lines come first); the error is the
    # one line after them, and nothing else is said.
    lines = result.stderr.splitlines()
    assert lines[-1] == f"bot4: {data}:{bad}: column 'ask': 'x' is not a number"
    assert all(
        line.startswith(("risk packs in use:", "policy:", "protection:")) for line in lines[:-1]
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == bad - 2  # every row before the bad one
    assert "bot4 session summary" in result.stdout
    verified = run_bot4("journal", "verify", str(out / "journal.sqlite"))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_bad_data_row_releases_the_journal_lock(tmp_path: Path) -> None:
    data, bad = _bad_row(tmp_path)
    journal = tmp_path / "journal.sqlite"
    config = SessionConfig(
        data=str(data),
        strategies=(StrategyConfig("sma_cross", PARAMS),),
        out=str(tmp_path / "out"),
        journal=str(journal),
    )
    result = trio.run(lambda: run_session(config, services=journal_service(config)))
    assert result.error is not None
    assert str(result.error).startswith(f"{data}:{bad}: ")
    assert result.stats.ticks == bad - 2
    # In this same process: the session's lock on the journal is gone.
    open_store(str(journal), lock=True).close()


def test_a_bad_config_value_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "session.yaml").write_text("strategy: sma_cross\nout: o\nspeed: fast\n")
    result = run_bot4("run", "--config", "session.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bot4: session.yaml:3: speed: expected a number >= 0 (0 = as fast as possible), got 'fast'"
    ]


def test_a_bad_rule_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text("rules:\n  - name: x\n    when: true\n")
    data = write_ticks(tmp_path / "ticks.csv", seconds=10)
    result = run_bot4(
        "run", "--data", str(data), "--rules", "rules.yaml", "--out", "o", cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bot4: rules.yaml:2: ")


@pytest.mark.parametrize(
    "variable", ["BOT4_DATABASE_URL", "BOT4_REDIS_URL"], ids=["database", "redis"]
)
def test_an_unreachable_server_is_one_line(tmp_path: Path, variable: str) -> None:
    port = _closed_port()
    scheme = "postgresql://postgres@" if variable == "BOT4_DATABASE_URL" else "redis://"
    env = {
        variable: f"{scheme}127.0.0.1:{port}/test"
        if "DATABASE" in variable
        else f"{scheme}127.0.0.1:{port}/0"
    }
    data = write_ticks(tmp_path / "ticks.csv", seconds=10)
    args = ("run", "--data", str(data), "--out", str(tmp_path / "out"), "--no-chart")
    result = run_bot4(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bot4: ")
    assert f"127.0.0.1:{port}" in lines[0]
    # --debug shows where it came from, and still exits 2.
    debug = run_bot4("--debug", *args, env=env)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == lines[0]


def test_a_plugin_refusing_a_setting_names_the_config_line(tmp_path: Path) -> None:
    data = write_ticks(tmp_path / "ticks.csv", seconds=10)
    (tmp_path / "session.yaml").write_text(
        "out: o\nstrategies:\n  - name: sma_cross\n    params: {fast: 10, slow: 60}\n"
        "exchange:\n  name: paper\n  taker_fee: lots\n"
    )
    result = run_bot4("run", "--config", "session.yaml", "--data", str(data), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bot4: session.yaml:6: paper: config field 'taker_fee': 'lots' is not a number"
    ]


def test_a_missing_rule_file_is_one_line(tmp_path: Path) -> None:
    data = write_ticks(tmp_path / "ticks.csv", seconds=10)
    result = run_bot4(
        "run", "--data", str(data), "--rules", "gone.yaml", "--out", "o", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["bot4: gone.yaml: no such file or directory"]


def test_a_bad_session_balance_names_the_config_line(tmp_path: Path) -> None:
    (tmp_path / "session.yaml").write_text(
        "out: o\nexchange:\n  name: ccxt\n  exchange: binance\n  balance: lots\n"
    )
    result = run_bot4("run", "--config", "session.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "bot4: session.yaml:3: balance: 'lots' is not a positive number"
    ]
