"""The kit's margin checks (bot4.testing.margin_checks) catch venues that get
margin wrong, and pass the paper reference (plugins/exchanges/paper/tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal

import attrs
import pytest
import trio
from bot4_paper import PaperEngine, PaperExchange
from bot4_paper.margin_book import MarginState

from bot4.model import ZERO, MarketData
from bot4.testing import CHECKS, ConformanceError, FeedHarness, Harness
from bot4.testing.exchange import run_check


def run(name: str, make: Callable[[Iterable[MarketData]], PaperExchange]) -> None:
    def harness() -> Harness:
        return FeedHarness(make)

    trio.run(run_check, CHECKS[name], harness)


class NeverLiquidates(PaperExchange):
    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed)
        self.engine.liquidates = False


class StaleLiquidationPrice(PaperExchange):
    """Reports the liquidation price as of the position's opening."""

    _first: list[MarginState] | None = None

    async def fetch_margin_positions(self) -> list[MarginState]:
        rows = list(await super().fetch_margin_positions())
        if self._first is None:
            self._first = rows
        return self._first


class SkewedLiquidationPrice(PaperExchange):
    """Reports a long's liquidation price 5% lower than it is."""

    async def fetch_margin_positions(self) -> list[MarginState]:
        rows = await super().fetch_margin_positions()
        return [
            attrs.evolve(r, liquidation_price=(r.liquidation_price or ZERO) * Decimal("0.95"))
            for r in rows
        ]


class _EveryTick(PaperEngine):
    def _fund(self, now: datetime) -> None:
        if self.tracker.positions():
            self.tracker.adjust_cash(Decimal("-0.01"))


class FundsEveryTick(PaperExchange):
    """Charges funding on every tick, not at the funding times."""

    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed, _EveryTick())
        self.engine._funded = True


def test_a_venue_that_never_liquidates_is_caught() -> None:
    with pytest.raises(ConformanceError, match="the venue must liquidate it"):
        run("margin_liquidation", NeverLiquidates)


def test_a_reported_liquidation_price_off_the_formula_is_caught() -> None:
    with pytest.raises(ConformanceError, match="the formula"):
        run("margin_liquidation_price", SkewedLiquidationPrice)


def test_funding_away_from_the_funding_times_is_caught() -> None:
    with pytest.raises(ConformanceError, match="away from a funding time"):
        run("margin_funding_times", FundsEveryTick)


def test_a_liquidation_price_that_does_not_move_with_added_margin_is_caught() -> None:
    with pytest.raises(ConformanceError, match="more collateral moves"):
        run("margin_add_margin", StaleLiquidationPrice)
