"""The kernel's tick as plain calls (``Kernel._events``): a strategy with
``on_market_data_sync`` is called without a coroutine, and a tick that must
wait on the way (a pack or a strategy failing, a signal, a risk action, the
reload poll) hands over to the general path at that step, so a session
decides exactly as with strategies that are only awaited."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import attrs
import bot4_correlation
import bot4_paper
import pytest
import trio
from bot4_sma_cross import SmaCross

from bot4.bus import open_bus
from bot4.contracts import FactContext, RiskRules, Strategy, sync_hook
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.model import MarketData, Side, Signal
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path
from bot4.testing import ConformanceError
from bot4.testing import strategy as st
from tests.test_kernel import T0, D, feed, signal


class Counting(Strategy):
    """Signals on the ticks of ``plan``, raises on ``fail_on``; counts how
    it was called."""

    name = "scripted"

    def __init__(self, plan: Mapping[int, Sequence[Signal]], fail_on: frozenset[int]) -> None:
        self.plan = plan
        self.fail_on = fail_on
        self.seen = 0
        self.awaited = 0
        self.called = 0

    def _next(self) -> Sequence[Signal]:
        self.seen += 1
        if self.seen in self.fail_on:
            raise RuntimeError(f"strategy bug at {self.seen}")
        return self.plan.get(self.seen, ())

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        self.awaited += 1
        return self._next()


class CountingSync(Counting):
    def on_market_data_sync(self, tick: MarketData) -> Sequence[Signal]:
        self.called += 1
        return self._next()


class FlakyPack(RiskRules):
    """A pack whose market-data hook raises on some ticks."""

    name = "flaky"

    def __init__(self, fail_on: frozenset[int]) -> None:
        self.fail_on = fail_on
        self.seen = 0

    def fact_names(self) -> frozenset[str]:
        return frozenset({"flaky.ok"})

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {"flaky.ok": 1}

    def on_market_data(self, tick: MarketData) -> None:
        self.seen += 1
        if self.seen in self.fail_on:
            raise ValueError(f"pack bug at {self.seen}")


def _plan() -> dict[int, Sequence[Signal]]:
    # An entry, an oversized one (rejected), an exit, and one on the tick
    # of the reload poll (256: the general path).
    return {
        3: [signal()],
        40: [signal(size="50")],
        90: [signal(side=Side.SELL, stop="51000")],
        256: [signal()],
        300: [signal(), signal()],
    }


async def _run(strategy: Counting, packs: Sequence[RiskRules]) -> tuple[Kernel, list[Any]]:
    # Prices move so that the entry's stop is hit: fills, protection levels.
    ticks = [
        attrs.evolve(t, timestamp=T0 + timedelta(seconds=i))
        for i, t in enumerate(feed(200) + feed(200, price="48500") + feed(200))
    ]
    exchange = bot4_paper.create({"feed": ticks, "balance": "100000", "slippage_bps": "0"})
    policy = RiskPolicy.load([default_rules_path()], [bot4_correlation.factory({})])
    events: list[Any] = []
    async with open_bus() as bus:
        bus.subscribe("#", lambda e: events.append((e.topic, e.payload)), name="test")
        kernel = Kernel(
            exchange=exchange,
            strategies=[strategy],
            gate=RiskGate(policy),
            policy=policy,
            tracker=PortfolioTracker(D(100000)),
            bus=bus,
            packs=packs,
        )
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    return kernel, events


def test_sync_hook_is_found_where_the_class_defines_it() -> None:
    assert sync_hook(CountingSync({}, frozenset())) is not None
    assert sync_hook(Counting({}, frozenset())) is None
    assert sync_hook(SmaCross(fast=5, slow=20)) is not None

    class Overrides(SmaCross):  # overrides only the awaited hook: that is what it means
        async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
            return ()

    assert sync_hook(Overrides(fast=5, slow=20)) is None


@pytest.mark.parametrize("fails", [False, True], ids=["clean", "failing"])
def test_the_plain_tick_decides_as_the_awaited_one(fails: bool) -> None:
    strategy_fails = frozenset({5, 255, 256, 400}) if fails else frozenset()
    pack_fails = frozenset({7, 512, 513}) if fails else frozenset()
    awaited_strategy = Counting(_plan(), strategy_fails)
    plain_strategy = CountingSync(_plan(), strategy_fails)
    awaited_kernel, awaited_events = trio.run(
        _run, awaited_strategy, [FlakyPack(pack_fails)] if fails else []
    )
    plain_kernel, plain_events = trio.run(
        _run, plain_strategy, [FlakyPack(pack_fails)] if fails else []
    )
    # Every tick went through the hook it has, and only that one.
    assert (awaited_strategy.awaited, awaited_strategy.called) == (600, 0)
    assert (plain_strategy.awaited, plain_strategy.called) == (0, 600)
    # The same events, in the same order: decisions, orders, fills, errors.
    assert [t for t, _ in plain_events] == [t for t, _ in awaited_events]
    assert plain_events == awaited_events
    assert plain_kernel.stats == awaited_kernel.stats
    stats = plain_kernel.stats
    assert stats.ticks == 600
    assert stats.approved >= 3
    assert stats.rejected >= 1
    assert stats.fills >= 3
    if fails:
        errors = [p for t, p in plain_events if t == "kernel.error"]
        assert stats.strategy_errors == 4
        assert sum("risk pack flaky failed" in e for e in errors) == 3
        assert sum("strategy scripted failed" in e for e in errors) == 4


def test_the_kit_catches_a_sync_hook_that_differs() -> None:
    class DropsSignals(SmaCross):
        def on_market_data_sync(self, tick: MarketData) -> Sequence[Signal]:
            super().on_market_data_sync(tick)
            return ()

        async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
            return SmaCross.on_market_data_sync(self, tick)

    with pytest.raises(ConformanceError, match=r"on_market_data_sync gave \[\] but"):
        trio.run(st.check_sync_hook, lambda: DropsSignals(fast=5, slow=20), st.sample_ticks(400))
    trio.run(st.check_sync_hook, lambda: SmaCross(fast=5, slow=20), st.sample_ticks(400))


class Careless(CountingSync):
    """Answers None on quiet ticks, a bare Signal (not a sequence) once and
    a list holding None once."""

    def _next(self) -> Any:
        self.seen += 1
        if self.seen == 300:
            return signal()
        if self.seen == 400:
            return [signal(), None]
        return list(self.plan.get(self.seen, ())) or None


class CarelessAwaited(Counting):
    """The same answers, from on_market_data only (awaited on every tick)."""

    _next = Careless._next


@pytest.mark.parametrize("cls", [Careless, CarelessAwaited])
def test_none_is_no_signal_and_a_bare_signal_is_the_strategys_error(cls: type[Counting]) -> None:
    strategy = cls({3: [signal()]}, frozenset())
    kernel, events = trio.run(_run, strategy, [])
    # None on 598 ticks (the reload poll's ticks 256 and 512 among them): no error.
    errors = [p for t, p in events if t == "kernel.error"]
    assert errors == [
        "strategy scripted failed on BTC-USDT: TypeError: returned Signal, not a list or "
        "tuple of Signal",
        "strategy scripted failed on BTC-USDT: TypeError: returned NoneType among its "
        "signals, not a Signal",
    ]
    assert kernel.stats.strategy_errors == 2
    assert kernel.stats.ticks == 600
    assert kernel.stats.approved == 1
