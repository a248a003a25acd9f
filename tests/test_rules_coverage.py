"""``bot4 rules test --coverage`` / ``--min-coverage``: rules fired, conditions seen both ways."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_bot4

REPO = Path(__file__).resolve().parent.parent

RULE = """\
description: One rule with two comparisons.
params:
  max_qty: 1
  max_leverage: 2
rules:
  - name: big-and-leveraged
    description: Not both large and leveraged.
    priority: 10
    when: order.qty > max_qty and order.leverage > max_leverage
    reject:
      reason: "too big at too much leverage"

  - name: approve-rest
    description: Everything else.
    priority: 99
    when: true
    approve:
      reason: "ok"
"""

ONE_SCENARIO = """\
scenarios:
  - name: big and leveraged is rejected
    facts:
      portfolio: {equity: 100000}
      order: {symbol: BTC-USDT, side: buy, qty: 2, price: 100, stop_loss: 90, leverage: 3}
      market: {last: 100}
    expected: {decision: reject, rule: big-and-leveraged}
"""

SECOND_SCENARIO = """\
  - name: small is approved
    facts:
      portfolio: {equity: 100000}
      order: {symbol: BTC-USDT, side: buy, qty: 0.5, price: 100, stop_loss: 90, leverage: 1}
      market: {last: 100}
    expected: {decision: approve, rule: approve-rest}
"""


def _policy(tmp_path: Path, scenarios: str) -> Path:
    (tmp_path / "10-rules.yaml").write_text(RULE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "cases.yaml").write_text(scenarios)
    return tmp_path


def test_the_bundled_policy_is_fully_covered_by_its_tests() -> None:
    # The default policy is the example users copy: every rule fires in some
    # scenario and every comparison is seen true and false.
    result = run_bot4("rules", "test", "rules", "--min-coverage", "100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "coverage: 100.0%" in result.stdout


def test_an_untested_branch_is_named_with_its_rule_and_line(tmp_path: Path) -> None:
    policy = _policy(tmp_path, ONE_SCENARIO)
    result = run_bot4("rules", "test", str(policy), "--no-packs", "--coverage")
    assert result.returncode == 0, result.stdout + result.stderr  # coverage alone never fails
    out = result.stdout
    # 2 rules fired of 2; 2 of 4 outcomes: both comparisons only seen true.
    assert "2 of 2 rules fired, 2 of 4 condition outcomes seen" in out
    assert "coverage: 66.7%" in out  # (2 + 2) of (2 + 4) items
    where = f"{policy / '10-rules.yaml'}:6 big-and-leveraged"
    assert f"{where}: order.qty > max_qty never false" in out
    assert f"{where}: order.leverage > max_leverage never false" in out


def test_min_coverage_fails_under_the_threshold_and_passes_when_tested(tmp_path: Path) -> None:
    policy = _policy(tmp_path, ONE_SCENARIO)
    under = run_bot4("rules", "test", str(policy), "--no-packs", "--min-coverage", "80")
    assert under.returncode == 1
    assert "FAIL coverage 66.7% is below the minimum 80%" in under.stdout
    (policy / "tests" / "cases.yaml").write_text(ONE_SCENARIO + "\n" + SECOND_SCENARIO)
    report = policy / "coverage.json"
    full = run_bot4(
        "rules", "test", str(policy), "--no-packs", "--min-coverage", "100",
        "--coverage-json", str(report),
    )  # fmt: skip
    assert full.returncode == 0, full.stdout + full.stderr
    data = json.loads(report.read_text())
    assert data["percent"] == 100.0
    rule = next(r for r in data["rules"] if r["rule"] == "big-and-leveraged")
    assert rule["evaluated"] == 2
    assert rule["fired"] == 1
    assert all(c["seen_true"] and c["seen_false"] for c in rule["conditions"])


def test_a_stage_without_scenarios_is_never_evaluated() -> None:
    result = run_bot4(
        "rules", "test", "rules", "--scenarios", "rules/tests/limits.yaml", "--coverage"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # limits.yaml has only order scenarios: the fill-stage breaker rule is never asked.
    assert "stop-outs-trip-breaker (never evaluated)" in result.stdout
