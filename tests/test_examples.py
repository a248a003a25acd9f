"""examples/stress: the default policy with a few thresholds changed, run on the
day-one crash of the bundled sample, shows every rule acting (README: "Seeing
every rule act: the stress example")."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot4.recording_read import read_records
from tests.conftest import REPO, run_bot4

EXAMPLE = REPO / "examples" / "stress"
CONFIG = EXAMPLE / "session.yaml"
RULES = EXAMPLE / "rules"
# No PostgreSQL journal or shared Redis budget from the environment: the
# example journals to <out>/journal.sqlite, as it does for a user.
ENV = {"BOT4_DATABASE_URL": "", "BOT4_REDIS_URL": ""}

# Every threshold the example changes: (file, param) -> (default, example).
CHANGED = {
    ("20-entry.yaml", "max_position_fraction"): (0.02, 0.5),
    ("20-entry.yaml", "max_leverage"): (3, 40),
    ("20-entry.yaml", "min_liquidation_distance"): (0.05, 0.015),
    ("50-liquidation-ladder.yaml", "emergency_below"): (0.05, 0.015),
    ("50-liquidation-ladder.yaml", "reduce_below"): (0.075, 0.0175),
    ("50-liquidation-ladder.yaml", "add_margin_below"): (0.10, 0.02),
}


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("stress") / "out"
    # As the README says to run it: from the repo root (the config's paths are
    # relative to the working directory).
    result = run_bot4(
        "run", "--config", str(CONFIG.relative_to(REPO)), "--out", str(out), env=ENV, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def _events(out: Path, topic: str) -> list[dict[str, Any]]:
    return [e for _, e in read_records(out / "recording.jsonl.gz") if e["topic"] == topic]


def test_the_summary_shows_every_rule_acting(session: tuple[Path, str]) -> None:
    out, stdout = session
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == 36_000
    rejections = summary["rejections_by_rule"]
    actions = summary["risk_actions"]
    # Size cuts and correlation, as in the demo.
    assert rejections.get("max-position-size", 0) > 0
    assert summary["orders_resized"] > 0
    assert rejections.get("max-correlation", 0) > 0
    # Every rung of the liquidation ladder.
    assert actions.get("add_margin", 0) > 0
    assert actions.get("reduce_position", 0) > 0
    assert actions.get("emergency_close", 0) > 0
    # The breaker trips, and new orders are refused after it.
    assert summary["breaker_trips"] >= 1
    assert actions.get("trip_breaker", 0) >= 1
    assert rejections.get("breaker-tripped", 0) > 0
    assert "breaker trips  1" in stdout
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stop_outs_trip_the_breaker_and_later_orders_are_refused(
    session: tuple[Path, str],
) -> None:
    out, _ = session
    stops = [
        e for e in _events(out, "fill.BTC-USDT") if e["payload"]["client_order_id"].endswith(".sl")
    ]
    trips = [e for e in _events(out, "risk.action") if e["payload"]["kind"] == "trip_breaker"]
    assert len(stops) >= 3
    assert [t["payload"]["rule"] for t in trips] == ["stop-outs-trip-breaker"]
    assert "3 stop-outs within an hour" in trips[0]["payload"]["reason"]
    refused = [
        e for e in _events(out, "risk.rejected") if e["payload"]["rule"] == "breaker-tripped"
    ]
    assert refused
    assert min(e["ts"] for e in refused) >= trips[0]["ts"]
    # The ladder's closes are the kernel's reduce-only orders, before the trip.
    ladder = [
        e
        for e in _events(out, "risk.action")
        if e["payload"]["kind"] in ("reduce_position", "emergency_close")
    ]
    assert ladder
    assert max(e["ts"] for e in ladder) < trips[0]["ts"]


def test_the_ladder_saves_the_40x_positions_from_liquidation(session: tuple[Path, str]) -> None:
    out, stdout = session
    summary = json.loads((out / "summary.json").read_text())
    assert summary["liquidations"] == 0
    # ADD_MARGIN moved collateral into the paper venue's isolated positions.
    assert float(summary["margin_added"]) > 0
    assert "0 liquidations" in stdout
    fills = _events(out, "fill.ETH-USDT")
    assert all(f["payload"]["liquidity"] != "liquidation" for f in fills)


def test_without_the_ladder_the_venue_liquidates(tmp_path: Path) -> None:
    config = EXAMPLE / "no-ladder.yaml"
    main = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    copy = yaml.safe_load(config.read_text(encoding="utf-8"))
    # The same session but the ladder's rule file.
    assert copy["strategies"] == main["strategies"]
    assert sorted(Path(r).name for r in copy["rules"]) == sorted(
        p.name for p in RULES.glob("*.yaml") if p.name != "50-liquidation-ladder.yaml"
    )
    out = tmp_path / "out"
    result = run_bot4(
        "run", "--config", str(config.relative_to(REPO)), "--out", str(out), env=ENV, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["liquidations"] >= 1
    liquidated = [
        f["payload"]
        for f in _events(out, "fill.ETH-USDT")
        if f["payload"]["liquidity"] == "liquidation"
    ]
    assert len(liquidated) == summary["liquidations"]
    assert liquidated[0]["client_order_id"].startswith("liq-")
    # The venue's liquidation replays: the re-simulated venue liquidates again.
    replay = run_bot4("replay", str(out / "recording.jsonl.gz"), env=ENV, cwd=REPO)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "replay matched" in replay.stdout + replay.stderr


def test_rules_check_and_scenario_tests_pass() -> None:
    check = run_bot4("rules", "check", str(RULES), env=ENV)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok: 20 rules in 7 files" in check.stdout
    test = run_bot4("rules", "test", str(RULES), env=ENV)
    assert test.returncode == 0, test.stdout + test.stderr
    assert " 0 failed" in test.stdout


def test_only_the_marked_thresholds_differ_from_the_default_policy() -> None:
    default_files = sorted(p.name for p in (REPO / "rules").glob("*.yaml"))
    assert sorted(p.name for p in RULES.glob("*.yaml")) == default_files
    changed: dict[tuple[str, str], tuple[Any, Any]] = {}
    for name in default_files:
        default = yaml.safe_load((REPO / "rules" / name).read_text(encoding="utf-8"))
        example = yaml.safe_load((RULES / name).read_text(encoding="utf-8"))
        # The same rules with the same conditions, windows and settings.
        assert [(r["name"], r["when"]) for r in example["rules"]] == [
            (r["name"], r["when"]) for r in default["rules"]
        ], name
        for key in ("windows", "settings"):
            assert example.get(key) == default.get(key), (name, key)
        params, default_params = example.get("params", {}), default.get("params", {})
        assert params.keys() == default_params.keys(), name
        for key, value in params.items():
            if value != default_params[key]:
                changed[(name, key)] = (default_params[key], value)
        # Each changed value is marked, on its line or in the comment above it.
        lines = (RULES / name).read_text(encoding="utf-8").splitlines()
        for file, key in CHANGED:
            if file == name:
                at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
                start = at
                while start > 0 and lines[start - 1].lstrip().startswith("#"):
                    start -= 1
                assert any("CHANGED" in line for line in lines[start : at + 1]), (name, key)
    assert changed == CHANGED


def test_the_data_is_the_documented_slice_of_the_bundled_sample() -> None:
    data = EXAMPLE / "ticks.csv.gz"
    assert data.stat().st_size < 1_000_000
    with gzip.open(REPO / "bot4" / "data" / "sample" / "ticks.csv.gz", "rt") as f:
        header = next(f)
        window = [line for line in f if "2024-03-01T11:00" <= line[:16] < "2024-03-01T16:00"]
    with gzip.open(data, "rt") as f:
        assert f.read() == header + "".join(window)
