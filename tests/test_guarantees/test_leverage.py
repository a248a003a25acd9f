"""Guarantee: the leverage an order asks for is a limit of its own.

``max-leverage`` refuses an order asking for more than ``max_leverage`` (3x in
the default policy) whatever the size of the book; ``max-gross-exposure`` is a
separate rule with its own parameter (gross exposure after the order at most
``max_gross_exposure`` x equity). An order that breaks several limits shows
every one of them in the trace, and the decision names the first by priority.
"""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from bot4.model import Approved, Position, Rejected
from bot4.risk import RiskPolicy
from bot4.session import DEFAULT_STRATEGY_PARAMS
from tests.conftest import REPO, run_bot4
from tests.riskkit import RULES, FixedCorrelation, market, order, portfolio

ENV = {"BOT4_DATABASE_URL": "", "BOT4_REDIS_URL": ""}


def _policy(rules: Path = RULES) -> RiskPolicy:
    return RiskPolicy.load([rules], [FixedCorrelation()])


def _params(path: Path) -> dict[str, object]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    params = data["params"]
    assert isinstance(params, dict)
    return params


def _copy_with(tmp_path: Path, **params: object) -> Path:
    """rules/ with some parameters of 20-entry.yaml changed."""
    copy = tmp_path / "rules"
    shutil.copytree(RULES, copy, ignore=shutil.ignore_patterns("tests"))
    entry = copy / "20-entry.yaml"
    lines = entry.read_text(encoding="utf-8").splitlines()
    for key, value in params.items():
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"  {key}:")]
        lines[at] = f"  {key}: {value}"
    entry.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy


@pytest.mark.parametrize("leverage", ["4", "3.01", "18", "25"])
def test_an_order_above_3x_is_rejected_by_max_leverage_even_on_an_empty_book(
    leverage: str,
) -> None:
    policy = _policy()
    try:
        # 50 of notional on 100,000 of equity: gross exposure is nowhere near 3x.
        decision = policy.check_order(
            order(qty="0.001", leverage=leverage), portfolio(), market(), 0
        )
    finally:
        policy.close()
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-leverage"
    assert f"asks for {leverage}x leverage, above the 3x limit" in decision.reason
    assert decision.suggested_size == 0  # no smaller size fixes the leverage


@pytest.mark.parametrize("leverage", ["1", "2.5", "3"])
def test_an_order_at_3x_or_less_is_approved(leverage: str) -> None:
    policy = _policy()
    try:
        decision = policy.check_order(
            order(qty="0.01", leverage=leverage), portfolio(), market(), 0
        )
    finally:
        policy.close()
    assert isinstance(decision, Approved)


def test_leverage_and_gross_exposure_are_separate_rules_with_their_own_parameters(
    tmp_path: Path,
) -> None:
    params = _params(RULES / "20-entry.yaml")
    assert params["max_leverage"] == 3
    assert params["max_gross_exposure"] == 3
    # 299,000 of ETH on 100,000 of equity; a 3x BTC order of 2,000 makes 3.01x gross.
    full = Position("ETH-USDT", Decimal(100), Decimal(2990), leverage=Decimal(3))
    full_book = portfolio(positions={"ETH-USDT": full}, marks={"ETH-USDT": 2990})
    # Half that: the same order makes 1.515x.
    half = Position("ETH-USDT", Decimal(50), Decimal(2990), leverage=Decimal(3))
    half_book = portfolio(positions={"ETH-USDT": half}, marks={"ETH-USDT": 2990})
    five_x = order(qty="0.001", leverage=5)
    big = order(qty="0.04", leverage=3)

    default = _policy()
    less_exposure = _policy(_copy_with(tmp_path / "a", max_gross_exposure=1.5))
    more_leverage = _policy(_copy_with(tmp_path / "b", max_leverage=10))
    try:
        gross = default.check_order(big, full_book, market(), 0)
        assert isinstance(gross, Rejected)
        assert gross.rule == "max-gross-exposure"
        assert "gross exposure would be 3.01x equity, above 3x" in gross.reason
        assert gross.suggested_size == Decimal("0.02")
        assert isinstance(default.check_order(big, half_book, market(), 0), Approved)
        # Lowering the exposure limit refuses that order; the leverage limit is unchanged.
        cut = less_exposure.check_order(big, half_book, market(), 0)
        assert isinstance(cut, Rejected)
        assert cut.rule == "max-gross-exposure"
        assert cut.suggested_size == Decimal("0.01")
        assert isinstance(
            less_exposure.check_order(order(leverage=3), portfolio(), market(), 0), Approved
        )
        lev = less_exposure.check_order(five_x, portfolio(), market(), 0)
        assert isinstance(lev, Rejected)
        assert lev.rule == "max-leverage"
        # Raising the leverage limit lets 5x through; the exposure limit still binds.
        assert isinstance(more_leverage.check_order(five_x, portfolio(), market(), 0), Approved)
        still = more_leverage.check_order(big, full_book, market(), 0)
        assert isinstance(still, Rejected)
        assert still.rule == "max-gross-exposure"
    finally:
        for p in (default, less_exposure, more_leverage):
            p.close()


def test_a_25x_order_near_liquidation_shows_every_rejecting_rule_in_the_trace(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "order.yaml"
    scenario.write_text(
        "facts:\n"
        "  portfolio: {equity: 100000}\n"
        "  order: {symbol: BTC-USDT, side: buy, qty: 0.001, price: 50000, stop_loss: 49000,"
        " leverage: 25}\n"
        "  market: {last: 50000}\n",
        encoding="utf-8",
    )
    result = run_bot4("rules", "eval", "--scenario", str(scenario), "--json", env=ENV)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["decision"] == "reject"
    assert out["decided_by"] == "max-leverage"
    trace = {t["rule"]: t for t in out["trace"]}
    rejecting = [t["rule"] for t in out["trace"] if t["fired"] and t["outcome"] == "reject"]
    # Liquidation 3.5% from entry (< 5%) and 25x (> 3x): both rules would reject.
    assert rejecting == ["max-leverage", "liquidation-distance"]
    assert trace["max-leverage"]["decided"] is True
    assert trace["liquidation-distance"]["decided"] is False
    assert trace["liquidation-distance"]["values"]["liquidation.distance"] == pytest.approx(0.035)
    assert trace["max-leverage"]["values"]["order.leverage"] == 25.0


def test_the_demo_and_the_examples_ask_for_leverage_their_policy_allows() -> None:
    default_max = Decimal(str(_params(RULES / "20-entry.yaml")["max_leverage"]))
    assert Decimal(str(DEFAULT_STRATEGY_PARAMS["leverage"])) <= default_max
    stress = yaml.safe_load((REPO / "examples/stress/session.yaml").read_text(encoding="utf-8"))
    stress_max = Decimal(str(_params(REPO / "examples/stress/rules/20-entry.yaml")["max_leverage"]))
    asked = [Decimal(s["params"]["leverage"]) for s in stress["strategies"]]
    assert asked == [Decimal(10), Decimal(40)]
    assert max(asked) <= stress_max


def test_the_rule_files_scenario_tests_pass() -> None:
    for rules in ("rules", "examples/stress/rules"):
        result = run_bot4("rules", "test", rules, env=ENV)
        assert result.returncode == 0, result.stdout + result.stderr
        assert " 0 failed" in result.stdout
