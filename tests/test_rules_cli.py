"""``bot4 rules check / eval / test``: through the handler module
(``python -m bot4.cli.rules``) and through the real ``bot4`` entry point
(``python -m bot4 rules ...``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.riskkit import REPO, RULES

ENTRY_POINTS = [["-m", "bot4.cli.rules"], ["-m", "bot4", "rules"]]


def run(
    prefix: list[str], *args: str, stdin: str | None = None, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *prefix, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.fixture(params=ENTRY_POINTS, ids=["module", "bot4"])
def cli(request: pytest.FixtureRequest) -> list[str]:
    prefix: list[str] = request.param
    return prefix


def test_check_default_policy(cli: list[str]) -> None:
    result = run(cli, "check")
    assert result.returncode == 0, result.stderr
    assert "20 rules in 7 files" in result.stdout


def test_check_broken_file_reports_file_and_line(cli: list[str], tmp_path: Path) -> None:
    broken = tmp_path / "rules"
    shutil.copytree(RULES, broken)
    text = (broken / "20-entry.yaml").read_text()
    (broken / "20-entry.yaml").write_text(
        text.replace(
            "order.notional > portfolio.free_margin", "order.notional >> portfolio.free_margin"
        )
    )
    result = run(cli, "check", str(broken))
    assert result.returncode == 1
    line = next(
        i
        for i, t in enumerate(text.splitlines(), 1)
        if "order.notional > portfolio.free_margin" in t
    )
    assert result.stderr.startswith(f"{broken / '20-entry.yaml'}:{line}: "), result.stderr
    assert "margin-sufficient" in result.stderr


def test_test_default_policy_runs_the_seed_cases(cli: list[str]) -> None:
    result = run(cli, "test", "rules", "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout
    for name in (
        "a 3% position is rejected",
        "correlation 0.8",
        "4% from liquidation",
        "without a stop loss",
        "breaker tripped",
        "45,250",
        "54,750",
    ):
        assert name in result.stdout


def test_test_reports_a_failing_scenario(cli: list[str], tmp_path: Path) -> None:
    policy = tmp_path / "rules"
    shutil.copytree(RULES, policy)
    seed = policy / "tests" / "seed.yaml"
    seed.write_text(seed.read_text().replace("rule: stop-loss-required", "rule: max-leverage"))
    result = run(cli, "test", str(policy))
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert "expected max-leverage, got stop-loss-required" in result.stdout


def test_eval_scenario_text_shows_decision_rule_and_trace(cli: list[str]) -> None:
    result = run(cli, "eval", "--scenario", "rules/tests/seed.yaml")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "decision: REJECT  (decided by max-position-size)" in out
    assert "3,000.00" in out
    assert "decision: REJECT  (decided by max-correlation)" in out
    assert "action: emergency_close BTC-USDT" in out
    assert "liquidation.price=45250" in out
    assert "liquidation.price=54750" in out
    # The trace lists every rule evaluated, fired or not.
    assert out.count("allow-reducing-orders") >= 6


def test_eval_json_from_stdin(cli: list[str]) -> None:
    facts = {
        "portfolio": {"equity": 100000},
        "order": {
            "symbol": "BTC-USDT",
            "side": "buy",
            "qty": 0.01,
            "price": 50000,
            "leverage": 10,
            "stop_loss": 49000,
        },
        "market": {"last": 50000},
    }
    result = run(cli, "eval", "--json", stdin=json.dumps(facts))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # 10x is above the default 3x limit: the trace shows the rejecting rule
    # beside the default approval that it overrides.
    assert out["decision"] == "reject"
    assert out["decided_by"] == "max-leverage"
    assert out["facts"]["liquidation.price"] == 45250.0
    assert len(out["trace"]) >= 10
    assert {t["rule"] for t in out["trace"] if t["fired"]} == {
        "max-leverage",
        "approve-within-limits",
    }


def test_eval_bad_scenario_is_a_usage_error(cli: list[str]) -> None:
    result = run(cli, "eval", stdin="order: {qty: -1}\n")
    assert result.returncode == 2
    assert "<stdin>:1:" in result.stderr


def test_handlers_directly(capsys: pytest.CaptureFixture[str]) -> None:
    from bot4.cli.rules import main

    assert main(["check", str(RULES)]) == 0
    assert "rules in" in capsys.readouterr().out
    assert main(["test", str(RULES)]) == 0
    assert "passed, 0 failed" in capsys.readouterr().out
