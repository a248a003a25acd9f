"""``bot4 rules diff``: a recorded session re-run under an edited policy (issue 17)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, record_paper_session, run_bot4

RULES = REPO / "rules"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_paper_session(tmp_path_factory.mktemp("diff"), seconds=3000)


def _edited(tmp_path: Path, old: str, new: str, name: str = "20-entry.yaml") -> Path:
    rules = tmp_path / "edited"
    shutil.copytree(RULES, rules)
    target = rules / name
    text = target.read_text()
    assert old in text
    target.write_text(text.replace(old, new))
    return rules


def _diff(run: Path, *args: str) -> dict:
    result = run_bot4("rules", "diff", "--recording", str(run), *args, "--json")
    assert result.returncode in (0, 1), result.stderr
    data: dict = json.loads(result.stdout)
    assert (result.returncode == 1) == bool(data["changes"])
    return data


def test_the_recorded_policy_against_itself_changes_nothing(run: Path) -> None:
    # The old side (the recorded policy) and a new side with the same rule
    # text decide alike: the simulation reproduces the session.
    data = _diff(run, "--new", str(RULES))
    assert data["changes"] == []
    assert data["counts"] == {}
    summary = json.loads((run / "summary.json").read_text())
    assert data["effects"]["orders_approved"]["old"] == summary["orders_approved"]
    assert data["effects"]["pnl"]["old"] == summary["pnl"]


def test_a_halved_position_limit_resizes_the_cut_orders(run: Path, tmp_path: Path) -> None:
    new = _edited(tmp_path, "max_position_fraction: 0.02", "max_position_fraction: 0.01")
    data = _diff(run, "--new", str(new))
    assert data["counts"].get("resized", 0) > 0
    assert "max-position-size" in data["by_rule"]
    resized = next(c for c in data["changes"] if c["kind"] == "resized")
    assert resized["old"]["cut"] or resized["new"]["cut"]
    assert resized["new"]["rule"] == "max-position-size"
    assert (
        data["effects"]["avg_gross_exposure"]["new"] < data["effects"]["avg_gross_exposure"]["old"]
    )


def test_a_policy_that_refuses_what_was_approved_is_named_and_re_simulated(
    run: Path, tmp_path: Path
) -> None:
    # A rule that refuses every buy: each approved buy becomes a rejection by it.
    new = _edited(
        tmp_path,
        "rules:\n",
        "rules:\n  - name: no-buys\n    description: Refuse every buy.\n    priority: 35\n"
        '    when: order.side == "buy" and not order.reducing\n'
        '    reject:\n      reason: "no buys today"\n\n',
    )
    data = _diff(run, "--new", str(new))
    assert data["counts"]["approved->rejected"] > 0
    assert data["by_rule"]["no-buys"]["approved->rejected"] > 0
    flipped = [c for c in data["changes"] if c["rule"] == "no-buys"]
    assert all(c["side"] == "buy" for c in flipped)
    # What follows differs too: a short no longer closed by a buy leaves later
    # sells at the position limit; the new side is simulated, not re-judged.
    assert any(c["rule"] == "max-position-size" and c["side"] == "sell" for c in data["changes"])
    assert data["first_change_ns"] == min(c["ts_ns"] for c in data["changes"])
    assert any("re-simulates" in note for note in data["notes"])
    assert data["effects"]["orders_approved"]["new"] < data["effects"]["orders_approved"]["old"]


def test_old_may_be_given_and_the_table_and_chart_are_written(run: Path, tmp_path: Path) -> None:
    new = _edited(tmp_path, "max_position_fraction: 0.02", "max_position_fraction: 0.01")
    chart = tmp_path / "diff.png"
    result = run_bot4(
        "rules", "diff", "--recording", str(run / "recording.jsonl.gz"),
        "--old", str(RULES), "--new", str(new), "--chart", str(chart),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "changed decisions:" in result.stdout
    assert "effect" in result.stdout
    assert "max-position-size" in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_one_line_and_exit_2(run: Path, tmp_path: Path) -> None:
    missing = run_bot4("rules", "diff", "--recording", str(tmp_path / "nope"), "--new", str(RULES))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    bad_rules = tmp_path / "bad"
    bad_rules.mkdir()
    (bad_rules / "10-x.yaml").write_text(
        "rules:\n  - name: x\n    description: d\n    when: nope.x > 1\n    reject: {reason: r}\n"
    )
    broken = run_bot4("rules", "diff", "--recording", str(run), "--new", str(bad_rules))
    assert broken.returncode == 2
    assert broken.stderr.startswith(f"bot4: {bad_rules / '10-x.yaml'}:4:")
    assert "Traceback" not in broken.stderr
    crafted = tmp_path / "crafted.jsonl.gz"
    with gzip.open(crafted, "wt") as f:
        f.write('{"topic": "market.X", "ts": 0}\n')
    refused = run_bot4("rules", "diff", "--recording", str(crafted), "--new", str(RULES))
    assert refused.returncode == 2
    assert refused.stderr.startswith("bot4: ")
    assert "Traceback" not in refused.stderr
