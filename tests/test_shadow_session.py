"""``bot4 run --shadow-rules``: a candidate policy beside the live one in a session (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bot4.recording_read import read_records
from tests.conftest import PAPER_SESSION_CONFIG, REPO, run_bot4, write_ticks

RULES = REPO / "rules"


def _session(tmp_path: Path, name: str, *extra: str) -> tuple[Path, dict[str, Any]]:
    data = tmp_path / "ticks.csv"
    if not data.exists():
        write_ticks(data, seconds=3000)
    config = tmp_path / "session.yaml"
    config.write_text(PAPER_SESSION_CONFIG)
    out = tmp_path / name
    result = run_bot4(
        "run", "--data", str(data), "--config", str(config), "--out", str(out), "--no-chart",
        *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, json.loads((out / "summary.json").read_text())


def _decisions(out: Path) -> list[tuple[str, Any]]:
    return [
        (r["topic"], r["payload"])
        for _, r in read_records(out / "recording.jsonl.gz")
        if r["topic"].startswith(("risk.", "order.", "fill."))
    ]


def _tighter(tmp_path: Path) -> Path:
    rules = tmp_path / "candidate"
    shutil.copytree(RULES, rules)
    entry = rules / "20-entry.yaml"
    entry.write_text(
        entry.read_text().replace("max_position_fraction: 0.02", "max_position_fraction: 0.01")
    )
    return rules


def test_a_shadow_never_changes_what_the_session_decides(tmp_path: Path) -> None:
    plain, plain_summary = _session(tmp_path, "plain")
    shadowed, summary = _session(tmp_path, "shadowed", "--shadow-rules", str(_tighter(tmp_path)))
    assert _decisions(plain) == _decisions(shadowed)
    for key in ("orders_approved", "orders_rejected", "fills", "pnl", "rejections_by_rule"):
        assert summary[key] == plain_summary[key]
    shadow = summary["shadow"]
    assert shadow["total"] > 0
    assert shadow["disagreements"]["approved->rejected"] > 0
    assert shadow["orders"] == summary["orders_approved"] + summary["orders_rejected"]
    # Each disagreement is in the recording with both sides and the shadow's trace.
    found = [
        r["payload"]
        for _, r in read_records(shadowed / "recording.jsonl.gz")
        if r["topic"] == "shadow.disagreement"
    ]
    assert len(found) == shadow["total"]
    first = next(d for d in found if d["kind"] == "approved->rejected")
    assert first["live"]["decision"] == "approve"
    assert first["shadow"]["rule"] == "max-position-size"
    assert any(e["rule"] == "max-position-size" and e["fired"] for e in first["shadow"]["trace"])


def test_the_same_policy_as_shadow_never_disagrees(tmp_path: Path) -> None:
    _, summary = _session(tmp_path, "same", "--shadow-rules", str(RULES))
    assert summary["shadow"]["total"] == 0
    assert summary["shadow"]["ticks"] > 0  # held positions were watched by the shadow too
    assert summary["shadow"]["fills"] == summary["fills"]


def test_a_session_with_a_shadow_replays(tmp_path: Path) -> None:
    out, _ = _session(tmp_path, "rec", "--shadow-rules", str(_tighter(tmp_path)))
    replay = run_bot4("replay", str(out / "recording.jsonl.gz"))
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_a_shadow_policy_that_does_not_compile_stops_the_start_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "10-x.yaml").write_text(
        "rules:\n  - name: x\n    description: d\n"
        "    when: order.nope > 1\n    reject: {reason: r}\n"
    )
    data = write_ticks(tmp_path / "t.csv", seconds=200)
    result = run_bot4(
        "run", "--data", str(data), "--out", str(tmp_path / "o"), "--shadow-rules", str(bad)
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"bot4: {bad / '10-x.yaml'}:4:")
    assert "Traceback" not in result.stderr
