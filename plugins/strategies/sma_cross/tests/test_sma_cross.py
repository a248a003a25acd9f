"""sma_cross: signals at the crosses, with stop loss and take profit, deterministic."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import bot4_sma_cross
import pytest
from bot4_sma_cross import SmaCross

from bot4.data import iter_ticks, sample_path
from bot4.errors import ConfigError
from bot4.model import MarketData, Side, Signal

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def ticks(prices: Iterable[str], symbol: str = "BTC-USDT") -> list[MarketData]:
    return [
        MarketData(
            symbol=symbol,
            exchange="paper",
            bid=D(p) - D("0.5"),
            ask=D(p) + D("0.5"),
            last=D(p),
            volume=D(1),
            timestamp=T0 + timedelta(seconds=i),
        )
        for i, p in enumerate(prices)
    ]


async def run(strategy: SmaCross, feed: Iterable[MarketData]) -> list[tuple[int, Signal]]:
    out = []
    for i, tick in enumerate(feed):
        for signal in await strategy.on_market_data(tick):
            out.append((i, signal))
    return out


@pytest.mark.trio
async def test_buy_then_sell_at_the_crosses_with_stop_and_target() -> None:
    s = SmaCross(fast=2, slow=4, size=D("0.5"), stop_loss_pct=D(1), take_profit_pct=D(3))
    prices = ["100", "100", "100", "99", "98", "97", "100", "104", "108", "104", "99", "95"]
    got = await run(s, ticks(prices))
    # Tick 3 fills the slow window with fast below slow (no signal, just the
    # starting side); tick 6 has equal averages (no cross); tick 7 crosses up:
    # fast (100+104)/2 = 102 > slow (98+97+100+104)/4 = 99.75.
    # Tick 10 crosses down: fast 101.5 < slow 103.75.
    assert [(i, sig.side) for i, sig in got] == [(7, Side.BUY), (10, Side.SELL)]
    (_, buy), (_, sell) = got
    assert buy.entry == D("104.5")  # the ask
    assert buy.stop_loss == D("103.5")  # 104.5 * 0.99 = 103.455, on the 0.1 grid
    assert buy.take_profit == D("107.6")  # 104.5 * 1.03 = 107.635
    assert buy.size == D("0.5")
    assert buy.strategy == "sma_cross"
    assert sell.entry == D("98.5")  # the bid
    assert sell.stop_loss == D("99.5")  # above the entry for a sell
    assert sell.take_profit == D("95.5")
    assert sell.stop_loss > sell.entry > sell.take_profit


@pytest.mark.trio
async def test_no_signal_before_the_slow_window_fills_or_without_a_cross() -> None:
    s = SmaCross(fast=3, slow=5)
    rising = [str(100 + i) for i in range(50)]
    assert await run(s, ticks(rising)) == []
    assert await run(SmaCross(fast=3, slow=5), ticks(["100"] * 20)) == []


@pytest.mark.trio
async def test_symbols_are_independent_and_filtered() -> None:
    s = SmaCross(fast=2, slow=4, symbols=["ETH-USDT"])
    prices = ["100", "100", "100", "99", "98", "97", "100", "104"]
    assert await run(s, ticks(prices)) == []
    eth = await run(s, ticks(prices, symbol="ETH-USDT"))
    assert [sig.symbol for _, sig in eth] == ["ETH-USDT"]


@pytest.mark.trio
async def test_deterministic_on_the_sample() -> None:
    def feed() -> Iterable[MarketData]:
        return itertools.islice(iter_ticks(sample_path()), 40_000)

    first = await run(SmaCross(fast=30, slow=120), feed())
    second = await run(SmaCross(fast=30, slow=120), feed())
    assert len(first) > 10
    assert first == second
    assert {sig.side for _, sig in first} == {Side.BUY, Side.SELL}
    for _, sig in first:
        assert sig.stop_loss is not None
        assert sig.take_profit is not None
        assert (sig.stop_loss < sig.entry < sig.take_profit) == (sig.side is Side.BUY)
    # Sides alternate per symbol: a cross up is always followed by a cross down.
    for symbol in ("BTC-USDT", "ETH-USDT"):
        sides = [sig.side for _, sig in first if sig.symbol == symbol]
        assert all(a is not b for a, b in itertools.pairwise(sides))


@pytest.mark.trio
async def test_constant_memory_per_symbol() -> None:
    s = SmaCross(fast=3, slow=7)
    await run(s, ticks([str(100 + (i % 13)) for i in range(1000)]))
    state = s._state["BTC-USDT"]
    assert len(state.fast.values) == 3
    assert len(state.slow.values) == 7
    assert state.slow.sum == sum(state.slow.values)


def test_config_from_strings() -> None:
    s = SmaCross.from_config(
        {
            "fast": "5",
            "slow": "20",
            "size": "0.2",
            "stop_loss_pct": "1.5",
            "take_profit_pct": "4",
            "symbols": ["BTC-USDT"],
        }
    )
    assert (s.fast, s.slow, s.size) == (5, 20, D("0.2"))
    assert (s.stop_loss, s.take_profit) == (D("0.015"), D("0.04"))
    assert s.symbols == frozenset({"BTC-USDT"})


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"fast": "x"}, "'fast': 'x' is not a whole number"),
        ({"fast": 0}, "'fast': 0 must be 1 or more"),
        ({"fast": 10, "slow": 10}, "'fast' (10) must be below 'slow' (10)"),
        ({"size": "-1"}, "'size': '-1' must be greater than zero"),
        ({"stop_loss_pct": "abc"}, "'stop_loss_pct': 'abc' is not a number"),
        ({"stop_loss_pct": "100"}, "'stop_loss_pct': '100' must be below 100"),
        ({"symbols": "BTC-USDT"}, "'symbols'"),
        ({"window": 3}, "unknown config field(s) 'window'"),
    ],
)
def test_bad_config_names_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        SmaCross.from_config(config)
    assert message in str(err.value)


def test_plugin_registers_sma_cross() -> None:
    assert bot4_sma_cross.BOT4_API == 1
    got: list[tuple[str, Callable[..., Any]]] = []

    def register(name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        got.append((name, factory))

    bot4_sma_cross.register_strategies(register)
    ((name, factory),) = got
    assert name == "sma_cross"
    assert isinstance(factory({}), SmaCross)
