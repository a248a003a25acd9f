"""Hot reload: an edited rule file is picked up by a running policy; a file
that does not compile is refused whole and the last good policy stays."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from bot4.model import Approved, Rejected
from bot4.risk import RiskPolicy
from tests.riskkit import RULES, FixedCorrelation, market, order, portfolio


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    # Filesystems with coarse mtimes: make sure the change is visible.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_unchanged_files_do_not_reload(rules: Path) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    assert policy.reload_if_changed() is None
    path = rules / "20-entry.yaml"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same content
    assert policy.reload_if_changed() is None


def test_edited_limit_takes_effect(rules: Path) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    big = order(qty="0.03")  # 1.5% of equity
    assert isinstance(policy.check_order(big, portfolio(), market(), 0), Approved)
    _edit(rules / "20-entry.yaml", "max_position_fraction: 0.02 ", "max_position_fraction: 0.01 ")
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert outcome.reloaded
    assert outcome.ok
    decision = policy.check_order(big, portfolio(), market(), 1)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-position-size"
    assert "1%" in decision.reason


def test_broken_edit_keeps_the_last_good_policy(
    rules: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    # A file that half-parses: the first rule is fine, a later one is broken.
    _edit(rules / "20-entry.yaml", "max_position_fraction: 0.02 ", "max_position_fraction: 0.01 ")
    _edit(
        rules / "20-entry.yaml",
        "when: liquidation.distance < min_liquidation_distance",
        "when: liquidation.distance < min_liquidation_distanse",
    )
    with caplog.at_level(logging.ERROR, logger="bot4.risk"):
        outcome = policy.reload_if_changed()
    assert outcome is not None
    assert not outcome.reloaded
    assert outcome.error is not None
    assert str(outcome.error).startswith(str(rules / "20-entry.yaml") + ":")
    assert "min_liquidation_distanse" in str(outcome.error)
    assert "keeping the previous policy" in caplog.text
    # Nothing of the broken file was applied: 1.5% still passes the 2% limit.
    assert isinstance(policy.check_order(order(qty="0.03"), portfolio(), market(), 0), Approved)
    # Reported once, not on every poll.
    assert policy.reload_if_changed() is None
    # Fixed: the new policy (1%) loads.
    _edit(rules / "20-entry.yaml", "min_liquidation_distanse", "min_liquidation_distance")
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert outcome.reloaded
    assert isinstance(policy.check_order(order(qty="0.03"), portfolio(), market(), 1), Rejected)


def test_new_and_removed_files_are_noticed(rules: Path) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    (rules / "60-extra.yaml").write_text(
        "rules:\n  - name: no-sol\n    description: No SOL.\n    priority: 5\n"
        "    when: order.price < 1000\n    reject: {reason: cheap coins refused}\n"
    )
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert outcome.reloaded
    eth = order(symbol="ETH-USDT", price=900, stop_loss=880, qty="0.1")
    decision = policy.check_order(eth, portfolio(), market("ETH-USDT", 900), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "no-sol"
    (rules / "60-extra.yaml").unlink()
    assert policy.reload_if_changed() is not None
    assert isinstance(policy.check_order(eth, portfolio(), market("ETH-USDT", 900), 1), Approved)


def test_breaker_and_counters_survive_a_reload(rules: Path) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    policy.breaker.trip("before reload", 7)
    _edit(rules / "20-entry.yaml", "max_leverage: 3 ", "max_leverage: 2 ")
    assert policy.reload_if_changed() is not None
    assert policy.breaker.tripped
    assert policy.breaker.reason == "before reload"
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "breaker-tripped"


def test_many_reloads_do_not_leak_engine_handles(rules: Path) -> None:
    policy = RiskPolicy.load([rules], [FixedCorrelation()])
    for i in range(150):
        _edit(
            rules / "40-rate-limit.yaml",
            f"max_orders_per_minute: {10 + i}",
            f"max_orders_per_minute: {11 + i}",
        )
        outcome = policy.reload_if_changed()
        assert outcome is not None
        assert outcome.reloaded
    assert isinstance(policy.check_order(order(), portfolio(), market(), 0), Approved)
