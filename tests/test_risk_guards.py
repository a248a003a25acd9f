"""The engine skip on guarded stages (tick, fill): when every rule of a stage
is ``fact op constant``, the policy decides in Python that no rule fires and
does not call the engine. These tests hold that skip to the engine's answer."""

from __future__ import annotations

import math
import operator
import random
from decimal import Decimal

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.errors import RiskError
from bot4.risk import RiskPolicy
from bot4.risk.engine import EngineRuleset, number
from bot4.risk.expr import MAX_MAGNITUDE, Guard, QuietRange, quiet_ranges
from bot4.risk.facts import ORDER, TICK
from tests.riskkit import RULES, FixedCorrelation


@pytest.fixture(scope="module")
def policy() -> RiskPolicy:
    p = RiskPolicy.load([RULES], [FixedCorrelation(0.0)])
    yield p  # type: ignore[misc]
    p.close()


def _inside(r: QuietRange, x: float) -> bool:
    return r.above(x, r.low) and r.below(x, r.high)


def test_quiet_ranges_take_the_tightest_limit_and_the_strict_one_at_a_tie() -> None:
    (d,) = quiet_ranges([Guard("a.b", "<", 0.05), Guard("a.b", "<", 0.1), Guard("a.b", "<=", 0.1)])
    assert (d.low, d.above, d.high, d.below) == (0.1, operator.gt, MAX_MAGNITUDE, operator.le)
    dd, w = quiet_ranges(
        [Guard("p.d", ">=", 0.15), Guard("w.n", ">", 3.0), Guard("w.n", ">=", 9.0)]
    )
    assert (dd.fact, dd.low, dd.above, dd.high, dd.below) == (
        "p.d",
        -MAX_MAGNITUDE,
        operator.ge,
        0.15,
        operator.lt,
    )
    assert (w.high, w.below) == (3.0, operator.le)
    assert not _inside(dd, math.nan)
    assert not _inside(dd, -2 * MAX_MAGNITUDE)


def test_default_policy_guards_tick_and_fill_but_not_orders(policy: RiskPolicy) -> None:
    stages = policy.compiled.stages
    assert stages[ORDER].quiet is None  # approve/reject rules with arithmetic: always the engine
    (drawdown, distance) = stages[TICK].quiet or ()
    assert (drawdown.fact, drawdown.below) == ("portfolio.drawdown", operator.lt)
    assert (distance.fact, distance.above) == ("liquidation.distance", operator.ge)
    # Narrowed by 1e-12 relative: next to a bound the engine and the exact
    # confirmation decide, never the skip.
    assert 0.15 * (1 - 2e-12) < drawdown.high < 0.15
    assert 0.1 < distance.low < 0.1 * (1 + 2e-12)
    assert stages["fill"].quiet is not None


def test_engine_compares_like_python_next_to_every_bound() -> None:
    # The premise of the skip: a fact sent as number(x) and a bound compiled
    # as number(b) compare in the engine exactly as the doubles do in Python.
    rng = random.Random(5)
    bounds = [0.05, 0.075, 0.1, 0.15, 3.0, 1 / 3, 123456.789, 1e-7, 2.5e14]
    bounds += [rng.uniform(-1e6, 1e6) for _ in range(10)]
    ops = {"lt": operator.lt, "lte": operator.le, "gt": operator.gt, "gte": operator.ge}
    for bound in bounds:
        engine = EngineRuleset("cmp", {k: {"all": [{"m": {f"${k}": {"f0": bound}}}]} for k in ops})
        try:
            x = bound
            for _ in range(20):
                x = math.nextafter(x, -math.inf)
            for _ in range(41):
                fired = set(engine.fire('{"_z":0.0,"f0":' + number(x)))
                assert fired == {k for k, op in ops.items() if op(x, bound)}, (bound, x)
                x = math.nextafter(x, math.inf)
        finally:
            engine.close()


def _both(policy: RiskPolicy, stage: str, facts: dict[str, object]) -> tuple[object, object]:
    plan = policy.compiled.stages[stage]
    engine = policy._active.engines[stage]
    unguarded = attrs.evolve(plan, quiet=None)
    out = []
    for p in (plan, unguarded):
        try:
            out.append(sorted(r.name for r in policy._fire(engine, p, facts)))
        except RiskError as exc:
            out.append(f"RiskError: {exc}")
    return out[0], out[1]


near = st.sampled_from([0.05, 0.075, 0.1, 0.15]).flatmap(
    lambda b: st.integers(-3, 3).map(lambda k: _step(b, k))
)


def _step(x: float, k: int) -> float:
    for _ in range(abs(k)):
        x = math.nextafter(x, math.inf if k > 0 else -math.inf)
    return x


values = st.one_of(
    near,
    st.floats(min_value=-1.0, max_value=2.0),
    st.decimals(min_value="-1", max_value="2", places=20),
    st.sampled_from([math.nan, math.inf, Decimal("NaN"), 2e15, 0, 1, True, "x"]),
)


@settings(max_examples=400, deadline=None)
@given(values, values)
def test_guarded_tick_stage_answers_as_the_engine(
    policy: RiskPolicy, drawdown: object, distance: object
) -> None:
    facts = {"portfolio.drawdown": drawdown, "liquidation.distance": distance}
    guarded, engine_only = _both(policy, TICK, facts)
    assert guarded == engine_only


def test_a_bad_value_still_fails_closed(policy: RiskPolicy) -> None:
    facts: dict[str, object] = {"portfolio.drawdown": 0.0, "liquidation.distance": Decimal("NaN")}
    guarded, _ = _both(policy, TICK, facts)
    assert isinstance(guarded, str)
    assert "liquidation.distance" in guarded
    guarded, _ = _both(policy, TICK, {"portfolio.drawdown": 0.0})
    assert guarded == "RiskError: fact liquidation.distance has no value here"
