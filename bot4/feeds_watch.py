"""A live feed inside a session: its ticks to the paper exchange, its silence
watched, and the session's end by the clock.

:class:`FeedWatch` sits between a :class:`~bot4.feeds.Feed` and the paper
exchange (it is the exchange's ``feed``: an async iterator of ticks). It
notes when each symbol last brought *new* data, on the monotonic clock of
this machine (the venue's timestamps may be late, early or historical, as
on the fake venue: they are not trusted for this).

**A stale feed halts new entries.** A symbol is stale when no new data for
it came for ``stale_after`` seconds (default 30; ``--stale-after``), counted
from the feed's connect for a symbol not seen yet. While it is:

- every order for it that is not reduce-only is refused by the gate check
  ``stale-feed`` (a :class:`~bot4.model.Rejected`, published on
  ``risk.rejected`` and counted by rule like any other); the check measures
  the age when the order is asked, so no watchdog period lets one through;
  exits and protective stops (reduce-only) still go;
- the watchdog (a task of the session, every ``min(1, stale_after / 4)``
  seconds) says so once: ``feed.stale`` on the bus (feed, symbols, age,
  limit) and one line on stderr.

When the symbol's data comes back the first new tick clears it before the
tick is handled: ``feed.resumed`` on the bus, one line, and entries resume.
``bot4_feed_age_seconds{symbol}`` (:mod:`bot4.metrics`) shows the age
meanwhile.

:func:`stop_after` is the service behind ``--duration`` and ``--until``: it
asks the kernel to stop (:meth:`bot4.kernel.Kernel.request_stop`, what a
SIGINT does) when the time is up, so the session ends as if its data had
run out: summary, journal and recording written, exit 0.

A feed that raises something other than a :class:`~bot4.errors.Bot4Error`
(a plugin's bug) ends the session the same clean way, as an
ExchangeUnavailable naming the feed (``bot4 run`` exits 1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from bot4.errors import Bot4Error, ExchangeUnavailable
from bot4.feeds import DEFAULT_STALE_AFTER, Feed, FeedConfig
from bot4.model import MarketData, Order, Portfolio, Rejected
from bot4.secrets import redact

if TYPE_CHECKING:
    from bot4.session_services import SessionContext, SessionService

__all__ = ["STALE_RULE", "FeedWatch", "StaleFeedCheck", "stop_after"]

STALE_RULE = "stale-feed"
STALE_TOPIC = "feed.stale"
RESUMED_TOPIC = "feed.resumed"

log = logging.getLogger("bot4.feeds")


class FeedWatch(AsyncIterator[MarketData]):
    """A feed's ticks, with each symbol's age (see the module docstring)."""

    def __init__(
        self,
        feed: Feed,
        config: FeedConfig,
        *,
        stale_after: float = DEFAULT_STALE_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.feed = feed
        self.config = config
        self.stale_after = stale_after
        self._clock = clock
        self._seen: dict[str, float] = {}  # symbol -> clock() of its last new tick
        self._since = clock()  # connect time: the age of a symbol not seen yet
        self.stale: dict[str, float] = {}  # stale symbol -> clock() when it was said
        self.stale_count = 0  # times a symbol went stale
        self._ticks: AsyncIterator[MarketData] | None = None
        self._ctx: SessionContext | None = None

    @property
    def period(self) -> float:
        """Seconds between two looks of the watchdog."""
        return min(1.0, self.stale_after / 4)

    def age(self, symbol: str) -> float:
        """Seconds since ``symbol`` last brought new data (since connect if never)."""
        return self._clock() - self._seen.get(symbol, self._since)

    # -- the ticks ------------------------------------------------------------------------

    def __aiter__(self) -> FeedWatch:
        return self

    async def __anext__(self) -> MarketData:
        if self._ticks is None:
            self._ticks = self.feed.ticks()
        try:
            tick = await self._ticks.__anext__()
        except (StopAsyncIteration, Bot4Error):
            raise
        except Exception as exc:  # a feed plugin may raise anything: end the session cleanly
            raise ExchangeUnavailable(
                f"feed {self.config.spec} failed: {type(exc).__name__}: {redact(str(exc))}"
            ) from exc
        now = self._clock()
        previous = self._seen.get(tick.symbol, self._since)
        self._seen[tick.symbol] = now
        if self.stale and tick.symbol in self.stale:
            await self._resumed(tick.symbol, now - previous)
        return tick

    async def aclose(self) -> None:
        ticks, self._ticks = self._ticks, None
        aclose = getattr(ticks, "aclose", None)
        if aclose is not None:
            await aclose()

    # -- the session service ----------------------------------------------------------------

    async def service(self, ctx: SessionContext, nursery: trio.Nursery) -> None:
        """Connect the feed, add the ``stale-feed`` gate check, start the
        watchdog (which closes the feed when the session's nursery ends)."""
        self._ctx = ctx
        try:
            await self.feed.connect()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.feed.close()
            raise
        self._since = self._clock()
        ctx.gate.checks = (*ctx.gate.checks, StaleFeedCheck(self))
        nursery.start_soon(self._watch)

    async def _watch(self) -> None:
        try:
            while True:
                await trio.sleep(self.period)
                newly = [
                    s
                    for s in self.config.symbols
                    if s not in self.stale and self.age(s) > self.stale_after
                ]
                if newly:
                    await self._went_stale(newly)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()
                await self.feed.close()

    async def _went_stale(self, symbols: list[str]) -> None:
        now = self._clock()
        for symbol in symbols:
            self.stale[symbol] = now
        self.stale_count += len(symbols)
        age = max(self.age(s) for s in symbols)
        self._say(
            f"feed {self.config.spec}: no new data for {age:.0f}s from {', '.join(symbols)} "
            f"(stale after {self.stale_after:g}s): new entries halted until it resumes"
        )
        await self._publish(
            STALE_TOPIC,
            {
                "feed": self.config.spec,
                "symbols": symbols,
                "age_seconds": round(age, 3),
                "stale_after": self.stale_after,
            },
        )

    async def _resumed(self, symbol: str, gap: float) -> None:
        del self.stale[symbol]
        self._say(
            f"feed {self.config.spec}: {symbol} data again after {gap:.0f}s: new entries resume"
        )
        await self._publish(
            RESUMED_TOPIC,
            {"feed": self.config.spec, "symbol": symbol, "gap_seconds": round(gap, 3)},
        )

    def _say(self, line: str) -> None:
        announce = self._ctx.kernel.announce if self._ctx is not None else None
        if announce is not None:
            announce(line)
        else:
            log.warning("%s", line)

    async def _publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self._ctx is not None:
            kernel = self._ctx.kernel
            await self._ctx.bus.publish(topic, payload, ts=kernel.now_ns)


class StaleFeedCheck:
    """The gate check: an entry in a symbol whose feed is stale is refused."""

    name = STALE_RULE

    def __init__(self, watch: FeedWatch) -> None:
        self.watch = watch

    async def check(self, order: Order, portfolio: Portfolio) -> Rejected | None:
        if order.reduce_only:
            return None  # taking risk off never waits for data
        watch = self.watch
        age = watch.age(order.symbol)
        if age <= watch.stale_after:
            return None
        return Rejected(
            rule=STALE_RULE,
            reason=f"feed {watch.config.spec}: no new {order.symbol} data for {age:.1f}s "
            f"(stale after {watch.stale_after:g}s): new entries halted",
            values={"feed_age_seconds": round(age, 3), "stale_after": watch.stale_after},
            order=order,
        )


def stop_after(seconds: float, reason: str) -> SessionService:
    """A session service that stops the session ``seconds`` after it starts."""

    async def service(ctx: SessionContext, nursery: trio.Nursery) -> None:
        async def stop() -> None:
            await trio.sleep(seconds)
            ctx.kernel.request_stop(reason)

        nursery.start_soon(stop)

    return service
