"""`bot4 run` and `bot4 replay` end to end, as a user runs them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot4.recording_read import read_records
from tests.conftest import run_bot4, write_ticks

T0 = datetime(2024, 3, 1, tzinfo=UTC)


CONFIG = """
strategies:
  - name: sma_cross
    params: {fast: 10, slow: 60, size: "0.01", stop_loss_pct: "2", take_profit_pct: "4"}
"""


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("run")
    data = write_ticks(tmp / "ticks.csv")
    config = tmp / "session.yaml"
    config.write_text(CONFIG)
    out = tmp / "out"
    result = run_bot4("run", "--data", str(data), "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_run_prints_summary_and_writes_outputs(session: tuple[Path, str]) -> None:
    out, stdout = session
    assert "bot4 session summary" in stdout
    assert f"chart:   {out / 'chart.png'}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == 6000
    assert summary["orders_approved"] > 0
    assert summary["orders_rejected"] > 0
    # Every rejection is attributed to a named rule.
    assert sum(summary["rejections_by_rule"].values()) == summary["orders_rejected"]
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _, first = next(read_records(out / "recording.jsonl.gz"))
    assert first["topic"] == "session.start"
    assert first["payload"]["config"]["strategies"][0]["params"]["slow"] == 60


def test_replay_matches_bit_for_bit(session: tuple[Path, str]) -> None:
    out, _ = session
    result = run_bot4("replay", str(out / "recording.jsonl.gz"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("replay matched: ")
    compared = int(result.stdout.split()[2])
    assert compared > 50


def test_replay_reports_the_first_difference(session: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = session
    lines = [json.dumps(r) for _, r in read_records(out / "recording.jsonl.gz")]
    # Change the price of one recorded fill: the replay must notice.
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record["topic"].startswith("fill."):
            record["payload"]["price"] = "1.00"
            lines[i] = json.dumps(record)
            break
    else:
        pytest.fail("the recording has no fill")
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = run_bot4("replay", str(tampered))
    assert result.returncode == 1
    assert "replay differs after" in result.stdout
    assert "fill.BTC-USDT" in result.stdout or "fill.ETH-USDT" in result.stdout


def test_bad_data_file_names_file_line_and_column(tmp_path: Path) -> None:
    data = write_ticks(tmp_path / "ticks.csv", seconds=5)
    text = data.read_text().splitlines()
    text[3] = text[3].replace(",BTC-USDT,", ",BTC-USDT,abc,", 1).rsplit(",", 1)[0]
    data.write_text("\n".join(text) + "\n")
    result = run_bot4("run", "--data", str(data), "--out", str(tmp_path / "out"), "--no-chart")
    assert result.returncode == 2
    assert f"{data}:4: column 'bid'" in result.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("strategy: sma_cross\nspeed: fast\n")
    result = run_bot4("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{config}:2: speed: expected a number" in result.stderr


def test_unknown_strategy_points_at_plugins_list(tmp_path: Path) -> None:
    data = write_ticks(tmp_path / "ticks.csv", seconds=5)
    result = run_bot4(
        "run", "--data", str(data), "--strategy", "nope", "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "no strategy named 'nope'" in result.stderr
    assert "bot4 plugins list" in result.stderr


def test_the_session_journal_holds_every_order_intent(session: tuple[Path, str]) -> None:
    # With the in-memory paper venue the intents are batched, not waited for;
    # they must still all be in the journal, and the journal must verify.
    out, _ = session
    summary = json.loads((out / "summary.json").read_text())
    journal = out / "journal.sqlite"
    verified = run_bot4("journal", "verify", str(journal))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    intents = run_bot4("journal", "show", str(journal), "--kind", "intent", "--limit", "100000")
    assert intents.returncode == 0, intents.stderr
    placed = summary["orders_approved"]
    assert len(intents.stdout.splitlines()) == placed


def test_the_session_runs_with_fewer_collections_and_the_process_gets_its_own_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bot4 run` runs its session loop with the young generation collected
    every SESSION_GC_YOUNG allocations and what was alive before frozen (the
    collector's full passes were a tenth of the default session's CPU); the
    caller's thresholds and frozen set are as they were after it. The same
    for `bot4 replay`."""
    import gc

    import bot4.session
    from bot4.cli import main
    from bot4.cli.run import SESSION_GC_YOUNG

    seen: dict[str, object] = {}
    inner = bot4.session.run_session

    async def run_session(*args: object, **kwargs: object) -> object:
        seen["threshold"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()
        return await inner(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bot4.session, "run_session", run_session)
    before = gc.get_threshold()
    assert before[0] != SESSION_GC_YOUNG
    data = write_ticks(tmp_path / "ticks.csv", seconds=200)
    assert main(["run", "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    assert seen["threshold"] == (SESSION_GC_YOUNG, *before[1:])
    assert isinstance(seen["frozen"], int)
    assert seen["frozen"] > 10_000  # the modules, config and plugins loaded so far
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    # `bot4 replay` runs the session again: the same collector settings.
    import bot4.replay

    replayed = bot4.replay.replay

    async def replay(*args: object, **kwargs: object) -> object:
        seen["replay threshold"] = gc.get_threshold()
        return await replayed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bot4.replay, "replay", replay)
    assert main(["replay", str(tmp_path / "out" / "recording.jsonl.gz")]) == 0
    assert seen["replay threshold"] == (SESSION_GC_YOUNG, *before[1:])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
