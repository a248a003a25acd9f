"""ShadowPolicy: a candidate policy beside the live one, compared, never deciding."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bot4.contracts import FactContext, RiskRules
from bot4.model import Approved, Rejected
from bot4.risk import RiskPolicy
from bot4.risk.shadow import (
    APPROVED_TO_REJECTED,
    ERROR,
    REJECTED_TO_APPROVED,
    Disagreement,
    ShadowPolicy,
)
from tests.riskkit import RULES, SEC, FixedCorrelation, market, order, portfolio


def _copy(tmp_path: Path, old: str, new: str) -> Path:
    rules = tmp_path / "candidate"
    shutil.copytree(RULES, rules)
    entry = rules / "20-entry.yaml"
    text = entry.read_text()
    assert old in text
    entry.write_text(text.replace(old, new))
    return rules


@pytest.fixture
def live() -> Iterator[RiskPolicy]:
    policy = RiskPolicy.load([RULES], [FixedCorrelation(0.0)])
    yield policy
    policy.close()


def _shadow(rules: Path, seen: list[Disagreement], pack: RiskRules | None = None) -> ShadowPolicy:
    return ShadowPolicy(RiskPolicy.load([rules], [pack or FixedCorrelation(0.0)]), seen.append)


def test_the_same_policy_never_disagrees(live: RiskPolicy) -> None:
    seen: list[Disagreement] = []
    shadow = _shadow(RULES, seen)
    try:
        for i, qty in enumerate(["0.01", "0.03", "0.06", "0.5", "0.0001"]):
            o = order(qty=qty, cid=f"o{i}")
            decision = live.check_order(o, portfolio(), market(), i * SEC)
            shadow.order(o, portfolio(), market(), i * SEC, decision)
            if isinstance(decision, Approved):
                shadow.live_approved(o.symbol, i * SEC)
        assert seen == []
        assert shadow.stats.orders == 5
    finally:
        shadow.close()


def test_a_tighter_candidate_disagrees_with_both_decisions_and_its_trace(
    live: RiskPolicy, tmp_path: Path
) -> None:
    rules = _copy(
        tmp_path,
        "max_position_fraction: 0.02",
        "max_position_fraction: 0.01",
    )
    seen: list[Disagreement] = []
    shadow = _shadow(rules, seen)
    try:
        o = order(qty="0.03")  # 1.5% of equity: within 2%, above 1%
        decision = live.check_order(o, portfolio(), market(), 0)
        assert isinstance(decision, Approved)  # the live policy decides
        found = shadow.order(o, portfolio(), market(), 0, decision)
        assert found is not None
        assert found.kind == APPROVED_TO_REJECTED
        assert found.live["decision"] == "approve"
        assert found.shadow["rule"] == "max-position-size"
        assert any(e["rule"] == "max-position-size" and e["fired"] for e in found.shadow["trace"])
        assert seen == [found]
        assert shadow.stats.as_dict()["disagreements"] == {APPROVED_TO_REJECTED: 1}
    finally:
        shadow.close()


def test_a_looser_candidate_says_it_would_have_approved(live: RiskPolicy, tmp_path: Path) -> None:
    rules = _copy(tmp_path, "max_position_fraction: 0.02", "max_position_fraction: 0.05")
    seen: list[Disagreement] = []
    shadow = _shadow(rules, seen)
    try:
        o = order(qty="0.06")  # 3%
        decision = live.check_order(o, portfolio(), market(), 0)
        assert isinstance(decision, Rejected)
        found = shadow.order(o, portfolio(), market(), 0, decision)
        assert found is not None
        assert found.kind == REJECTED_TO_APPROVED
        assert found.live["rule"] == "max-position-size"
    finally:
        shadow.close()


def test_the_shadow_counts_the_orders_the_live_policy_approved(live: RiskPolicy) -> None:
    # order-rate-limit: 10 orders per symbol per minute. The live policy
    # approves ten; the shadow, told of each, refuses the eleventh as live does.
    seen: list[Disagreement] = []
    shadow = _shadow(RULES, seen)
    try:
        for i in range(11):
            o = order(qty="0.001", cid=f"o{i}")
            decision = live.check_order(o, portfolio(), market(), i * SEC)
            shadow.order(o, portfolio(), market(), i * SEC, decision)
            if isinstance(decision, Approved):
                shadow.live_approved(o.symbol, i * SEC)
        assert isinstance(decision, Rejected)
        assert decision.rule == "order-rate-limit"
        assert seen == []
        # Its own approvals do not count: without live_approved it would approve.
        fresh = _shadow(RULES, seen)
        try:
            for i in range(11):
                fresh.order(
                    order(qty="0.001", cid=f"f{i}"), portfolio(), market(), i * SEC, decision
                )
            assert seen[-1].kind == REJECTED_TO_APPROVED
        finally:
            fresh.close()
    finally:
        shadow.close()


class Broken(RiskRules):
    name = "correlation"

    def fact_names(self) -> frozenset[str]:
        return frozenset({"correlation.max"})

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        raise RuntimeError("pack exploded")


def test_an_error_in_the_shadow_is_counted_and_never_raised(live: RiskPolicy) -> None:
    seen: list[Disagreement] = []
    shadow = _shadow(RULES, seen, Broken())
    try:
        o = order(qty="0.01")
        decision = live.check_order(o, portfolio(), market(), 0)
        assert isinstance(decision, Approved)
        assert shadow.order(o, portfolio(), market(), 0, decision) is None
        assert shadow.stats.disagreements[ERROR] == 1
        assert "pack exploded" in shadow.errors[0]
        assert shadow.stats.as_dict()["total"] == 0  # errors are not disagreements
    finally:
        shadow.close()
