"""The strategy and risk-rule kits catch wrong plugins and name the fix."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from bot4_correlation import CorrelationPack
from bot4_sma_cross import SmaCross

from bot4.contracts import FactContext
from bot4.model import MarketData, Signal
from bot4.testing import ConformanceError
from bot4.testing import risk_rules as rr
from bot4.testing import strategy as st


def ticks() -> list[MarketData]:
    return st.sample_ticks(400)


class NoStop(SmaCross):
    def _signal(self, tick: MarketData, side: Any) -> Signal:
        return attrs.evolve(super()._signal(tick, side), stop_loss=None)


class StopOnWrongSide(SmaCross):
    def _signal(self, tick: MarketData, side: Any) -> Signal:
        signal = super()._signal(tick, side)
        assert signal.stop_loss is not None
        return attrs.evolve(signal, stop_loss=signal.entry * 2 - signal.stop_loss)


class Jittery(SmaCross):
    """Sizes drawn from an unseeded generator: different on every replay."""

    def _signal(self, tick: MarketData, side: Any) -> Signal:
        size = Decimal(random.randint(1, 10**6)).scaleb(-6)
        return attrs.evolve(super()._signal(tick, side), size=size)


class Silent(SmaCross):
    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        return ()


def test_signal_without_a_stop_loss_is_caught() -> None:
    with pytest.raises(ConformanceError, match=r"without a stop_loss.*Set Signal.stop_loss"):
        trio.run(st.check_signals_valid, lambda: NoStop(fast=5, slow=20), ticks())


def test_stop_on_the_wrong_side_is_caught() -> None:
    with pytest.raises(ConformanceError, match=r"a buy's stop is below the entry, a sell's above"):
        trio.run(st.check_signals_valid, lambda: StopOnWrongSide(fast=5, slow=20), ticks())


def test_nondeterminism_is_caught() -> None:
    with pytest.raises(ConformanceError, match=r"must be deterministic .*no unseeded randomness"):
        trio.run(st.check_deterministic, lambda: Jittery(fast=5, slow=20), ticks())


def test_a_strategy_that_never_signals_proves_nothing() -> None:
    with pytest.raises(ConformanceError, match=r"emitted no signal over 800 ticks"):
        trio.run(st.check_signals_valid, lambda: Silent(fast=5, slow=20), ticks())


def test_correct_strategy_passes() -> None:
    make = lambda: SmaCross(fast=5, slow=20)  # noqa: E731 - a factory is all the kit needs
    for check in (
        st.check_signals_valid,
        st.check_deterministic,
        st.check_on_fill,
        st.check_sync_hook,
    ):
        trio.run(check, make, ticks())


class UndeclaredFact(CorrelationPack):
    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {**super().facts(ctx), "correlation.extra": 1.0}


class MissingFact(CorrelationPack):
    def fact_names(self) -> frozenset[str]:
        return frozenset({"correlation.max", "correlation.min"})


class BadValue(CorrelationPack):
    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {"correlation.max": Decimal("NaN")}


class ReservedName(CorrelationPack):
    def fact_names(self) -> frozenset[str]:
        return frozenset({"order.correlation"})


def rules() -> list[Path]:
    from bot4.risk import default_rules_path

    return [default_rules_path()]


def test_facts_must_match_the_declared_names() -> None:
    with pytest.raises(ConformanceError, match=r"undeclared fact\(s\) \['correlation.extra'\]"):
        rr.check_facts_validate(UndeclaredFact(), rules())
    with pytest.raises(ConformanceError, match=r"lacks declared fact\(s\) \['correlation.min'\]"):
        rr.check_facts_validate(MissingFact(), rules())


def test_fact_values_must_be_engine_values() -> None:
    with pytest.raises(ConformanceError, match=r"not a finite number.*finite numbers"):
        rr.check_facts_validate(BadValue(), rules())


def test_reserved_namespace_is_refused() -> None:
    with pytest.raises(ConformanceError, match=r"namespace 'order' that bot4 fills itself"):
        rr.check_fact_names(ReservedName())


def test_rule_file_that_does_not_compile_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: broken\n    when: nonsense.fact > 1\n")

    class ShipsBadRules(CorrelationPack):
        def rule_files(self) -> Any:
            return (bad,)

    with pytest.raises(ConformanceError, match=r"do not compile.*bad\.yaml"):
        rr.check_rule_files_compile(ShipsBadRules(), rules())

    class ShipsMissingRules(CorrelationPack):
        def rule_files(self) -> Any:
            return (tmp_path / "absent.yaml",)

    with pytest.raises(ConformanceError, match=r"absent\.yaml, which does not exist"):
        rr.check_rule_files_compile(ShipsMissingRules(), rules())


def test_correct_pack_passes() -> None:
    rr.check_fact_names(CorrelationPack())
    rr.check_rule_files_compile(CorrelationPack(), rules())
    rr.check_facts_validate(CorrelationPack(), rules())
