"""The harness: the little a conformance check needs beyond the Exchange interface.

The checks drive an exchange only through :class:`bot4.contracts.Exchange` plus
a :class:`Harness` the plugin author provides. The harness does two things the
interface cannot: make the venue see a quote the kit chose (so fills happen at
known prices) and, optionally, drop and restore the link to the venue.

* :class:`FeedHarness` serves every exchange built on a market-data feed, as
  the paper exchange and anything wrapping its engine are: the factory gets a
  feed the kit appends to, and ``tick()`` reads the exchange's own
  ``stream()`` until the tick comes out (everything the tick caused comes out
  before it).
* A networked plugin (say, ccxt against a local fake venue backed by the paper
  engine) writes its own harness: ``tick()`` posts the quote to the fake
  server and waits until the plugin's stream has delivered it, and
  ``disconnect()``/``reconnect()`` stop and restart the server.
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import trio

from bot4.contracts import Exchange, ExchangeEvent
from bot4.model import MarketData

__all__ = ["ConformanceError", "ExchangeFactory", "FeedHarness", "Harness"]

ExchangeFactory = Callable[[Iterable[MarketData]], Exchange]

# How long the kit waits for the venue before calling it hung. Generous: a
# networked harness may go through a real socket.
STEP_TIMEOUT = 10.0


class ConformanceError(AssertionError):
    """A plugin broke bot4's contract. The message says what was seen and what
    to change. An AssertionError, so pytest reports it as a test failure."""


class Harness(abc.ABC):
    """What the kit needs beyond the Exchange interface (see module docstring).

    ``symbol`` is the market the checks trade; it must be in
    ``fetch_markets()``. Quotes are built around ``base_price``.
    """

    exchange: Exchange
    symbol: str = "BTC-USDT"
    base_price: int = 100

    async def start(self) -> None:
        """Bring the venue up; the default connects the exchange."""
        await self.exchange.connect()

    async def aclose(self) -> None:
        """Tear everything down; the default closes the exchange."""
        await self.exchange.close()

    @abc.abstractmethod
    async def tick(self, md: MarketData) -> list[ExchangeEvent]:
        """Make the venue see ``md`` and return once it has matched its open
        orders against it, with the events the exchange's stream delivered
        meanwhile (fills, order updates, then ``md`` itself)."""

    @property
    def can_disconnect(self) -> bool:
        """Whether :meth:`disconnect` is implemented; checks that need it are
        skipped (with this reason) otherwise."""
        return False

    async def disconnect(self) -> None:
        """Drop the link: until :meth:`reconnect`, exchange calls must fail
        with ExchangeFailed (ExchangeUnavailable, ExchangeTimeout). Harnesses
        that can do it override this and :attr:`can_disconnect`; the kit never
        calls it when ``can_disconnect`` is False."""
        raise RuntimeError(f"{type(self).__name__} cannot simulate a disconnect")

    async def reconnect(self) -> None:
        """Restore the link dropped by :meth:`disconnect`."""
        raise RuntimeError(f"{type(self).__name__} cannot simulate a disconnect")


class _Feed(Iterable[MarketData]):
    """A feed the harness appends to. Its iterator ends when empty, which is
    never the case when the exchange reads it: the harness appends a tick and
    then reads the stream only until that tick comes out."""

    def __init__(self) -> None:
        self.queue: deque[MarketData] = deque()

    def __iter__(self) -> Iterator[MarketData]:
        return self

    def __next__(self) -> MarketData:
        if not self.queue:
            raise StopIteration
        return self.queue.popleft()


class FeedHarness(Harness):
    """Harness for exchanges built on a market-data feed:
    ``factory(feed) -> Exchange``. The exchange must read the feed lazily from
    ``stream()`` and yield each tick after the events it caused, as
    :class:`bot4_paper.PaperExchange` does."""

    def __init__(
        self, factory: ExchangeFactory, *, symbol: str = "BTC-USDT", base_price: int = 100
    ) -> None:
        self._feed = _Feed()
        self.exchange = factory(self._feed)
        if not isinstance(self.exchange, Exchange):
            raise ConformanceError(
                f"the factory returned {type(self.exchange).__name__}, not a "
                "bot4.contracts.Exchange: subclass it so the kernel can rely on the interface"
            )
        self.symbol = symbol
        self.base_price = base_price
        self._stream: AsyncIterator[ExchangeEvent] | None = None

    async def tick(self, md: MarketData) -> list[ExchangeEvent]:
        self._feed.queue.append(md)
        if self._stream is None:
            self._stream = aiter(self.exchange.stream([]))
        stream = self._stream
        events: list[ExchangeEvent] = []
        while True:
            with trio.move_on_after(STEP_TIMEOUT) as scope:
                try:
                    event = await anext(stream)
                except StopAsyncIteration:
                    self._stream = None
                    raise ConformanceError(
                        f"{self.exchange.name}: stream() ended before yielding the tick "
                        f"{md.symbol} @ {md.timestamp.isoformat()} it was fed. The stream must "
                        "yield every tick of the feed (after the events it caused)."
                    ) from None
            if scope.cancelled_caught:
                raise ConformanceError(
                    f"{self.exchange.name}: stream() yielded nothing for {STEP_TIMEOUT:g} s "
                    f"after the tick {md.symbol} @ {md.timestamp.isoformat()} was fed. Read the "
                    "feed lazily from stream() and yield each tick after its events."
                )
            events.append(event)
            if (
                isinstance(event, MarketData)
                and event.symbol == md.symbol
                and event.timestamp == md.timestamp
            ):
                return events
