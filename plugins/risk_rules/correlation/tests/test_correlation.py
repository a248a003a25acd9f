"""The correlation risk pack: its statistics, its fact, its registration,
and the default policy rejecting a correlated order through it."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from decimal import Decimal

import bot4_correlation
import pytest
from bot4_correlation import FACT, CorrelationPack, pearson

from bot4.contracts import FactContext
from bot4.model import Approved, MarketData, Order, Portfolio, Position, Rejected
from bot4.plugins import PluginManager
from bot4.risk import RiskPolicy, default_rules_path

TS = datetime(2024, 1, 1, tzinfo=UTC)


def tick(symbol: str, price: float) -> MarketData:
    p = Decimal(repr(round(price, 4)))
    return MarketData(symbol, "test", p, p, p, Decimal(1), TS)


def buy(symbol: str, qty: str = "0.01", price: str = "100") -> Order:
    p = Decimal(price)
    return Order("c", symbol, "buy", "limit", Decimal(qty), price=p, stop_loss=p * Decimal("0.98"))


def feed(pack: CorrelationPack, n: int, noise: float, seed: int = 1) -> tuple[float, float]:
    """BTC and ETH driven by one common factor plus independent noise."""
    rng = random.Random(seed)
    btc = eth = 100.0
    for _ in range(n):
        common = rng.gauss(0, 0.01)
        btc *= 1 + common + rng.gauss(0, noise)
        eth *= 1 + common + rng.gauss(0, noise)
        pack.on_market_data(tick("BTC-USDT", btc))
        pack.on_market_data(tick("ETH-USDT", eth))
    return btc, eth


def book_long(symbol: str, qty: str = "1") -> Portfolio:
    pos = Position(symbol, Decimal(qty), Decimal(100))
    return Portfolio(cash=Decimal(100000), positions={symbol: pos}, peak_equity=Decimal(100000))


def test_pearson_against_a_direct_computation() -> None:
    rng = random.Random(3)
    xs = [rng.gauss(0, 1) for _ in range(50)]
    ys = [x * 0.5 + rng.gauss(0, 1) for x in xs]
    mx, my = sum(xs) / 50, sum(ys) / 50
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    direct = cov / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
    assert pearson(xs, ys) == pytest.approx(direct, abs=1e-12)
    assert pearson(xs, [1.0] * 50) is None  # no variance: undefined, not zero
    assert pearson([1.0], [2.0]) is None


def test_highly_correlated_symbol_held_long_gives_a_high_fact() -> None:
    pack = CorrelationPack(window=200, min_samples=20)
    feed(pack, 150, noise=0.001)
    facts = pack.facts(FactContext(buy("ETH-USDT"), book_long("BTC-USDT"), None))
    assert facts[FACT] > 0.9


def test_independent_symbols_give_a_low_fact() -> None:
    pack = CorrelationPack()
    feed(pack, 150, noise=0.05)
    facts = pack.facts(FactContext(buy("ETH-USDT"), book_long("BTC-USDT"), None))
    assert facts[FACT] < 0.3


def test_opposite_direction_and_empty_book_give_zero() -> None:
    pack = CorrelationPack()
    feed(pack, 150, noise=0.001)
    assert pack.facts(FactContext(buy("ETH-USDT"), book_long("BTC-USDT", "-1"), None))[FACT] == 0.0
    empty = Portfolio(cash=Decimal(1000))
    assert pack.facts(FactContext(buy("ETH-USDT"), empty, None))[FACT] == 0.0


def test_not_enough_data_gives_zero() -> None:
    pack = CorrelationPack(min_samples=20)
    feed(pack, 10, noise=0.0)
    assert pack.facts(FactContext(buy("ETH-USDT"), book_long("BTC-USDT"), None))[FACT] == 0.0


def test_window_is_bounded() -> None:
    pack = CorrelationPack(window=30, min_samples=5)
    feed(pack, 500, noise=0.01)
    assert all(len(series) == 30 for series in pack._returns.values())


def test_registered_through_the_entry_point() -> None:
    manager = PluginManager.load()
    registered = manager.registry.risk_rules["correlation"]
    assert registered.description
    assert isinstance(registered.factory({}), CorrelationPack)
    assert bot4_correlation.BOT4_API == 1


def test_default_policy_rejects_a_correlated_order_through_the_pack() -> None:
    pack = CorrelationPack()
    policy = RiskPolicy.load([default_rules_path()], [pack])
    _, eth = feed(pack, 150, noise=0.001)
    price = f"{eth:.2f}"
    order = buy("ETH-USDT", qty="0.1", price=price)
    market = tick("ETH-USDT", eth)
    decision = policy.check_order(order, book_long("BTC-USDT", "0.01"), market, 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-correlation"
    # The same order with no correlated position held passes.
    flat = Portfolio(cash=Decimal(100000), peak_equity=Decimal(100000))
    assert isinstance(policy.check_order(order, flat, market, 1), Approved)
