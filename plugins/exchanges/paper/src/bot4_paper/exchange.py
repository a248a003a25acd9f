"""The paper venue as a :class:`bot4.contracts.Exchange`: the kernel cannot tell
it from a live one.

It wraps a :class:`~bot4_paper.engine.PaperEngine` (the matching rules are
documented there) and a market-data feed. ``stream(symbols)`` walks the feed;
for every tick it yields, in this order:

1. events caused by ``place_order``/``cancel_order`` since the previous tick
   (the accepted order's state, immediate fills, cancellations);
2. fills and order updates caused by matching the tick against resting orders
   (each Fill followed by the updated OrderState of its order);
3. the tick itself (only when its symbol is among ``symbols``; an empty
   ``symbols`` means all). Orders of every symbol are matched regardless.

So a strategy reacting to tick *n* sees its market order filled against tick
*n* (``place_order`` returns the filled state at once) and the Fill arrives
from the stream before tick *n+1*.

Config (values may be strings, as they come from YAML)::

    feed: Iterable[MarketData] or a path for bot4.data.iter_ticks   (required;
          a path is read in the loader's columnar batches of trusted ticks),
          or an AsyncIterable[MarketData] (a live feed, bot4.feeds: each tick
          is awaited, bot4_paper.live)
    balance: "10000"        currency: "USDT"
    taker_fee: "0.0004"     maker_fee: "0.0002"     slippage_bps: "1"
    max_leverage: "100"
    history: 10000          fills and closed orders remembered (open orders always are)
    attached_exits: true    turn an order's stop_loss/take_profit into exit orders here
    markets: {BTC-USDT: {price_increment: "0.01", qty_increment: "0.0001",
                         min_qty: "0.0001"}, ...}
      (default: BTC-USDT and ETH-USDT, plus any symbol first seen in the feed,
       see bot4_paper.engine); per market also
         type: perp | spot       (default perp; a -PERP symbol cannot be spot)
         tiers: [[50000, "0.005", 125], [250000, "0.01", 100], [null, "0.025", 50]]
                 maintenance-margin brackets: notional cap (null: none), rate,
                 max leverage (default: bot4.margin.DEFAULT_TIERS, 0.5% first)
         funding_rate: "0.0001"  per 8 h (default: the top-level funding_rate)
    funding_rate: "0"       funding rate of every perpetual without its own (a
                            tick's funding_rate, from the data, overrides both for
                            its symbol; a tick's mark replaces the mid as mark)
    liquidation_fee: "0.0125"  charged on the notional of a liquidation (isolated,
                            or each position the cross account closes)
    state: "paper.sqlite"   durable mode: the venue's orders, fills, balance and
      positions live in this file and survive the bot process; a restarted
      exchange skips the feed up to the last tick it took (bot4_paper.durable)
"""

from __future__ import annotations

import functools
import operator
import os
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from itertools import chain
from typing import Any

import trio

from bot4.contracts import Capability, Exchange, ExchangeEvent, MarketInfo
from bot4.errors import ConfigError
from bot4.margin import DEFAULT_TIERS, Tier
from bot4.margin import tiers as tier_table
from bot4.model import Balance, Fill, MarketData, Order, OrderState, Position
from bot4_paper.engine import PaperEngine
from bot4_paper.margin_book import PERP_SUFFIX, SPOT, MarginState, MarketMargin

__all__ = ["CONFIG_KEYS", "PaperExchange"]

CONFIG_KEYS = frozenset(
    {
        "feed",
        "balance",
        "currency",
        "taker_fee",
        "maker_fee",
        "slippage_bps",
        "max_leverage",
        "history",
        "attached_exits",
        "markets",
        "state",
        "funding_rate",
        "liquidation_fee",
    }
)


class PaperExchange(Exchange):
    """A simulated venue fed by recorded or generated market data."""

    name = "paper"
    capabilities = frozenset(Capability)

    def __init__(
        self,
        feed: Iterable[MarketData] | AsyncIterable[MarketData],
        engine: PaperEngine | None = None,
    ) -> None:
        self.engine = engine if engine is not None else PaperEngine()
        if not self.engine.attached_exits:
            self.capabilities = frozenset(Capability) - {Capability.ATTACHED_EXITS}
        self._feed = feed
        self._ticks: Iterator[MarketData] | None = None
        self._live: AsyncIterator[MarketData] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PaperExchange:
        """Build from a config mapping; a bad field raises ConfigError naming it."""
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(
                f"paper: unknown config field(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(CONFIG_KEYS))}"
            )
        if "feed" not in config:
            raise ConfigError("paper: config field 'feed' is required (market data or a path)")
        feed = _feed(config["feed"])
        currency = config.get("currency", "USDT")
        if not isinstance(currency, str) or not currency.strip():
            raise ConfigError(
                f"paper: config field 'currency': {currency!r} is not a currency name"
            )
        markets = _markets(config["markets"]) if "markets" in config else None
        funding = _number(config, "funding_rate", "0", signed=True)
        margin = _margins(config.get("markets"), funding)
        make: Any = PaperEngine
        if config.get("state") is not None:
            from bot4_paper.durable import DurableEngine

            state = config["state"]
            if not isinstance(state, (str, os.PathLike)):
                raise ConfigError(f"paper: config field 'state': {state!r} is not a file path")
            make = functools.partial(DurableEngine, state)
        engine = make(
            markets,
            balance=_number(config, "balance", "10000", positive=True),
            currency=currency.strip(),
            taker_fee=_number(config, "taker_fee", "0.0004", below_one=True),
            maker_fee=_number(config, "maker_fee", "0.0002", below_one=True),
            slippage_bps=_number(config, "slippage_bps", "1"),
            max_leverage=_number(config, "max_leverage", "100", positive=True),
            history=_history(config),
            attached_exits=_flag(config, "attached_exits", True),
            margin=margin,
            liquidation_fee=_number(config, "liquidation_fee", "0.0125", below_one=True),
        )
        return cls(feed, engine)

    async def connect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        if isinstance(self._feed, _lazy):  # the data file, however far it was read
            self._feed.close()
        close = getattr(self.engine, "close", None)  # durable mode: the state file
        if close is not None:
            close()

    @property
    def durable(self) -> bool:
        """Whether the venue's state outlives this process (``state`` given)."""
        return bool(getattr(self.engine, "durable", False))

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        await trio.lowlevel.checkpoint()
        return self.engine.markets

    async def place_order(self, order: Order) -> OrderState:
        await trio.lowlevel.checkpoint()
        return self.engine.place(order)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        await trio.lowlevel.checkpoint()
        return self.engine.cancel(client_order_id, symbol)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        await trio.lowlevel.checkpoint()
        return self.engine.order_state(client_order_id, symbol)

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        await trio.lowlevel.checkpoint()
        return self.engine.open_orders(symbol)

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        await trio.lowlevel.checkpoint()
        return self.engine.fills(since)

    async def fetch_balance(self) -> Balance:
        await trio.lowlevel.checkpoint()
        return self.engine.balance()

    async def fetch_positions(self) -> Sequence[Position]:
        await trio.lowlevel.checkpoint()
        return self.engine.positions()

    @property
    def funding_paid(self) -> Decimal:
        """What funding took from the account so far (negative: received)."""
        return self.engine.margin.funding_paid

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        await trio.lowlevel.checkpoint()
        return self.engine.set_leverage(symbol, leverage)

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        await trio.lowlevel.checkpoint()
        self.engine.set_margin_mode(symbol, mode)

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        await trio.lowlevel.checkpoint()
        return self.engine.add_margin(symbol, amount)

    async def fetch_margin(self, symbol: str) -> MarginState | None:
        await trio.lowlevel.checkpoint()
        return self.engine.margin_state(symbol)

    async def fetch_margin_positions(self) -> Sequence[MarginState]:
        """Every open perpetual position's margin (liquidation price, mark,
        collateral), as the ccxt plugin's method of this name reports a venue's."""
        await trio.lowlevel.checkpoint()
        states = (self.engine.margin_state(p.symbol) for p in self.engine.positions())
        return [s for s in states if s is not None]

    def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        """Replay the feed; see the module docstring for the event order. A
        second call continues where the first stopped (the feed is read once)."""
        resume = getattr(self.engine, "resume_after", None)
        if isinstance(self._feed, AsyncIterable):
            from bot4_paper.live import LiveStream

            if self._live is None:
                self._live = aiter(self._feed)
            return LiveStream(self, frozenset(symbols), self._live, resume)
        if self._ticks is None:
            self._ticks = iter(self._feed)
        return _Stream(self, frozenset(symbols), self._ticks, resume)


# The stream yields to trio (a checkpoint: other tasks run, a cancellation
# gets in) once every 256 ticks read. A checkpoint costs about 2.9 us here,
# more than a whole no-op tick (1.8 us): at every 32 ticks it was 5% of the
# no-op replay. 256 ticks are well under a millisecond of replay, and the
# bus's subscribers, which run at checkpoints, take them as one batch.
_CHECKPOINT_MASK = 255


class _Stream(AsyncIterator[ExchangeEvent]):
    """The stream as a plain async iterator rather than an async generator:
    a consumer may stop reading at any point without ``aclosing`` and without
    trio warning that a generator was garbage collected unfinished."""

    def __init__(
        self,
        exchange: PaperExchange,
        wanted: frozenset[str],
        ticks: Iterator[MarketData],
        resume: datetime | None = None,
    ) -> None:
        self._exchange = exchange
        self._resume = resume  # durable mode: ticks at or before this were taken already
        self._wanted = wanted
        self._ticks = ticks
        self._buffer: deque[ExchangeEvent] = deque()
        self._done = False
        self._read = 0

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> ExchangeEvent:
        buffer = self._buffer
        if buffer:
            return buffer.popleft()
        engine = self._exchange.engine
        while True:
            # What place_order/cancel_order did since the last event goes out
            # before the next tick is read. (The outbox is read directly: most
            # ticks find it empty, and drain() would build a list for nothing.)
            if engine._outbox:
                buffer.extend(engine.drain())
                return buffer.popleft()
            if self._done or self._exchange._closed:
                raise StopAsyncIteration
            tick = next(self._ticks, None)
            if tick is None:
                self._done = True
                continue  # one last drain, then stop
            if not isinstance(tick, MarketData):
                raise ConfigError(f"paper: the feed yielded {type(tick).__name__}, not MarketData")
            if self._resume is not None and tick.timestamp <= self._resume:
                continue
            events = engine.on_tick(tick)
            if events:
                buffer.extend(events)
            wanted = not self._wanted or tick.symbol in self._wanted
            # Let other tasks run (and cancellation in) even when the consumer
            # never blocks: every _CHECKPOINT_MASK + 1 ticks.
            self._read += 1
            if not self._read & _CHECKPOINT_MASK:
                await trio.lowlevel.checkpoint()
            if buffer:
                if wanted:
                    buffer.append(tick)
                return buffer.popleft()
            if wanted:
                # The common tick: nothing executed, so the tick itself is the
                # next event and needs no trip through the buffer.
                return tick

    def poll(self) -> ExchangeEvent | None:
        """The next event, when it can be had without waiting; None when the
        caller must ``await`` :meth:`__anext__` instead (a checkpoint is due
        on the next tick read, or the stream has ended). The same events in
        the same order as :meth:`__anext__` alone, read as lazily: a tick is
        read only when the one before it has been taken, so what the consumer
        placed on it is executed first. The kernel calls this before each
        await: most ticks then cost a plain call, not a coroutine.

        The body repeats :meth:`__anext__`'s on purpose: a helper shared by
        the two would be one more call per tick on the hottest path.
        ``test_poll_gives_the_events_of_the_await_in_the_same_order`` holds
        the two readers equal."""
        buffer = self._buffer
        if buffer:
            return buffer.popleft()
        engine = self._exchange.engine
        while True:
            if engine._outbox:
                buffer.extend(engine.drain())
                return buffer.popleft()
            if self._done or self._exchange._closed or not (self._read + 1) & _CHECKPOINT_MASK:
                return None  # the end, or the tick read next checkpoints: __anext__ does both
            tick = next(self._ticks, None)
            if tick is None:
                self._done = True
                continue  # one last drain, then __anext__ stops
            if not isinstance(tick, MarketData):
                raise ConfigError(f"paper: the feed yielded {type(tick).__name__}, not MarketData")
            if self._resume is not None and tick.timestamp <= self._resume:
                continue
            events = engine.on_tick(tick)
            if events:
                buffer.extend(events)
            self._read += 1
            wanted = not self._wanted or tick.symbol in self._wanted
            if buffer:
                if wanted:
                    buffer.append(tick)
                return buffer.popleft()
            if wanted:
                return tick

    async def aclose(self) -> None:
        self._done = True


def _number(
    config: Mapping[str, Any],
    key: str,
    default: str,
    *,
    positive: bool = False,
    below_one: bool = False,
    prefix: str = "",
    signed: bool = False,
) -> Decimal:
    raw = config.get(key, default)
    key = prefix + key
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str, Decimal)):
        raise ConfigError(f"paper: config field {key!r}: {raw!r} is not a number")
    try:
        value = Decimal(repr(raw) if isinstance(raw, float) else str(raw).strip())
    except InvalidOperation:
        raise ConfigError(f"paper: config field {key!r}: {raw!r} is not a number") from None
    if not value.is_finite():
        raise ConfigError(f"paper: config field {key!r}: {raw!r} is not a finite number")
    if signed:
        if abs(value) >= 1:
            raise ConfigError(f"paper: config field {key!r}: {raw!r} must be a fraction below 1")
        return value
    if value < 0 or (positive and value == 0):
        need = "greater than zero" if positive else "zero or more"
        raise ConfigError(f"paper: config field {key!r}: {raw!r} must be {need}")
    if below_one and value >= 1:
        raise ConfigError(f"paper: config field {key!r}: {raw!r} must be a fraction below 1")
    return value


def _markets(raw: object) -> dict[str, MarketInfo]:
    entries: list[tuple[str, object]]
    if isinstance(raw, Mapping):
        entries = [(str(k), v) for k, v in raw.items()]
    elif isinstance(raw, (list, tuple)):
        entries = []
        for i, item in enumerate(raw):
            if isinstance(item, MarketInfo):
                entries.append((item.symbol, item))
            elif isinstance(item, Mapping) and isinstance(item.get("symbol"), str):
                entries.append((item["symbol"], item))
            else:
                raise ConfigError(f"paper: config field 'markets[{i}]' needs a 'symbol'")
    else:
        raise ConfigError(f"paper: config field 'markets': {raw!r} is not a mapping or list")
    out: dict[str, MarketInfo] = {}
    for symbol, spec in entries:
        where = f"markets.{symbol}"
        if isinstance(spec, MarketInfo):
            out[symbol] = spec
            continue
        if not isinstance(spec, Mapping):
            raise ConfigError(f"paper: config field {where!r}: {spec!r} is not a mapping")
        if "price_increment" not in spec or "qty_increment" not in spec:
            raise ConfigError(
                f"paper: config field {where!r} needs 'price_increment' and 'qty_increment'"
            )
        price_inc = _number(spec, "price_increment", "0", positive=True, prefix=where + ".")
        qty_inc = _number(spec, "qty_increment", "0", positive=True, prefix=where + ".")
        min_qty = _number(spec, "min_qty", str(qty_inc), positive=True, prefix=where + ".")
        quote = spec.get("quote_currency", symbol.split("-")[1] if "-" in symbol else "USDT")
        out[symbol] = MarketInfo(symbol, price_inc, qty_inc, min_qty, str(quote))
    return out


def _margins(raw: object, funding: Decimal) -> dict[str, MarketMargin]:
    """Each configured market's margin spec (``type``, ``tiers``,
    ``funding_rate``); markets not configured are perpetuals at ``funding``."""
    out: dict[str, MarketMargin] = {}
    default = MarketMargin(funding_rate=funding)
    entries: list[tuple[str, Mapping[str, Any]]] = []
    if isinstance(raw, Mapping):
        entries = [(str(k), v) for k, v in raw.items() if isinstance(v, Mapping)]
    elif isinstance(raw, (list, tuple)):
        entries = [(str(v["symbol"]), v) for v in raw if isinstance(v, Mapping)]
    for symbol, spec in entries:
        where = f"markets.{symbol}."
        kind = spec.get("type", "perp")
        if kind not in ("perp", "spot"):
            raise ConfigError(f"paper: config field {where}type: {kind!r} is not perp or spot")
        if kind == "spot":
            if symbol.endswith(PERP_SUFFIX):
                raise ConfigError(f"paper: config field {where}type: a -PERP symbol is not spot")
            out[symbol] = SPOT
            continue
        rate = (
            _number(spec, "funding_rate", "0", prefix=where, signed=True)
            if "funding_rate" in spec
            else funding
        )
        table = _tiers(spec["tiers"], where + "tiers") if "tiers" in spec else DEFAULT_TIERS
        out[symbol] = MarketMargin("perp", table, rate)
    # A symbol not configured here (a default or inferred market) is a
    # perpetual at the top-level funding rate.
    out.setdefault("*", default)
    return out


def _tiers(raw: object, where: str) -> tuple[Tier, ...]:
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ConfigError(f"paper: config field {where!r}: a list of [cap, rate, max leverage]")
    rows: list[tuple[Decimal | None, str, int]] = []
    for i, row in enumerate(raw):
        here = f"{where}[{i}]"
        if not isinstance(row, (list, tuple)) or len(row) != 3:
            raise ConfigError(
                f"paper: config field {here!r}: {row!r} is not [cap, rate, max leverage]"
            )
        fields = dict(zip(("cap", "rate", "max_leverage"), row, strict=True))
        prefix = here + "."
        cap = (
            None
            if fields["cap"] is None
            else _number(fields, "cap", "0", positive=True, prefix=prefix)
        )
        rate = _number(fields, "rate", "0", positive=True, below_one=True, prefix=prefix)
        lev = _number(fields, "max_leverage", "1", positive=True, prefix=prefix)
        if lev != int(lev):
            raise ConfigError(
                f"paper: config field {here!r}: max leverage {fields['max_leverage']!r} "
                "is not a whole number"
            )
        rows.append((cap, str(rate), int(lev)))
    try:
        return tier_table(rows)
    except ValueError as exc:
        raise ConfigError(f"paper: config field {where!r}: {exc}") from None


def _feed(raw: object) -> Iterable[MarketData] | AsyncIterable[MarketData]:
    if isinstance(raw, (str, os.PathLike)):
        if not os.path.exists(raw):
            raise ConfigError(f"paper: config field 'feed': no such file or directory {raw!r}")
        # Imported here: the loader is only needed when the feed is a file.
        from bot4.data.loader import iter_batches

        path = raw
        return _lazy(lambda: iter_batches(path))
    if isinstance(raw, Iterable | AsyncIterable):
        return raw
    raise ConfigError(f"paper: config field 'feed': {raw!r} is neither market data nor a path")


_batch_ticks = operator.attrgetter("ticks")


class _lazy(Iterable[MarketData]):
    """Opens the file only when the stream starts, so a config check does not
    hold a file handle; :meth:`close` closes it however the session ended
    (a stop mid-file would otherwise leave the handle to the garbage
    collector, which may finalize the file before the reader holding it)."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._batches: Iterator[Any] | None = None

    def __iter__(self) -> Iterator[MarketData]:
        self.close()
        self._batches = batches = self._make()
        # The loader's batches, flattened in C (a list iterator inside a
        # chain): the stream takes one trusted tick at a time at the cost of
        # a list step, not a generator resume per tick.
        return chain.from_iterable(map(_batch_ticks, batches))

    def close(self) -> None:
        batches, self._batches = self._batches, None
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def _history(config: Mapping[str, Any]) -> int:
    raw = config.get("history", 10_000)
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if isinstance(raw, bool) or value < 1:
        raise ConfigError(f"paper: config field 'history': {raw!r} must be a whole number >= 1")
    return value


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    raw = config.get(key, default)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "yes", "no"):
        return raw.strip().lower() in ("true", "yes")
    raise ConfigError(f"paper: config field {key!r}: {raw!r} is not true or false")
