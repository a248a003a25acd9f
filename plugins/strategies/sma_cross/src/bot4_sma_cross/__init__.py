"""bot4-plugin-sma-cross: the example strategy. Copy this package to start yours.

A strategy turns ticks into :class:`bot4.model.Signal` objects and nothing
else: it never places orders (the kernel sends every signal through the risk
policy first) and it must be deterministic, because replays depend on it.

SMA cross: keep two simple moving averages of each symbol's last price. When
the fast one crosses above the slow one, signal a buy; when it crosses below,
a sell. Each signal carries a stop loss and a take profit a fixed percentage
away from the entry (the ask for a buy, the bid for a sell).

Config (values may be strings, as they come from YAML)::

    fast: 20               ticks in the fast average
    slow: 100              ticks in the slow average (more than fast)
    size: "0.01"           base quantity per signal
    stop_loss_pct: "1"     stop this many percent away from entry
    take_profit_pct: "2"   take profit this many percent away
    symbols: [BTC-USDT]    symbols to trade (empty or absent: every symbol)
    leverage: "1"          leverage asked for each position (the rules decide if it passes)

Each tick costs O(1): running sums over two deques, no re-summing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import bot4
from bot4.contracts import Strategy
from bot4.errors import ConfigError
from bot4.hookspecs import RegisterStrategy
from bot4.model import MarketData, Side, Signal

BOT4_API = 1

__all__ = ["BOT4_API", "SmaCross", "create", "register_strategies"]

_HUNDRED = Decimal(100)


class _Average:
    """Simple moving average over the last ``n`` values with a running sum
    (exact: Decimal sums do not drift the way float sums do)."""

    __slots__ = ("n", "sum", "values")

    def __init__(self, n: int) -> None:
        self.n = n
        self.values: deque[Decimal] = deque()
        self.sum = Decimal(0)

    def push(self, value: Decimal) -> None:
        self.values.append(value)
        self.sum += value
        if len(self.values) > self.n:
            self.sum -= self.values.popleft()

    @property
    def full(self) -> bool:
        return len(self.values) == self.n


class _SymbolState:
    __slots__ = ("fast", "side", "slow")

    def __init__(self, fast: int, slow: int) -> None:
        self.fast = _Average(fast)
        self.slow = _Average(slow)
        self.side: Side | None = None  # which side the fast average was last on


class SmaCross(Strategy):
    """Fast/slow simple-moving-average cross on last prices."""

    name = "sma_cross"

    def __init__(
        self,
        *,
        fast: int = 20,
        slow: int = 100,
        size: Decimal = Decimal("0.01"),
        stop_loss_pct: Decimal = Decimal(1),
        take_profit_pct: Decimal = Decimal(2),
        symbols: Sequence[str] = (),
        leverage: Decimal = Decimal(1),
    ) -> None:
        self.fast, self.slow, self.size, self.leverage = fast, slow, size, leverage
        self.stop_loss = stop_loss_pct / _HUNDRED
        self.take_profit = take_profit_pct / _HUNDRED
        self.symbols = frozenset(symbols)
        self._state: dict[str, _SymbolState] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmaCross:
        known = {"fast", "slow", "size", "stop_loss_pct", "take_profit_pct", "symbols", "leverage"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"sma_cross: unknown config field(s) {', '.join(map(repr, unknown))}")
        fast = _int(config, "fast", 20)
        slow = _int(config, "slow", 100)
        if fast >= slow:
            raise ConfigError(
                f"sma_cross: config field 'fast' ({fast}) must be below 'slow' ({slow})"
            )
        symbols = config.get("symbols") or ()
        if isinstance(symbols, str) or not all(isinstance(s, str) for s in symbols):
            raise ConfigError(
                f"sma_cross: config field 'symbols': {symbols!r} is not a list of names"
            )
        return cls(
            fast=fast,
            slow=slow,
            size=_pct_or_size(config, "size", "0.01", upper=None),
            stop_loss_pct=_pct_or_size(config, "stop_loss_pct", "1", upper=_HUNDRED),
            take_profit_pct=_pct_or_size(config, "take_profit_pct", "2", upper=None),
            symbols=list(symbols),
            leverage=_pct_or_size(config, "leverage", "1", upper=Decimal(125)),
        )

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        return self.on_market_data_sync(tick)

    def on_market_data_sync(self, tick: MarketData) -> Sequence[Signal]:
        # Nothing here waits: the kernel calls this, without a coroutine a tick.
        if self.symbols and tick.symbol not in self.symbols:
            return ()
        state = self._state.get(tick.symbol)
        if state is None:
            state = self._state[tick.symbol] = _SymbolState(self.fast, self.slow)
        state.fast.push(tick.last)
        state.slow.push(tick.last)
        if not state.slow.full:
            return ()
        # Compare fast_sum/fast with slow_sum/slow without dividing.
        gap = state.fast.sum * self.slow - state.slow.sum * self.fast
        if gap == 0:
            return ()
        side = Side.BUY if gap > 0 else Side.SELL
        previous, state.side = state.side, side
        if previous is None or previous is side:
            return ()  # no cross: the first reading only sets the side
        return (self._signal(tick, side),)

    def _signal(self, tick: MarketData, side: Side) -> Signal:
        entry = tick.ask if side is Side.BUY else tick.bid
        sign = side.sign
        # Levels keep the quote's decimals so they sit on the price grid.
        places = entry.as_tuple().exponent
        stop = (entry * (1 - sign * self.stop_loss)).quantize(Decimal(1).scaleb(int(places)))
        target = (entry * (1 + sign * self.take_profit)).quantize(Decimal(1).scaleb(int(places)))
        return Signal(
            symbol=tick.symbol,
            side=side,
            confidence=0.5,
            size=self.size,
            entry=entry,
            stop_loss=stop,
            take_profit=target,
            strategy=self.name,
            leverage=self.leverage,
            metadata={"fast": self.fast, "slow": self.slow},
        )


def _int(config: Mapping[str, Any], key: str, default: int) -> int:
    raw = config.get(key, default)
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(
            f"sma_cross: config field {key!r}: {raw!r} is not a whole number"
        ) from None
    if isinstance(raw, bool) or value < 1:
        raise ConfigError(f"sma_cross: config field {key!r}: {raw!r} must be 1 or more")
    return value


def _pct_or_size(
    config: Mapping[str, Any], key: str, default: str, *, upper: Decimal | None
) -> Decimal:
    raw = config.get(key, default)
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ConfigError(f"sma_cross: config field {key!r}: {raw!r} is not a number") from None
    if isinstance(raw, bool) or not value.is_finite() or value <= 0:
        raise ConfigError(f"sma_cross: config field {key!r}: {raw!r} must be greater than zero")
    if upper is not None and value >= upper:
        raise ConfigError(f"sma_cross: config field {key!r}: {raw!r} must be below {upper}")
    return value


def create(config: Mapping[str, Any]) -> SmaCross:
    """Factory registered as ``sma_cross``."""
    return SmaCross.from_config(config)


@bot4.hookimpl
def register_strategies(register: RegisterStrategy) -> None:
    register("sma_cross", create, description="Fast/slow moving-average cross with stop and target")
