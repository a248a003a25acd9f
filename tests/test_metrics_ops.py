"""The metrics that show trouble: exchange requests by outcome, the feed's
age, the breaker's state and reason, the halt and kill switch, the journal's
queue, a session id per run, and no book figures before the first mark."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from bot4.contracts import Exchange, MarketInfo
from bot4.errors import (
    ExchangeFailed,
    ExchangeTimeout,
    ExchangeUnavailable,
    InvalidOrder,
    RateLimited,
)
from bot4.exchange_metrics import InstrumentedExchange, outcome_of
from bot4.kernel_types import KernelStats
from bot4.metrics import Metrics
from bot4.portfolio import PortfolioTracker
from bot4.risk.breaker import Breaker as CircuitBreaker
from bot4.session import SessionResult
from tests.test_metrics import parse, run_with_metrics, value

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def samples(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    return parse(metrics.exposition().decode())


class _Venue(Exchange):
    """An exchange whose every request raises what it is told to (or returns)."""

    name = "venue"

    def __init__(self) -> None:
        self.raises: BaseException | None = None
        self.retry_observer: Any = None

    def _answer(self) -> None:
        if self.raises is not None:
            raise self.raises

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        self._answer()
        return {}

    async def place_order(self, order: Any) -> Any:
        self._answer()
        if self.retry_observer is not None:
            self.retry_observer("place_order", "rate_limited")
        return "placed"

    async def cancel_order(self, symbol: str, client_order_id: str) -> Any:
        self._answer()

    async def fetch_order(self, symbol: str, client_order_id: str) -> Any:
        self._answer()

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[Any]:
        self._answer()
        return []

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Any]:
        self._answer()
        return []

    async def fetch_balance(self) -> Any:
        self._answer()

    async def fetch_positions(self) -> Sequence[Any]:
        self._answer()
        return []

    def stream(self, symbols: Sequence[str]) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (InvalidOrder("too small"), "refused"),
        (RateLimited("429"), "rate_limited"),
        (ExchangeTimeout("read timed out"), "timeout"),
        (ExchangeUnavailable("connection refused"), "unreachable"),
        (ExchangeFailed("500"), "error"),
        (ValueError("a plugin bug"), "error"),
    ],
)
def test_every_request_is_counted_by_outcome(exc: Exception | None, outcome: str) -> None:
    assert outcome_of(exc) == outcome
    metrics = Metrics()
    venue = _Venue()
    venue.raises = exc
    wrapped = InstrumentedExchange(
        venue, metrics.observe_exchange_request, venue="venue", observe_retry=None
    )
    assert wrapped.name == "venue"
    assert wrapped.capabilities == venue.capabilities

    async def call() -> None:
        if exc is None:
            assert await wrapped.fetch_open_orders() == []
        else:
            with pytest.raises(type(exc)) as raised:
                await wrapped.fetch_open_orders()
            assert raised.value is exc  # passed through untouched

    trio.run(call)
    got = samples(metrics)
    assert value(got, "bot4_exchange_requests_total", method="fetch_open_orders") == 1
    assert (
        value(got, "bot4_exchange_requests_total", method="fetch_open_orders", outcome=outcome) == 1
    )
    assert value(got, "bot4_exchange_request_seconds_count", method="fetch_open_orders") == 1


def test_retries_reported_by_the_plugin_are_counted() -> None:
    metrics = Metrics()
    venue = _Venue()
    wrapped = InstrumentedExchange(
        venue,
        metrics.observe_exchange_request,
        venue="venue",
        observe_retry=metrics.observe_exchange_retry,
    )
    assert trio.run(wrapped.place_order, object()) == "placed"
    got = samples(metrics)
    assert value(got, "bot4_exchange_retries_total", venue="venue", outcome="rate_limited") == 1
    assert value(got, "bot4_exchange_requests_total", method="place_order", outcome="ok") == 1


def test_a_cancelled_request_is_not_an_exchange_outcome() -> None:
    metrics = Metrics()

    class Slow(_Venue):
        async def fetch_balance(self) -> Any:
            await trio.sleep(10)

    wrapped = InstrumentedExchange(Slow(), metrics.observe_exchange_request, venue="venue")

    async def call() -> None:
        with trio.move_on_after(0.01):
            await wrapped.fetch_balance()

    trio.run(call)
    assert "bot4_exchange_requests_total" not in samples(metrics)


def test_no_book_figure_before_the_first_mark() -> None:
    metrics = Metrics()
    tracker = PortfolioTracker(Decimal(10000))
    breaker = CircuitBreaker()
    policy = type("Policy", (), {"breaker": breaker})()
    text = metrics.exposition().decode()
    assert "bot4_equity" not in text  # served before the session starts
    metrics.sample(tracker, policy, KernelStats(), None)
    assert "bot4_equity" not in metrics.exposition().decode()
    tracker.mark("BTC-USDT", Decimal(50000))
    metrics.sample(tracker, policy, KernelStats(), None)
    assert value(samples(metrics), "bot4_equity") == 10000


def test_breaker_state_and_reason_is_one_series() -> None:
    metrics = Metrics()
    tracker = PortfolioTracker(Decimal(10000))
    breaker = CircuitBreaker()
    policy = type("Policy", (), {"breaker": breaker})()
    metrics.sample(tracker, policy, KernelStats(), None)
    got = samples(metrics)["bot4_breaker_info"]
    assert got == [({"state": "armed", "reason": ""}, 1.0)]
    breaker.trip("daily loss 5.2% past 5%", 1)
    metrics.sample(tracker, policy, KernelStats(), None)
    got = samples(metrics)["bot4_breaker_info"]
    assert got == [({"state": "tripped", "reason": "daily loss 5.2% past 5%"}, 1.0)]
    assert value(samples(metrics), "bot4_breaker_tripped") == 1
    breaker.reset()
    metrics.sample(tracker, policy, KernelStats(), None)
    assert samples(metrics)["bot4_breaker_info"] == [({"state": "armed", "reason": ""}, 1.0)]


def test_breaker_reason_is_redacted_and_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT4_TEST_TOKEN", "hunter2-secret")
    metrics = Metrics()
    breaker = CircuitBreaker()
    breaker.trip("redis://:hunter2-secret@host said no " + "x" * 500, 1)
    policy = type("Policy", (), {"breaker": breaker})()
    metrics.sample(PortfolioTracker(Decimal(1)), policy, KernelStats(), None)
    ((labels, _),) = samples(metrics)["bot4_breaker_info"]
    assert "hunter2" not in labels["reason"]
    assert len(labels["reason"]) <= 120


class _Kernel:
    def __init__(self) -> None:
        self.halted: str | None = None
        self._last: dict[str, Any] = {}


def test_feed_age_counts_wall_seconds_since_the_last_tick_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("bot4.metrics.time.time", lambda: clock[0])
    metrics = Metrics()
    kernel = _Kernel()
    policy = type("Policy", (), {"breaker": CircuitBreaker()})()
    tracker = PortfolioTracker(Decimal(1))
    tick = type("Tick", (), {"timestamp": T0})()
    kernel._last["BTC-USDT"] = tick
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_feed_age_seconds", symbol="BTC-USDT") == 0
    assert value(
        samples(metrics), "bot4_feed_last_tick_timestamp_seconds", symbol="BTC-USDT"
    ) == pytest.approx(T0.timestamp())
    clock[0] += 42
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_feed_age_seconds", symbol="BTC-USDT") == 42
    kernel._last["BTC-USDT"] = type("Tick", (), {"timestamp": T0 + timedelta(seconds=1)})()
    clock[0] += 1
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_feed_age_seconds", symbol="BTC-USDT") == 0


def test_halt_and_kill_switch() -> None:
    metrics = Metrics()
    kernel = _Kernel()
    policy = type("Policy", (), {"breaker": CircuitBreaker()})()
    tracker = PortfolioTracker(Decimal(1))
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_halted") == 0
    kernel.halted = "risk monitor failed: KeyError"
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_halted") == 1
    assert value(samples(metrics), "bot4_kill_switch") == 0
    kernel.halted = "bot4 kill: operator"
    metrics.sample(tracker, policy, KernelStats(), None, kernel)
    assert value(samples(metrics), "bot4_kill_switch") == 1


def test_journal_queue_hooks() -> None:
    metrics = Metrics()
    metrics.set_journal_queue(12, 3.5)
    metrics.count_journal_failure()
    got = samples(metrics)
    assert value(got, "bot4_journal_queue_depth") == 12
    assert value(got, "bot4_journal_lag_seconds") == 3.5
    assert value(got, "bot4_journal_write_failures_total") == 1
    metrics.set_journal_queue(0, 9.0)  # nothing waits: no lag
    assert value(samples(metrics), "bot4_journal_lag_seconds") == 0


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Metrics, SessionResult]:
    return run_with_metrics(tmp_path_factory.mktemp("ops-session"), seconds=900)


def test_a_session_reports_its_requests_feed_and_run(
    session: tuple[Metrics, SessionResult],
) -> None:
    metrics, result = session
    got = samples(metrics)
    stats = result.stats
    placed = value(got, "bot4_exchange_requests_total", method="place_order")
    assert placed == stats.approved > 0
    assert (
        value(got, "bot4_exchange_requests_total", method="place_order", outcome="refused")
        == stats.exchange_refusals
    )
    assert value(got, "bot4_exchange_requests_total", method="fetch_markets", outcome="ok") == 1
    assert value(got, "bot4_feed_age_seconds", symbol="BTC-USDT") >= 0
    ((labels, one),) = got["bot4_session_info"]
    assert one == 1
    assert labels["session_id"] == "s1"
    assert labels["run"] == "1"
    assert len(labels["run_id"]) == 12
    assert labels["run_id"] != Metrics().run_id  # new for every run
    assert value(got, "bot4_session_start_time_seconds") > 0
    assert value(got, "bot4_halted") == 0


def test_run_id_is_unique(tmp_path: Path) -> None:
    assert len({Metrics().run_id for _ in range(50)}) == 50


def test_liquidations_are_counted_from_the_kernel() -> None:
    """``bot4_liquidations_total`` follows the kernel's count of fills the
    venue marked as liquidations (an isolated one, or each position the
    cross account closed)."""
    metrics = Metrics()
    tracker = PortfolioTracker(Decimal(10000))
    policy = type("Policy", (), {"breaker": CircuitBreaker()})()
    stats = KernelStats()
    metrics.sample(tracker, policy, stats, None)
    assert value(samples(metrics), "bot4_liquidations_total") == 0
    stats.liquidations = 2
    metrics.sample(tracker, policy, stats, None)
    metrics.sample(tracker, policy, stats, None)  # sampled again: not counted twice
    assert value(samples(metrics), "bot4_liquidations_total") == 2
