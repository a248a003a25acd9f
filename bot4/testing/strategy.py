"""Strategy conformance checks: valid signals, deterministic under replay.

A strategy's signals go through the risk policy before any order exists, but
the policy can only judge what it is given: a signal without a stop loss, with
its stop on the wrong side of the entry, or attributed to no strategy is a bug
in the strategy, and these checks name it. Replays and backtests depend on a
strategy emitting the same signals for the same ticks, so that is checked too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bot4.contracts import Strategy, sync_hook
from bot4.model import Fill, MarketData, Side, Signal
from bot4.testing.harness import ConformanceError

__all__ = [
    "check_deterministic",
    "check_on_fill",
    "check_signals_valid",
    "check_sync_hook",
    "sample_ticks",
]

_START = datetime(2024, 1, 1, tzinfo=UTC)


def sample_ticks(
    n: int = 1200, symbols: Sequence[str] = ("BTC-USDT", "ETH-USDT")
) -> list[MarketData]:
    """A deterministic feed: each symbol follows a triangle wave (period 200
    ticks, +-10 % around 100) with a small saw on top, so trend-following and
    mean-reverting strategies both get crosses to act on. Interleaved by time."""
    out: list[MarketData] = []
    for i in range(n):
        phase = i % 200
        wave = phase if phase < 100 else 200 - phase  # 0..100..0
        for k, symbol in enumerate(symbols):
            cents = 9000 + 20 * wave + 37 * ((i * (k + 3)) % 7) + 500 * k
            bid = Decimal(cents).scaleb(-2)
            out.append(
                MarketData(
                    symbol=symbol,
                    exchange="paper",
                    bid=bid,
                    ask=bid + Decimal("0.02"),
                    last=bid + Decimal("0.01"),
                    volume=Decimal(5),
                    timestamp=_START + timedelta(seconds=i, milliseconds=k),
                )
            )
    return out


def _fail(message: str) -> ConformanceError:
    return ConformanceError(message)


def _make(factory: Callable[[], Strategy]) -> Strategy:
    strategy = factory()
    if not isinstance(strategy, Strategy):
        raise _fail(
            f"the factory returned {type(strategy).__name__}, not a bot4.contracts.Strategy"
        )
    if not isinstance(getattr(strategy, "name", None), str) or not strategy.name:
        raise _fail(f"{type(strategy).__name__}.name must be a non-empty string")
    return strategy


def check_signal(strategy: Strategy, signal: object, tick: MarketData, symbols: set[str]) -> None:
    """One signal, emitted in response to ``tick``, is well formed."""
    where = f"{strategy.name}: on the tick {tick.symbol} @ {tick.timestamp.isoformat()}"
    if not isinstance(signal, Signal):
        raise _fail(f"{where} it returned {signal!r} among its signals; return bot4.model.Signal")
    if signal.symbol not in symbols:
        raise _fail(f"{where} it signalled {signal.symbol}, a symbol it was never fed")
    if not isinstance(signal.size, Decimal) or signal.size <= 0:
        raise _fail(f"{where} a signal has size {signal.size!r}; sizes are positive Decimals")
    if signal.stop_loss is None:
        raise _fail(
            f"{where} it emitted a {signal.side.value} signal at {signal.entry} without a "
            "stop_loss. Every entry needs one: bot4's default policy rejects entries "
            "without a stop, and the stop is what bounds the loss. Set Signal.stop_loss"
        )
    buy = signal.side is Side.BUY
    if (signal.stop_loss >= signal.entry) if buy else (signal.stop_loss <= signal.entry):
        raise _fail(
            f"{where} a {signal.side.value} signal has stop_loss {signal.stop_loss} "
            f"{'at or above' if buy else 'at or below'} its entry {signal.entry}; a buy's stop "
            "is below the entry, a sell's above"
        )
    tp = signal.take_profit
    if tp is not None and ((tp <= signal.entry) if buy else (tp >= signal.entry)):
        raise _fail(
            f"{where} a {signal.side.value} signal has take_profit {tp} on the losing side of "
            f"its entry {signal.entry}"
        )
    if signal.symbol == tick.symbol and not (tick.mid / 2 < signal.entry < tick.mid * 2):
        raise _fail(
            f"{where} a signal's entry {signal.entry} is far from the market {tick.bid}/"
            f"{tick.ask}; the entry is the price the strategy expects to trade at"
        )
    if signal.strategy != strategy.name:
        raise _fail(
            f"{where} a signal says strategy={signal.strategy!r}; set it to "
            f"{strategy.name!r} (the strategy's name) so journals and risk rules can "
            "attribute it"
        )


async def _replay(strategy: Strategy, ticks: Sequence[MarketData]) -> list[tuple[int, Signal]]:
    symbols: set[str] = set()
    out: list[tuple[int, Signal]] = []
    for i, tick in enumerate(ticks):
        symbols.add(tick.symbol)
        signals = await strategy.on_market_data(tick)
        if not isinstance(signals, (list, tuple)):
            raise _fail(
                f"{strategy.name}.on_market_data returned {type(signals).__name__}; return a "
                "list or tuple of Signal (empty when there is nothing to do)"
            )
        for signal in signals:
            check_signal(strategy, signal, tick, symbols)
            out.append((i, signal))
    return out


async def check_signals_valid(factory: Callable[[], Strategy], ticks: Sequence[MarketData]) -> None:
    """Every signal over the feed is valid, and there is at least one."""
    strategy = _make(factory)
    emitted = await _replay(strategy, ticks)
    if not emitted:
        raise _fail(
            f"{strategy.name} emitted no signal over {len(ticks)} ticks, so nothing about its "
            "signals could be checked; give the suite ticks it trades on (set `ticks`) or a "
            "factory with settings that trade on them"
        )


async def check_deterministic(factory: Callable[[], Strategy], ticks: Sequence[MarketData]) -> None:
    """Two fresh instances fed the same ticks emit equal signals at the same ticks."""
    runs = []
    for _ in range(2):
        emitted = await _replay(_make(factory), ticks)
        runs.append([(i, s, dict(s.metadata)) for i, s in emitted])
    first, second = runs
    if first != second:
        at = next(
            (k for k, (a, b) in enumerate(zip(first, second, strict=False)) if a != b),
            min(len(first), len(second)),
        )
        a = first[at] if at < len(first) else "nothing"
        b = second[at] if at < len(second) else "nothing"
        raise _fail(
            f"two fresh instances fed the same {len(ticks)} ticks differ at signal #{at}: "
            f"{a!r} vs {b!r}. A strategy must be deterministic (replays depend on it): no "
            "wall clock, no unseeded randomness, no state shared between instances"
        )


async def check_on_fill(factory: Callable[[], Strategy], ticks: Sequence[MarketData]) -> None:
    """on_fill takes a fill of the strategy's own signal and returns valid signals."""
    strategy = _make(factory)
    symbols: set[str] = set()
    for tick in ticks:
        symbols.add(tick.symbol)
        signals = await strategy.on_market_data(tick)
        if not signals:
            continue
        signal = signals[0]
        fill = Fill(
            fill_id="kit-fill-1",
            client_order_id="kit-order-1",
            symbol=signal.symbol,
            side=signal.side,
            qty=signal.size,
            price=signal.entry,
            fee=Decimal(0),
            timestamp=tick.timestamp,
        )
        after = await strategy.on_fill(fill)
        if not isinstance(after, (list, tuple)):
            raise _fail(
                f"{strategy.name}.on_fill returned {type(after).__name__}; return a list or "
                "tuple of Signal"
            )
        for s in after:
            check_signal(strategy, s, tick, symbols)
        return
    raise _fail(f"{strategy.name} emitted no signal, so on_fill could not be exercised")


async def check_sync_hook(factory: Callable[[], Strategy], ticks: Sequence[MarketData]) -> None:
    """A strategy with ``on_market_data_sync`` gives from it what
    ``on_market_data`` gives, tick by tick (two fresh instances: the kernel
    calls the plain hook instead of awaiting the other). Nothing to check
    for a strategy without one."""
    plain = _make(factory)
    hook = sync_hook(plain)
    if hook is None:
        return
    awaited = _make(factory)
    symbols: set[str] = set()
    for i, tick in enumerate(ticks):
        symbols.add(tick.symbol)
        got = hook(tick)
        if not isinstance(got, (list, tuple)):
            raise _fail(
                f"{plain.name}.on_market_data_sync returned {type(got).__name__}; return a "
                "list or tuple of Signal (empty when there is nothing to do)"
            )
        want = await awaited.on_market_data(tick)
        mine = [(s, dict(s.metadata)) for s in got]
        theirs = [(s, dict(s.metadata)) for s in want]
        if mine != theirs:
            raise _fail(
                f"{plain.name}: on tick #{i} ({tick.symbol} @ {tick.timestamp.isoformat()}) "
                f"on_market_data_sync gave {list(got)!r} but on_market_data {list(want)!r}. "
                "The kernel calls on_market_data_sync instead of on_market_data when a "
                "strategy has it: both must give the same signals (let on_market_data "
                "return on_market_data_sync(tick))"
            )
        for signal in got:
            check_signal(plain, signal, tick, symbols)
