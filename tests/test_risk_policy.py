"""RiskPolicy against the default rules: the seed's acceptance cases, the
liquidation example, reducing orders, fail-closed paths, threads."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot4.contracts import FactContext, RiskRules
from bot4.errors import RiskError, RuleFileError
from bot4.model import Approved, Fill, Portfolio, Position, Rejected, RiskActionKind, Side
from bot4.portfolio import PortfolioTracker
from bot4.risk import FAIL_CLOSED, RiskPolicy
from bot4.risk import policy as policy_module
from bot4.risk.facts import liquidation_price
from tests.riskkit import RULES, SEC, TS, FixedCorrelation, market, order, portfolio


@pytest.fixture
def policy() -> RiskPolicy:
    p = RiskPolicy.load([RULES], [FixedCorrelation(0.0)])
    yield p
    p.close()


def test_small_order_with_stop_is_approved(policy: RiskPolicy) -> None:
    decision = policy.check_order(order(qty="0.03"), portfolio(), market(), 0)
    assert isinstance(decision, Approved)
    assert "max-position-size" in decision.rules
    assert len(decision.rules) >= 10


def test_seed_3_percent_position_is_rejected_with_reason_and_size(policy: RiskPolicy) -> None:
    # 0.06 BTC at 50,000 = 3,000 = 3% of 100,000 equity.
    decision = policy.check_order(order(qty="0.06"), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-position-size"
    assert "3,000.00" in decision.reason
    assert "2%" in decision.reason
    assert decision.suggested_size == Decimal("0.04")
    assert decision.values["position.notional_after"] == 3000.0
    # The suggestion passes.
    again = policy.check_order(order(qty=decision.suggested_size), portfolio(), market(), 1)
    assert isinstance(again, Approved)


def test_seed_correlation_above_limit_is_rejected() -> None:
    policy = RiskPolicy.load([RULES], [FixedCorrelation(0.8)])
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-correlation"
    assert "0.80" in decision.reason
    assert "0.7" in decision.reason
    assert decision.suggested_size == 0


def test_seed_no_stop_loss_is_rejected(policy: RiskPolicy) -> None:
    decision = policy.check_order(order(stop_loss=None), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "stop-loss-required"
    assert decision.suggested_size == 0


def test_seed_breaker_tripped_refuses_every_new_order(policy: RiskPolicy) -> None:
    policy.breaker.trip("test", 0)
    for side in ("buy", "sell"):
        decision = policy.check_order(order(side=side), portfolio(), market(), 0)
        assert isinstance(decision, Rejected)
        assert decision.rule == "breaker-tripped"
    policy.breaker.reset()
    assert isinstance(policy.check_order(order(), portfolio(), market(), 0), Approved)


def test_seed_position_4_percent_from_liquidation_is_emergency_closed(policy: RiskPolicy) -> None:
    pos = Position("BTC-USDT", Decimal("0.01"), Decimal(50000), leverage=Decimal(10))
    # Liquidation at 45,250; at 47,135 the price is 4.0% above it.
    book = portfolio(positions={"BTC-USDT": pos}, marks={"BTC-USDT": 47135})
    actions = policy.on_market_data(market(last=47135), book, 0)
    assert [a.kind for a in actions] == [RiskActionKind.EMERGENCY_CLOSE]
    assert actions[0].symbol == "BTC-USDT"
    assert "45,250.00" in actions[0].reason
    assert "4.00%" in actions[0].reason


@pytest.mark.parametrize(
    ("last", "kind"),
    [
        (48500, RiskActionKind.REDUCE_POSITION),  # 6.7% away
        (49800, RiskActionKind.ADD_MARGIN),  # 9.1% away
        (51000, None),  # 11.3% away
    ],
)
def test_ladder_steps(policy: RiskPolicy, last: int, kind: RiskActionKind | None) -> None:
    pos = Position("BTC-USDT", Decimal("0.01"), Decimal(50000), leverage=Decimal(10))
    book = portfolio(positions={"BTC-USDT": pos}, marks={"BTC-USDT": last})
    actions = policy.on_market_data(market(last=last), book, 0)
    assert [a.kind for a in actions] == ([kind] if kind else [])
    if kind is RiskActionKind.REDUCE_POSITION:
        assert actions[0].fraction == Decimal("0.5")


def test_short_position_ladder(policy: RiskPolicy) -> None:
    pos = Position("BTC-USDT", Decimal("-0.01"), Decimal(50000), leverage=Decimal(10))
    # Short liquidation at 54,750; at 52,500 the price is 4.3% below it.
    book = portfolio(positions={"BTC-USDT": pos}, marks={"BTC-USDT": 52500})
    actions = policy.on_market_data(market(last=52500), book, 0)
    assert [a.kind for a in actions] == [RiskActionKind.EMERGENCY_CLOSE]


def test_tick_without_position_is_free(policy: RiskPolicy) -> None:
    assert policy.on_market_data(market(symbol="ETH-USDT", last=3000), portfolio(), 0) == []


def test_liquidation_example() -> None:
    entry, lev, mmr = Decimal(50000), Decimal(10), Decimal("0.005")
    assert liquidation_price(entry, lev, mmr, long=True) == Decimal(45250)
    assert liquidation_price(entry, lev, mmr, long=False) == Decimal(54750)


def test_liquidation_example_through_the_policy(policy: RiskPolicy) -> None:
    for side, expected in (("buy", 45250.0), ("sell", 54750.0)):
        e = policy.explain(
            "order",
            portfolio=portfolio(),
            now_ns=0,
            market=market(),
            order=order(side=side, leverage=10),
        )
        assert e.facts["liquidation.price"] == expected
        assert e.facts["liquidation.distance"] == pytest.approx(0.095)
        # 10x is above the default 3x limit; the facts are computed all the same.
        assert isinstance(e.decision, Rejected)
        assert e.decision.rule == "max-leverage"


def test_too_close_to_liquidation_is_rejected(policy: RiskPolicy) -> None:
    # 25x with mmr 0.5%: liquidation 3.5% from entry; max-leverage (3x) decides first.
    e = policy.explain(
        "order", portfolio=portfolio(), now_ns=0, market=market(), order=order("0.001", leverage=25)
    )
    assert isinstance(e.decision, Rejected)
    assert e.decision.rule == "max-leverage"
    assert next(t for t in e.trace if t.rule == "liquidation-distance").fired


def test_gross_exposure_limit(policy: RiskPolicy) -> None:
    pos = Position("ETH-USDT", Decimal(100), Decimal(2990))  # 299,000 of exposure on 100,000
    book = portfolio(positions={"ETH-USDT": pos}, marks={"ETH-USDT": 2990})
    decision = policy.check_order(order(qty="0.03", leverage=3), book, market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-gross-exposure"
    assert "above 3x" in decision.reason
    assert decision.suggested_size == Decimal("0.02")


def test_margin_limit(policy: RiskPolicy) -> None:
    pos = Position("ETH-USDT", Decimal(33), Decimal(3000))  # 99,000 of margin at 1x
    book = portfolio(positions={"ETH-USDT": pos}, marks={"ETH-USDT": 3000})
    decision = policy.check_order(order(qty="0.03"), book, market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "margin-sufficient"
    assert decision.suggested_size == Decimal("0.02")


def test_stop_loss_on_wrong_side(policy: RiskPolicy) -> None:
    decision = policy.check_order(order(stop_loss=51000), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "stop-loss-side"


def test_reduce_only_exit_passes_a_tripped_breaker(policy: RiskPolicy) -> None:
    pos = Position("BTC-USDT", Decimal("0.5"), Decimal(50000))
    book = portfolio(positions={"BTC-USDT": pos}, marks={"BTC-USDT": 50000})
    policy.breaker.trip("test", 0)
    close = order(qty="0.5", side="sell", stop_loss=None, reduce_only=True)
    assert isinstance(policy.check_order(close, book, market(), 0), Approved)
    # Against the position and no larger: reducing even without the flag.
    assert isinstance(
        policy.check_order(order(qty="0.2", side="sell", stop_loss=None), book, market(), 0),
        Approved,
    )
    # Larger than the position flips it: that is a new position, refused.
    flip = order(qty="0.6", side="sell", stop_loss=None)
    decision = policy.check_order(flip, book, market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "breaker-tripped"


def test_drawdown_trips_breaker_on_tick_once(policy: RiskPolicy) -> None:
    pos = Position("BTC-USDT", Decimal("1"), Decimal(50000))
    # Peak 120,000; equity 100,000 + (34,000 - 50,000) = 84,000: 30% down.
    book = portfolio(
        equity=100000, peak=120000, positions={"BTC-USDT": pos}, marks={"BTC-USDT": 34000}
    )
    actions = policy.on_market_data(market(last=34000), book, 5)
    assert RiskActionKind.TRIP_BREAKER in [a.kind for a in actions]
    assert policy.breaker.tripped
    assert policy.breaker.tripped_at_ns == 5
    assert "drawdown" in policy.breaker.reason
    again = policy.on_market_data(market(last=34000), book, 6)
    assert RiskActionKind.TRIP_BREAKER not in [a.kind for a in again]


def test_drawdown_rejects_orders(policy: RiskPolicy) -> None:
    decision = policy.check_order(order(), portfolio(equity=80000, peak=100000), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-drawdown"
    assert "20.00%" in decision.reason


def _fill(n: int) -> Fill:
    return Fill(
        f"f{n}", f"c{n}", "BTC-USDT", Side.SELL, Decimal("0.01"), Decimal(49000), Decimal(0), TS
    )


def test_three_stop_outs_within_an_hour_trip_the_breaker(policy: RiskPolicy) -> None:
    book = portfolio()
    assert policy.on_fill(_fill(1), book, 0, stop_out=True) == []
    assert policy.on_fill(_fill(2), book, 1000 * SEC, stop_out=True) == []
    assert policy.on_fill(_fill(3), book, 2000 * SEC, stop_out=False) == []
    actions = policy.on_fill(_fill(4), book, 3599 * SEC, stop_out=True)
    assert [a.kind for a in actions] == [RiskActionKind.TRIP_BREAKER]
    assert policy.breaker.tripped
    policy.breaker.reset()
    # Reset forgets counted stop-outs; a later, spread-out stop-out does not re-trip.
    assert policy.on_fill(_fill(5), book, 3700 * SEC, stop_out=True) == []


def test_stop_outs_spread_over_more_than_an_hour_do_not_trip(policy: RiskPolicy) -> None:
    book = portfolio()
    for i, t in enumerate((0, 1800, 3600, 5400)):
        assert policy.on_fill(_fill(i), book, t * SEC, stop_out=True) == []
    assert not policy.breaker.tripped


def test_rate_limit_on_event_time(policy: RiskPolicy) -> None:
    book = portfolio()
    for i in range(10):
        assert isinstance(policy.check_order(order(cid=f"o{i}"), book, market(), i * SEC), Approved)
    decision = policy.check_order(order(cid="o10"), book, market(), 10 * SEC)
    assert isinstance(decision, Rejected)
    assert decision.rule == "order-rate-limit"
    # Another symbol has its own count.
    eth = order(symbol="ETH-USDT", price=3000, qty="0.1", cid="e1")
    assert isinstance(policy.check_order(eth, book, market("ETH-USDT", 3000), 10 * SEC), Approved)
    # 60 s after the first order, one slot is free again.
    assert isinstance(policy.check_order(order(cid="o11"), book, market(), 60 * SEC), Approved)


def test_market_order_without_market_data_fails_closed(policy: RiskPolicy) -> None:
    decision = policy.check_order(order(price=None, stop_loss=49000), portfolio(), None, 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == FAIL_CLOSED
    assert "no entry price" in decision.reason
    assert "rules" in decision.reason


def test_market_order_uses_mid(policy: RiskPolicy) -> None:
    e = policy.explain(
        "order",
        portfolio=portfolio(),
        now_ns=0,
        market=market(last=40000),
        order=order(price=None, stop_loss=39000),
    )
    assert e.facts["order.price"] == 40000.0


class _Raising(RiskRules):
    name = "correlation"

    def fact_names(self) -> frozenset[str]:
        return frozenset({"correlation.max"})

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        raise ZeroDivisionError("boom")


class _Bad(RiskRules):
    name = "correlation"

    def __init__(self, value: object) -> None:
        self.value = value

    def fact_names(self) -> frozenset[str]:
        return frozenset({"correlation.max"})

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {"correlation.max": self.value}


def test_pack_that_raises_rejects_naming_the_pack() -> None:
    policy = RiskPolicy.load([RULES], [_Raising()])
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == FAIL_CLOSED
    assert "'correlation'" in decision.reason
    assert "boom" in decision.reason


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "high", None, Decimal("NaN"), True])
def test_pack_bad_values_reject(value: object) -> None:
    policy = RiskPolicy.load([RULES], [_Bad(value)])
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == FAIL_CLOSED
    assert "correlation" in decision.reason


def test_policy_without_the_correlation_pack_does_not_compile() -> None:
    with pytest.raises(RuleFileError) as info:
        RiskPolicy.load([RULES])
    assert "30-correlation.yaml:" in str(info.value)
    assert "correlation.max" in str(info.value)


def test_no_verdict_is_reject(tmp_path: Path) -> None:
    f = tmp_path / "only.yaml"
    f.write_text(
        "rules:\n  - name: big\n    description: d\n    when: order.qty > 100\n"
        "    reject: {reason: too big}\n"
    )
    policy = RiskPolicy.load([f])
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == FAIL_CLOSED
    assert "no verdict" in decision.reason
    assert "only.yaml" in decision.reason


def test_engine_runs_on_the_callers_thread_without_timers(
    policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the engine starts is what counts: every Thread.start (a Timer is a
    # Thread) is recorded, so a thread started and already finished is caught
    # too; threads left by other tests (trio's idle workers exit on their own
    # schedule) may come and go without making this fail.
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def recording_start(self: threading.Thread) -> None:
        started.append(self)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", recording_start)
    before = set(threading.enumerate())
    for i in range(50):
        policy.check_order(order(cid=f"t{i}"), portfolio(), market(), i)
    pos = Position("BTC-USDT", Decimal("0.01"), Decimal(50000), leverage=Decimal(10))
    policy.on_market_data(market(last=47135), portfolio(positions={"BTC-USDT": pos}), 0)
    other = RiskPolicy.load([RULES], [FixedCorrelation()])
    other.close()
    after = set(threading.enumerate())
    assert started == []
    assert after - before == set()  # nor through a lower-level call than Thread.start
    assert not any(isinstance(t, threading.Timer) for t in after)


def test_many_decisions_reuse_one_session(policy: RiskPolicy) -> None:
    # durable-rules keeps at most 1,024 sessions per ruleset; thousands of
    # decisions must not create sessions.
    book = portfolio()
    for i in range(3000):
        policy.check_order(order(cid=f"s{i}", qty="0.06"), book, market(), i)
    decision = policy.check_order(order(qty="0.06"), book, market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-position-size"


def test_broken_pack_still_lets_an_exit_through() -> None:
    # Emergency closes go through check_order; a broken pack must not trap a
    # position. The exit rule ranks first and reads no pack fact.
    policy = RiskPolicy.load([RULES], [_Raising()])
    pos = Position("BTC-USDT", Decimal("0.5"), Decimal(50000))
    book = portfolio(positions={"BTC-USDT": pos}, marks={"BTC-USDT": 50000})
    close = order(qty="0.5", side="sell", stop_loss=None, reduce_only=True)
    assert isinstance(policy.check_order(close, book, market(), 0), Approved)
    # A new order that only the pack's fact could refuse is refused, naming the pack.
    decision = policy.check_order(order(), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == FAIL_CLOSED
    assert "'correlation'" in decision.reason


def test_on_tracked_tick_answers_as_on_market_data(policy: RiskPolicy) -> None:
    # The kernel's entry: no snapshot is built for a symbol not held, and the
    # answer for a held one is on_market_data's on the tracker's snapshot.
    tracker = PortfolioTracker(Decimal(100000))
    snapshots = 0
    real = tracker.snapshot

    class Counting:
        def position(self, symbol: str) -> Position | None:
            return tracker.position(symbol)

        def snapshot(self) -> Portfolio:
            nonlocal snapshots
            snapshots += 1
            return real()

    book = Counting()
    assert policy.on_tracked_tick(market(last=48000), book, 0) == []
    assert snapshots == 0
    fill = Fill("f1", "c1", "BTC-USDT", Side.BUY, Decimal("0.01"), Decimal(50000), Decimal(0), TS)
    tracker.apply(fill, leverage=Decimal(10))
    for last in (48000, 48500, 49800, 51000):
        tracker.mark("BTC-USDT", Decimal(last))
        tracked = policy.on_tracked_tick(market(last=last), book, 0)
        direct = policy.on_market_data(market(last=last), tracker.snapshot(), 0)
        assert tracked == direct
    assert snapshots == 4
    tracker.mark("BTC-USDT", Decimal(47000))  # 3.7% above the liquidation price 45,250
    assert [a.kind for a in policy.on_tracked_tick(market(last=47000), book, 0)] == [
        RiskActionKind.EMERGENCY_CLOSE
    ]
    assert policy.on_tracked_tick(market(symbol="ETH-USDT", last=3000), book, 0) == []


def test_on_tracked_tick_calls_an_overridden_on_market_data_on_every_tick() -> None:
    seen: list[str] = []

    class Watching(RiskPolicy):
        def on_market_data(self, tick: Any, portfolio: Portfolio, now_ns: int) -> list[Any]:
            seen.append(tick.symbol)
            return []

    p = Watching.load([RULES], [FixedCorrelation(0.0)])
    try:
        assert p.on_tracked_tick(market(symbol="ETH-USDT"), PortfolioTracker(Decimal(1)), 0) == []
    finally:
        p.close()
    assert seen == ["ETH-USDT"]


def test_string_facts_in_the_engine_message_are_validated_and_reused(policy: RiskPolicy) -> None:
    plan = policy.compiled.stages["order"]
    engine = policy._active.engines["order"]
    facts: dict[str, object] = {name: 0.0 for name, _ in plan.fields}
    facts.update({"order.reducing": False, "breaker.tripped": False, "order.has_stop_loss": True})
    facts["order.side"] = "sell"
    policy_module._STRING_TEXT.clear()
    first = [r.name for r in policy._fire(engine, plan, facts)]
    assert policy_module._STRING_TEXT == {"sell": '"sell"'}
    assert [r.name for r in policy._fire(engine, plan, facts)] == first  # from the cache
    assert first[0] == "stop-loss-side"  # a sell with its stop (0) at or below entry (0)
    facts["order.side"] = "bad\nside"
    with pytest.raises(RiskError, match=r"order\.side is not a short printable string"):
        policy._fire(engine, plan, facts)
    assert "bad\nside" not in policy_module._STRING_TEXT
