"""The facts issue 17 adds: order.symbol / exchange / type, the event's UTC time,
open positions, the day's realised PnL and loss, the losing streak, a
position's age, and pack facts declared yes/no or text."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot4.contracts import FactContext, RiskRules
from bot4.errors import RuleFileError
from bot4.model import Approved, Fill, Portfolio, Position, Rejected, Side
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy
from tests.riskkit import market, order, portfolio

D = Decimal
DAY0 = datetime(2024, 3, 1, tzinfo=UTC)


def _ns(t: datetime) -> int:
    return int(t.timestamp()) * 10**9


def _policy(tmp_path: Path, rules: str, packs: list[RiskRules] | None = None) -> RiskPolicy:
    (tmp_path / "10-r.yaml").write_text(rules)
    return RiskPolicy.load([tmp_path], packs or [])


APPROVE = """
  - name: approve-rest
    description: Everything else.
    priority: 99
    when: true
    approve: {reason: ok}
"""

NO_ETH_AT_MIDNIGHT = (
    """rules:
  - name: no-eth-at-midnight
    description: No ETH orders between 00:00 and 01:00 UTC.
    priority: 10
    when: order.symbol == "ETH-USDT" and time.hour == 0
    reject: {reason: "no ETH orders between 00:00 and 01:00 UTC"}
"""
    + APPROVE
)

MAX_OPEN = (
    """params:
  max_open_positions: 3
rules:
  - name: max-open-positions
    description: At most 3 open positions.
    priority: 10
    when: not order.reducing and portfolio.open_positions >= max_open_positions
    reject: {reason: "{portfolio.open_positions:.0f} positions open"}
"""
    + APPROVE
)


def test_no_eth_orders_between_midnight_and_one(tmp_path: Path) -> None:
    policy = _policy(tmp_path, NO_ETH_AT_MIDNIGHT)
    try:
        eth = order(symbol="ETH-USDT", price=3000)
        at = {h: _ns(DAY0 + timedelta(hours=h, minutes=30)) for h in (0, 1, 23)}
        refused = policy.check_order(eth, portfolio(), market("ETH-USDT", 3000), at[0])
        assert isinstance(refused, Rejected)
        assert refused.rule == "no-eth-at-midnight"
        for hour in (1, 23):
            fine = policy.check_order(eth, portfolio(), market("ETH-USDT", 3000), at[hour])
            assert isinstance(fine, Approved), hour
        btc = policy.check_order(order(), portfolio(), market(), at[0])
        assert isinstance(btc, Approved)
    finally:
        policy.close()


def test_at_most_three_open_positions(tmp_path: Path) -> None:
    policy = _policy(tmp_path, MAX_OPEN)
    try:
        held = [("BTC-USDT", 50000), ("ETH-USDT", 3000), ("SOL-USDT", 150)]

        def book_of(n: int) -> Portfolio:
            return portfolio(
                positions={s: Position(s, D("0.01"), D(p)) for s, p in held[:n]},
            )

        book = book_of(3)
        refused = policy.check_order(order(symbol="XRP-USDT", price=1), book, None, 0)
        assert isinstance(refused, Rejected)
        assert refused.rule == "max-open-positions"
        assert refused.reason == "3 positions open"
        two = book_of(2)
        assert isinstance(
            policy.check_order(order(symbol="XRP-USDT", price=1), two, None, 0), Approved
        )
    finally:
        policy.close()


def _fill(cid: str, side: str, qty: str, price: str, when: datetime, fee: str = "0") -> Fill:
    return Fill(cid, cid, "BTC-USDT", Side(side), D(qty), D(price), D(fee), when)


def test_the_days_figures_come_from_the_fills_and_survive_a_replay() -> None:
    fills = [
        _fill("a", "buy", "1", "100", DAY0 + timedelta(hours=20), fee="0.1"),
        _fill("b", "sell", "1", "90", DAY0 + timedelta(hours=21), fee="0.1"),  # -10 yesterday
        _fill("c", "buy", "1", "100", DAY0 + timedelta(days=1, hours=1), fee="0.1"),
        _fill("d", "sell", "0.5", "96", DAY0 + timedelta(days=1, hours=2)),  # -2 today
    ]
    tracker = PortfolioTracker(D(1000))
    for f in fills:
        tracker.apply(f)
    activity = tracker.snapshot().activity
    today = _ns(DAY0 + timedelta(days=1, hours=3)) // (86_400 * 10**9)
    assert activity.realized_on(today) == D("-2.1")  # -2 realised, 0.1 fee of today's buy
    assert activity.realized_on(today + 1) == 0  # a new day starts at zero
    assert activity.losing_streak == 2
    assert activity.opened_ns["BTC-USDT"] == _ns(DAY0 + timedelta(days=1, hours=1))
    again = PortfolioTracker(D(1000))
    for f in fills:  # what recovery does after a restart: the journal's fills, in order
        again.apply(f)
    assert again.snapshot().activity == activity
    assert again.snapshot().activity.opened_ns == activity.opened_ns
    tracker.apply(_fill("e", "sell", "0.5", "110", DAY0 + timedelta(days=1, hours=4)))
    after = tracker.snapshot().activity
    assert after.losing_streak == 0  # a profit resets the streak
    assert "BTC-USDT" not in after.opened_ns  # flat


def test_daily_loss_and_position_age_as_facts(tmp_path: Path) -> None:
    rules = (
        """rules:
  - name: old-or-losing
    description: Refuse while the position is older than an hour or today's loss tops 50.
    priority: 10
    when: position.age_seconds > 3600 or portfolio.daily_loss > 50
    reject: {reason: "age {position.age_seconds:.0f} s, loss {portfolio.daily_loss:.2f}"}
"""
        + APPROVE
    )
    policy = _policy(tmp_path, rules)
    try:
        tracker = PortfolioTracker(D(10000))
        opened = DAY0 + timedelta(hours=1)
        tracker.apply(_fill("a", "buy", "1", "50000", opened))
        tracker.mark("BTC-USDT", D("49990"))  # an open loss of 10
        young = _ns(opened + timedelta(minutes=30))
        ok = policy.check_order(order(), tracker.snapshot(), market(), young)
        assert isinstance(ok, Approved)
        old = policy.check_order(
            order(), tracker.snapshot(), market(), _ns(opened + timedelta(hours=2))
        )
        assert isinstance(old, Rejected)
        assert old.reason == "age 7200 s, loss 10.00"
        tracker.mark("BTC-USDT", D("49900"))  # an open loss of 100
        losing = policy.check_order(order(), tracker.snapshot(), market(), young)
        assert isinstance(losing, Rejected)
        assert "loss 100.00" in losing.reason
    finally:
        policy.close()


class Blocker(RiskRules):
    name = "blocker"

    def __init__(self, value: object) -> None:
        self.value = value

    def fact_names(self) -> frozenset[str]:
        return frozenset({"blocker.on", "blocker.desk"})

    def fact_types(self) -> Mapping[str, str]:
        return {"blocker.on": "bool", "blocker.desk": "string"}

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {"blocker.on": self.value, "blocker.desk": "asia"}


BLOCKED = (
    """rules:
  - name: blocked
    description: A pack's yes/no fact as a condition of its own.
    priority: 10
    when: blocker.on and blocker.desk == "asia"
    reject: {reason: "blocked"}
"""
    + APPROVE
)


def test_a_pack_fact_declared_yes_no_is_a_condition(tmp_path: Path) -> None:
    for value, expected in ((True, Rejected), (False, Approved)):
        policy = _policy(tmp_path, BLOCKED, [Blocker(value)])
        try:
            assert isinstance(policy.check_order(order(), portfolio(), market(), 0), expected)
        finally:
            policy.close()


def test_a_pack_value_of_another_type_than_declared_rejects(tmp_path: Path) -> None:
    policy = _policy(tmp_path, BLOCKED, [Blocker(1.0)])
    try:
        refused = policy.check_order(order(), portfolio(), market(), 0)
        assert isinstance(refused, Rejected)
        assert refused.rule == "fail-closed"
        assert "blocker.on must be a bool" in refused.reason
    finally:
        policy.close()


def test_a_type_for_a_fact_the_pack_does_not_give_is_refused(tmp_path: Path) -> None:
    class Wrong(Blocker):
        def fact_types(self) -> Mapping[str, str]:
            return {"blocker.other": "bool"}

    with pytest.raises(RuleFileError, match="not one of its facts"):
        _policy(tmp_path, BLOCKED, [Wrong(True)])
