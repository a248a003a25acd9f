"""pytest suite classes: subclass one as ``TestSomething`` and every check
becomes a test of yours, skipped with the reason when it does not apply.

Modelled on SQLAlchemy's ``testing.suite``: the kit owns the tests, the
plugin author only says how to build the plugin::

    from bot4.testing import ExchangeSuite
    from bot4_acme import AcmeExchange

    class TestAcme(ExchangeSuite):
        factory = AcmeExchange          # (feed) -> Exchange

The tests are plain (synchronous) pytest tests that run trio themselves, so an
author's test folder needs neither pytest-trio nor any fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
import trio

from bot4.contracts import RiskRules, Strategy
from bot4.model import MarketData
from bot4.testing import risk_rules as rr
from bot4.testing import strategy as st
from bot4.testing.exchange import CHECKS, Check, CheckSkipped, run_check
from bot4.testing.harness import ConformanceError, ExchangeFactory, FeedHarness, Harness

__all__ = ["ExchangeSuite", "RiskRulesSuite", "StrategySuite"]


class ExchangeSuite:
    """Every exchange check plus the comparison with the paper reference.

    Set ``factory`` (``feed -> Exchange``, used with :class:`FeedHarness`), or
    override :meth:`make_harness` for a venue you reach over the network.
    ``reference`` builds the harness compared against in
    ``test_against_reference`` (default: paper with its default settings).
    """

    factory: ClassVar[ExchangeFactory | None] = None
    symbol: ClassVar[str] = "BTC-USDT"
    base_price: ClassVar[int] = 100
    reference: ClassVar[Callable[[], Harness] | None] = None
    stateful_examples: ClassVar[int] = 25

    def make_harness(self) -> Harness:
        factory = type(self).factory
        if factory is None:
            raise ConformanceError(
                f"{type(self).__name__}: set `factory = YourExchange` (called with a feed of "
                "MarketData) or override make_harness() to return your Harness"
            )
        return FeedHarness(factory, symbol=self.symbol, base_price=self.base_price)

    def run_check(self, check: Check) -> None:
        try:
            trio.run(run_check, check, self.make_harness)
        except CheckSkipped as skip:
            pytest.skip(str(skip))

    def test_against_reference(self) -> None:
        """Random operation sequences give the same results as the paper reference."""
        try:
            import hypothesis  # noqa: F401 - only to test that it is there
        except ImportError:
            pytest.skip("hypothesis is not installed: pip install hypothesis to run this check")
        from bot4.testing.stateful import check_against_reference, paper_reference

        reference = type(self).reference or (lambda: paper_reference(self.symbol, self.base_price))
        try:
            check_against_reference(
                self.make_harness, reference, max_examples=self.stateful_examples
            )
        except CheckSkipped as skip:
            pytest.skip(str(skip))


def _exchange_test(check: Check) -> Callable[[ExchangeSuite], None]:
    def test(self: ExchangeSuite) -> None:
        self.run_check(check)

    test.__name__ = f"test_{check.name}"
    test.__qualname__ = f"ExchangeSuite.test_{check.name}"
    test.__doc__ = check.doc
    return test


for _check in CHECKS.values():
    setattr(ExchangeSuite, f"test_{_check.name}", _exchange_test(_check))


class StrategySuite:
    """Checks for a strategy plugin. Set ``factory`` (no arguments) and
    optionally ``ticks`` (a function returning the market data to replay;
    default: :func:`bot4.testing.strategy.sample_ticks`)."""

    factory: ClassVar[Callable[[], Strategy] | None] = None
    ticks: ClassVar[Callable[[], Iterable[MarketData]] | None] = None

    def _make(self) -> Callable[[], Strategy]:
        factory = type(self).factory
        if factory is None:
            raise ConformanceError(f"{type(self).__name__}: set `factory = make_your_strategy`")
        return factory

    def _ticks(self) -> Sequence[MarketData]:
        make = type(self).ticks
        return list(make()) if make is not None else st.sample_ticks()

    def test_signals_are_valid(self) -> None:
        """Every signal is well formed: stop loss on the right side, size positive."""
        trio.run(st.check_signals_valid, self._make(), self._ticks())

    def test_deterministic_under_replay(self) -> None:
        """Two fresh instances fed the same ticks emit the same signals."""
        trio.run(st.check_deterministic, self._make(), self._ticks())

    def test_on_fill(self) -> None:
        """on_fill accepts a fill and returns a sequence of valid signals."""
        trio.run(st.check_on_fill, self._make(), self._ticks())

    def test_sync_hook_matches(self) -> None:
        """on_market_data_sync, where the strategy has it, gives what
        on_market_data gives (the kernel calls it instead)."""
        trio.run(st.check_sync_hook, self._make(), self._ticks())


class RiskRulesSuite:
    """Checks for a risk-rule plugin. Set ``factory``; ``rules`` are the rule
    files the pack is compiled with (default: bot4's default policy), together
    with the other installed packs, as a session would."""

    factory: ClassVar[Callable[[], RiskRules] | None] = None
    rules: ClassVar[Sequence[Path] | None] = None

    def _pack(self) -> RiskRules:
        factory = type(self).factory
        if factory is None:
            raise ConformanceError(f"{type(self).__name__}: set `factory = make_your_pack`")
        return factory()

    def _rules(self) -> Sequence[Path]:
        if type(self).rules is not None:
            return list(type(self).rules or ())
        from bot4.risk import default_rules_path

        return [default_rules_path()]

    def test_fact_names(self) -> None:
        """fact_names() are lower-case dotted names outside bot4's own namespaces."""
        rr.check_fact_names(self._pack())

    def test_rule_files_compile(self) -> None:
        """The pack's rule files compile together with the policy."""
        pack = self._pack()
        rr.check_rule_files_compile(pack, self._rules(), rr.other_installed_packs(pack))

    def test_facts_validate(self) -> None:
        """facts() gives every declared fact, as a valid value, for varied orders."""
        pack = self._pack()
        rr.check_facts_validate(pack, self._rules(), rr.other_installed_packs(pack))
