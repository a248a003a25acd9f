"""The paper stream of an async feed (a live feed, :mod:`bot4.feeds`).

The same events in the same order as the file path (:mod:`bot4_paper.exchange`),
but the next tick is awaited: the engine's outbox is drained first, then the
feed is asked, then the tick is matched against resting orders. A separate
class so the file path keeps its synchronous ``next()`` and pays nothing for
this one. Waiting for the feed is the checkpoint (a live feed sleeps between
polls), so no extra one is taken.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING

from bot4.contracts import ExchangeEvent
from bot4.errors import ConfigError
from bot4.model import MarketData
from bot4_paper.exchange import _Stream

if TYPE_CHECKING:
    from bot4_paper.exchange import PaperExchange


class LiveStream(_Stream):
    """``PaperExchange.stream`` over an async iterator of ticks."""

    def __init__(
        self,
        exchange: PaperExchange,
        wanted: frozenset[str],
        ticks: AsyncIterator[MarketData],
        resume: datetime | None = None,
    ) -> None:
        super().__init__(exchange, wanted, iter(()), resume)
        self._live = ticks

    def __aiter__(self) -> LiveStream:
        return self

    async def __anext__(self) -> ExchangeEvent:
        buffer = self._buffer
        if buffer:
            return buffer.popleft()
        engine = self._exchange.engine
        while True:
            if engine._outbox:
                buffer.extend(engine.drain())
                return buffer.popleft()
            if self._done or self._exchange._closed:
                raise StopAsyncIteration
            try:
                tick = await self._live.__anext__()
            except StopAsyncIteration:
                self._done = True
                continue  # one last drain, then stop
            if not isinstance(tick, MarketData):
                raise ConfigError(f"paper: the feed yielded {type(tick).__name__}, not MarketData")
            if self._resume is not None and tick.timestamp <= self._resume:
                continue
            events = engine.on_tick(tick)
            wanted = not self._wanted or tick.symbol in self._wanted
            if events:
                buffer.extend(events)
                if wanted:
                    buffer.append(tick)
                return buffer.popleft()
            if wanted:
                return tick

    def poll(self) -> ExchangeEvent | None:
        """Only what is buffered: the next tick of a live feed is awaited."""
        return self._buffer.popleft() if self._buffer else None

    async def aclose(self) -> None:
        self._done = True
        aclose = getattr(self._live, "aclose", None)
        if aclose is not None:
            await aclose()
