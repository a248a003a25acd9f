"""What ``bot4 replay`` runs a recording against: its own records, nothing else.

A recording is read once, as a stream, in one pass. Its *input* events are
the exchange's: ``market.*`` (ticks), ``fill.*`` and ``order.update``, in the
order the kernel received them. :func:`recorded_ticks` yields the ticks (a
paper recording is re-simulated from them by an in-memory paper engine);
:class:`ReplayVenue` plays every input event back as an exchange would, and
answers the kernel's calls from the records that follow the event being
handled: ``order.placed`` for ``place_order`` (by client order id), the
kernel's own ``exchange refused``/``giving up``/``could not cancel`` errors for
the calls that failed, ``exchange.markets`` for ``fetch_markets``.

Neither opens a connection or a file other than the recording: whatever the
recording's header names (a venue URL, a key file, a data or state file) is
never used. ``policy.reload`` records (a hot reload during the session: the
new rule text and its hash) are handed to ``on_reload`` *before* the tick on
which the session reloaded, so that the replay's kernel reloads on that tick.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from bot4 import codec, errors
from bot4.contracts import Capability, Exchange, ExchangeEvent, MarketInfo
from bot4.errors import ConfigError, ExchangeFailed, ExchangeRefused, OrderNotFound
from bot4.model import Balance, Fill, MarketData, Order, OrderState, Position
from bot4.recording_read import read_records, read_stream
from bot4.venue_margin import MARGIN_TOPIC, from_record

__all__ = ["RecordedPrefix", "RecordedTicks", "ReplayVenue", "is_input", "records"]

Record = tuple[int, dict[str, Any]]
ReloadHook = Callable[[int, Mapping[str, Any]], None]


def records(path: Path) -> Iterator[Record]:
    """(line number, record) for every event of a recording, streamed (a
    compact gzip recording or an old plain one: see :mod:`bot4.recording`)."""
    return read_records(path)


def is_input(topic: str) -> bool:
    """An event the exchange produced (the kernel's input)."""
    return topic.startswith(("market.", "fill.")) or topic == "order.update"


def _decode(path: Path, number: int, record: Mapping[str, Any], kind: type[Any]) -> Any:
    try:
        value = codec.decode(record.get("payload"))
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"{path}:{number}: {record['topic']}: unreadable payload: {exc}"
        ) from None
    if not isinstance(value, kind):
        raise ConfigError(f"{path}:{number}: {record['topic']} without a {kind.__name__}")
    return value


class RecordedTicks(Iterator[MarketData]):
    """The recorded ticks, in order, as a paper exchange's feed. A reload
    recorded after tick *n* (it happened while tick *n* was handled) is passed
    to ``on_reload`` before tick *n* is handed over: the feed reads one tick
    ahead. ``inputs`` counts the exchange events read so far; once
    ``exhausted``, it is the recording's total (see :class:`RecordedPrefix`)."""

    def __init__(self, path: Path, on_reload: ReloadHook) -> None:
        self.inputs = 0
        self.exhausted = False
        self._ticks = self._read(path, on_reload)

    def __next__(self) -> MarketData:
        return next(self._ticks)

    def _read(self, path: Path, on_reload: ReloadHook) -> Iterator[MarketData]:
        pending: MarketData | None = None
        # Ticks come validated straight from the recording's columns.
        for number, topic, item in read_stream(path, ticks="models"):
            if topic.startswith("market."):
                self.inputs += 1
                if pending is not None:
                    yield pending
                pending = item
                continue
            if is_input(topic):
                self.inputs += 1
            elif topic == "policy.reload":
                on_reload(number, item.get("payload") or {})
        self.exhausted = True
        if pending is not None:
            yield pending


class RecordedPrefix(Exchange):
    """A venue (the paper re-simulation) cut after as many exchange events as
    the recording holds. A session stopped by a signal ends between two
    events; the simulation would go on with the fills it still had queued."""

    def __init__(self, venue: Exchange, feed: RecordedTicks) -> None:
        self.venue = venue
        self.feed = feed
        self.name = venue.name
        self.capabilities = venue.capabilities
        self.durable = False

    async def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        taken = 0
        events = self.venue.stream(symbols)
        while not (self.feed.exhausted and taken >= self.feed.inputs):
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                return
            taken += 1
            yield event

    async def connect(self) -> None:
        await self.venue.connect()

    async def close(self) -> None:
        await self.venue.close()

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        return await self.venue.fetch_markets()

    async def place_order(self, order: Order) -> OrderState:
        return await self.venue.place_order(order)

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        return await self.venue.cancel_order(symbol, client_order_id)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        return await self.venue.fetch_order(symbol, client_order_id)

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        return await self.venue.fetch_open_orders(symbol)

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        return await self.venue.fetch_fills(since)

    async def fetch_balance(self) -> Balance:
        return await self.venue.fetch_balance()

    async def fetch_positions(self) -> Sequence[Position]:
        return await self.venue.fetch_positions()

    # The margin account (Capability.MARGIN, bot4.margin_desk): the re-simulated venue's.

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        return await self.venue.set_leverage(symbol, leverage)

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        await self.venue.set_margin_mode(symbol, mode)

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        return await self.venue.add_margin(symbol, amount)

    async def fetch_margin_positions(self) -> Sequence[Any]:
        """The re-simulated venue's margin positions (bot4.margin_desk reads
        them as the recorded session did), or none if it has no such method."""
        fetch = getattr(self.venue, "fetch_margin_positions", None)
        if fetch is None:
            raise ExchangeRefused(f"{self.name} reports no margin positions")
        rows: Sequence[Any] = await fetch()
        return rows


def _markets(path: Path, number: int, payload: object) -> dict[str, MarketInfo]:
    if not isinstance(payload, Mapping):
        raise ConfigError(f"{path}:{number}: exchange.markets is not a mapping")
    out: dict[str, MarketInfo] = {}
    for symbol, spec in payload.items():
        try:
            out[str(symbol)] = MarketInfo(
                symbol=str(spec["symbol"]),
                price_increment=Decimal(str(spec["price_increment"])),
                qty_increment=Decimal(str(spec["qty_increment"])),
                min_qty=Decimal(str(spec["min_qty"])),
                quote_currency=str(spec.get("quote_currency", "USDT")),
            )
        except (KeyError, TypeError, InvalidOperation) as exc:
            raise ConfigError(
                f"{path}:{number}: exchange.markets: {symbol}: unreadable ({exc!r})"
            ) from None
    return out


def _recorded_error(text: str, family: type[errors.ExchangeError]) -> errors.ExchangeError:
    """The exception a kernel.error message ("Type: message") was made from."""
    name, _, message = text.partition(": ")
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, family):
        return cls(message)
    return family(text)


class ReplayVenue(Exchange):
    """An exchange that plays a recording back (see the module docstring)."""

    name = "replay"

    def __init__(
        self,
        path: Path,
        *,
        capabilities: frozenset[Capability],
        balance: Decimal,
        currency: str = "USDT",
        on_reload: ReloadHook | None = None,
    ) -> None:
        self.path = path
        self.capabilities = capabilities
        self.durable = False
        self._balance = balance
        self._currency = currency
        self._on_reload = on_reload
        self._records = read_stream(path, ticks="models")
        # The next input event, already read: (number, topic, record or tick).
        self._head: tuple[int, str, Any] | None = None
        self._answers: list[Record] = []  # records after the event being handled
        self._markets: dict[str, MarketInfo] | None = None
        self._open: dict[str, OrderState] = {}
        self._read_until_input()

    def _read_until_input(self) -> list[Record]:
        """Read up to the next input event (kept in ``_head``); return what came
        before it. Reloads go to ``on_reload``, the markets are kept."""
        before: list[Record] = []
        self._head = None
        for number, topic, record in self._records:
            if is_input(topic):
                self._head = (number, topic, record)
                break
            if topic == "policy.reload":
                if self._on_reload is not None:
                    self._on_reload(number, record.get("payload") or {})
            elif topic == "exchange.markets":
                self._markets = _markets(self.path, number, record.get("payload"))
            else:
                before.append((number, record))
        return before

    # -- the exchange's side -------------------------------------------------

    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        if self._markets is None:
            raise ConfigError(
                f"{self.path}: the recording holds no exchange.markets event "
                "(made by an older bot4); it cannot be replayed without a venue"
            )
        return self._markets

    async def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        while self._head is not None:
            number, topic, record = self._head
            self._answers = self._read_until_input()
            event: ExchangeEvent
            if topic.startswith("market."):
                event = record  # a MarketData, validated by the reader
            elif topic.startswith("fill."):
                event = _decode(self.path, number, record, Fill)
            else:
                state: OrderState = _decode(self.path, number, record, OrderState)
                self._track(state)
                event = state
            yield event

    def _track(self, state: OrderState) -> None:
        cid = state.order.client_order_id
        if state.status.is_open:
            self._open[cid] = state
        else:
            self._open.pop(cid, None)

    def _take(self, topic: str, match: Callable[[Any], bool]) -> Record | None:
        for i, (number, record) in enumerate(self._answers):
            if record["topic"] == topic and match(record.get("payload")):
                del self._answers[i]
                return number, record
        return None

    def _failure(self, prefixes: Sequence[str]) -> str | None:
        """The rest of the first recorded kernel.error starting with a prefix."""
        for _, record in self._answers:
            text = record.get("payload")
            if record["topic"] == "kernel.error" and isinstance(text, str):
                for prefix in prefixes:
                    if text.startswith(prefix):
                        return text[len(prefix) :]
        return None

    async def place_order(self, order: Order) -> OrderState:
        cid = order.client_order_id

        def same_id(payload: Any) -> bool:
            inner = payload.get("order") if isinstance(payload, dict) else None
            return isinstance(inner, dict) and inner.get("client_order_id") == cid

        found = self._take("order.placed", same_id)
        if found is not None:
            state: OrderState = _decode(self.path, found[0], found[1], OrderState)
            self._track(state)
            return state
        refused = self._failure([f"exchange refused {cid}: "])
        if refused is not None:
            raise _recorded_error(refused, ExchangeRefused)
        failed = self._failure([f"giving up on {cid} after "])
        if failed is not None:
            raise _recorded_error(failed.partition(": ")[2], ExchangeFailed)
        raise ExchangeRefused(f"the recording holds no answer for order {cid}")

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        failed = self._failure(
            [
                f"could not cancel protective order {client_order_id}: ",
                f"halt could not cancel {client_order_id}: ",
            ]
        )
        if failed is not None:
            raise _recorded_error(failed, ExchangeFailed)
        state = self._open.get(client_order_id)
        if state is None:
            raise OrderNotFound(f"{client_order_id} is not open in the recording")
        return state

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        state = self._open.get(client_order_id)
        if state is None:
            raise OrderNotFound(f"{client_order_id} is not open in the recording")
        return state

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        return [s for s in self._open.values() if symbol is None or s.order.symbol == symbol]

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        return []

    async def fetch_balance(self) -> Balance:
        return Balance(self._currency, self._balance, self._balance, Decimal(0))

    async def fetch_positions(self) -> Sequence[Position]:
        return []

    # The margin account: what the recorded session's venue accepted shows in
    # its decisions (an entry it refused is a recorded rejection), so the
    # playback takes every leverage, mode and margin move as asked.

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        return leverage

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        return None

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        return None

    async def fetch_margin_positions(self) -> Sequence[Any]:
        """What the recorded session's margin desk read at this point (its
        ``exchange.margin`` record); a recorded failure fails again."""
        found = self._take(MARGIN_TOPIC, lambda payload: isinstance(payload, dict))
        if found is None:
            raise ExchangeFailed("the recording holds no margin answer here")
        number, record = found
        payload = record["payload"]
        if payload.get("error"):
            raise ExchangeFailed(str(payload["error"]))
        try:
            return [from_record(row) for row in payload.get("rows") or ()]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{self.path}:{number}: {MARGIN_TOPIC}: {exc}") from None
