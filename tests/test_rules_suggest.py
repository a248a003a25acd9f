""" "Did you mean ...?" on a misspelt fact, parameter or key (issue 17)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bot4.suggest import close_names, did_you_mean
from tests.conftest import run_bot4

REPO = Path(__file__).resolve().parent.parent
ENTRY = "when: order.leverage > max_leverage"


def _check_with(tmp_path: Path, old: str, new: str) -> str:
    policy = tmp_path / "rules"
    shutil.copytree(REPO / "rules", policy)
    entry = policy / "20-entry.yaml"
    text = entry.read_text()
    assert old in text
    entry.write_text(text.replace(old, new))
    result = run_bot4("rules", "check", str(policy), "--no-packs")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{entry}:31: ") or lines[0].startswith(f"{entry}:")
    return lines[0]


@pytest.mark.parametrize(
    ("new", "hint"),
    [
        ("when: order.levrage > max_leverage", "did you mean 'order.leverage'?"),
        ("when: order.leverage > max_leverge", "did you mean 'max_leverage'?"),
        ("when: order.leverage > max_lev", "did you mean 'max_leverage' or 'max_leverage_other'?"),
        # The namespace slip: the same leaf under another root comes first.
        (
            "when: portfolio.qty > max_leverage",
            "did you mean 'fill.qty' or 'order.qty' or 'position.qty'?",
        ),
        ("wehn: order.leverage > max_leverage", "did you mean 'when'?"),
    ],
)
def test_a_misspelt_name_gets_a_suggestion(tmp_path: Path, new: str, hint: str) -> None:
    assert hint in _check_with(tmp_path, ENTRY, new)


def test_nothing_close_gets_no_guess(tmp_path: Path) -> None:
    line = _check_with(tmp_path, ENTRY, "when: order.zzzzzz > max_leverage")
    assert "unknown fact 'order.zzzzzz'" in line
    assert "did you mean" not in line


def test_scenario_keys_are_suggested_too(tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "scenarios:\n  - name: a\n    facts:\n      portfolio: {equity: 100000}\n"
        "      order: {symbol: BTC-USDT, side: buy, qty: 0.01, price: 50000, stop_los: 49000}\n"
        "    expected: {decision: approve}\n"
    )
    result = run_bot4("rules", "test", "rules", "--scenarios", str(scenario))
    assert "unknown key 'stop_los' in order; did you mean 'stop_loss'?" in result.stdout


def test_close_names_orders_leaf_matches_first() -> None:
    known = ["position.qty", "portfolio.equity", "order.qty"]
    assert close_names("portfolio.qty", known)[:2] == ["order.qty", "position.qty"]
    assert did_you_mean("x", ["when", "name"]) == ""
