"""The kernel's event loop: every event of the stream, in order, and the
tick path, the hottest code of a session.

A tick is handled as plain calls when nothing in it waits, which is most
ticks: no coroutine and no method call of the kernel's own, the bindings it
needs held as locals of the loop (:meth:`EventLoop.run`). What the tick may
wait on decides how far that goes:

* known before the tick starts (the pacer, kernel-held stops, the reload
  poll, a margin read due, a shadow policy, a strategy without
  ``on_market_data_sync``): the whole tick is :meth:`EventLoop.tick`, the
  general path, every step awaited where it may wait;
* found on the way (a full BLOCK subscriber, a pack or the policy failing,
  a risk action, a signal, a strategy failing): the coroutine of the rest of
  the general path takes over at that step, so the order of the steps is
  always :meth:`EventLoop.tick`'s.

The loop's bindings are made again after anything awaited: only an await
lets another task change what they hold (the strategies, the policy after
a hot reload, the kernel-held stops, the margin desk's next read).
``tests/test_kernel_tick_path.py`` holds the two paths to the same events.

Fills and order updates go to the kernel (:class:`bot4.kernel.Kernel`),
which owns everything else: the orders, the risk actions, the journal. This
module knows the kernel only through its attributes; the kernel imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import trio

from bot4.contracts import RiskRules, sync_hook
from bot4.errors import Bot4Error
from bot4.model import Fill, MarketData, OrderState, RiskAction, Signal

if TYPE_CHECKING:
    from bot4.kernel import Kernel
    from bot4.kernel_types import Tracker

__all__ = ["RELOAD_POLL_TICKS", "SHADOW_TOPIC", "EventLoop"]

# The rule files are polled for a hot reload every this many ticks (and at
# most every reload_every seconds: Kernel._maybe_reload).
RELOAD_POLL_TICKS = 256
_NEVER = 2**63  # a margin read never due (ns)
# Where a shadow policy's disagreements are published (not ``risk.*``: they
# are observations, not decisions; a replay compares decisions only).
SHADOW_TOPIC = "shadow.disagreement"


def _unwatched(tick: MarketData, book: Tracker, now_ns: int) -> list[RiskAction]:
    """The tracked-tick hook bound for a policy without one (the tick path is
    then not taken: the general path asks the policy's on_market_data)."""
    return []


class EventLoop:
    """The loop of one :class:`~bot4.kernel.Kernel`'s run (see the module)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        # The policy's tracked-tick hook, looked up once per policy object
        # (``policy`` is a public attribute: rebound if it is replaced).
        self._tracked_of: object = None
        self._tracked: Callable[[MarketData, Tracker, int], list[RiskAction]] | None = None
        # Each strategy's on_market_data_sync (None: it has none), bound once
        # per strategies tuple; _sync_hooks is None unless every one has it.
        self._hooks_of: object = None
        self._strategy_hooks: tuple[Callable[[MarketData], Sequence[Signal]] | None, ...] = ()
        self._sync_hooks: tuple[Callable[[MarketData], Sequence[Signal]], ...] | None = None

    async def run(self, symbols: Sequence[str]) -> None:
        """Every event of the stream, in order, until it ends or a stop is
        asked; a tick as plain calls where it can be (the module's docstring)."""
        kernel = self.kernel
        events = kernel.exchange.stream(symbols)
        # stop_requested() inlined in both tests (the flag is stop_reason). The
        # second reads it through another name: the flag changes while we
        # wait, and mypy would keep kernel.stop_reason narrowed to None there.
        next_event = events.__anext__
        # A stream may also offer poll(): the next event when it is ready
        # without waiting, else None (bot4_paper's replay: most ticks). A
        # plain call then takes the place of a coroutine per event; None
        # sends the loop to the await, which waits, checkpoints or ends.
        poll = getattr(events, "poll", None)
        flags = kernel
        stats = kernel.stats
        # The tick path's bindings (see the docstring); bound is False until
        # they are made, and after anything awaited.
        bound = False
        fast = False
        hooks: tuple[Callable[[MarketData], Sequence[Signal]], ...] = ()
        packs: tuple[RiskRules, ...] = ()
        tracker = kernel.tracker
        post = kernel.bus.post
        topics = kernel._market_topics
        last = kernel._last
        tracked: Callable[[MarketData, Tracker, int], list[RiskAction]] = _unwatched
        due = 0
        try:
            while kernel.stop_reason is None:
                event = None
                if poll is not None:
                    try:
                        event = poll()
                    except Bot4Error as exc:
                        kernel.stop_error = exc
                        kernel.stop_reason = str(exc)
                        return
                if event is None:
                    bound = False
                    kernel._waiting = True
                    try:
                        event = await next_event()
                    except StopAsyncIteration:
                        return
                    except Bot4Error as exc:  # a bad data row, a venue gone: end as a stop does
                        kernel.stop_error = exc
                        kernel.stop_reason = str(exc)
                        return
                    finally:
                        kernel._waiting = False
                    if flags.stop_reason is not None:
                        return  # asked to stop while waiting: do not start on this event
                if not isinstance(event, MarketData):
                    bound = False
                    if isinstance(event, Fill):
                        await kernel._fill(event)
                    elif isinstance(event, OrderState):
                        await kernel._order_update(event)
                    continue
                if not bound:
                    bound = True
                    fast, hooks, packs, tracked, due = self._bindings()
                    tracker = kernel.tracker
                    post = kernel.bus.post
                    topics = kernel._market_topics
                    last = kernel._last
                now = event.ts_ns
                ticks = stats.ticks + 1
                if not fast or not ticks % RELOAD_POLL_TICKS or now >= due:
                    bound = False
                    await self.tick(event)
                    continue
                # _head, inlined.
                stats.ticks = ticks
                kernel._now_ns = now
                symbol = event.symbol
                last[symbol] = event
                tracker.mark(symbol, event.last)
                topic = topics.get(symbol)
                if topic is None:
                    topic = topics[symbol] = f"market.{symbol}"
                rest: Coroutine[Any, Any, None] | None = None
                waiting = post(topic, event, ts=now)
                if waiting is not None:
                    rest = self._after_post(event, waiting)
                else:
                    for pack in packs:
                        try:
                            pack.on_market_data(event)
                        except Exception as exc:  # reported by the rest, as tick() does
                            rest = self._packs(event, pack, exc)
                            break
                if rest is None:
                    try:
                        actions = tracked(event, tracker, now)
                    except Exception as exc:  # a blind risk monitor: the rest decides
                        rest = self._policy_failed(event, exc)
                    else:
                        if actions:
                            rest = self._acted(event, actions)
                        else:
                            first = 0
                            for hook in hooks:
                                try:
                                    signals = hook(event)
                                except Exception as exc:  # counted and reported by the rest
                                    rest = self._strategies(event, first, exc)
                                    break
                                if signals:
                                    rest = self._strategies(event, first, signals)
                                    break
                                first += 1  # noqa: SIM113 - enumerate: an object a tick; first is read only on a signal
                if rest is not None:
                    bound = False
                    await rest
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    def _bindings(
        self,
    ) -> tuple[
        bool,
        tuple[Callable[[MarketData], Sequence[Signal]], ...],
        tuple[RiskRules, ...],
        Callable[[MarketData, Tracker, int], list[RiskAction]],
        int,
    ]:
        """What the tick path of :meth:`run` binds: whether a tick may take it
        at all, the strategies' synchronous hooks, the packs, the policy's
        tracked-tick hook and the time of the margin desk's next read."""
        kernel = self.kernel
        hooks = self._sync_hooks if self._hooks_of is kernel.strategies else self._bind_strategies()
        tracked = self._tracked_hook()
        due = kernel.margin.due_ns
        fast = (
            hooks is not None
            and tracked is not None
            and kernel._on_tick is None
            and kernel.shadow is None
            and not kernel.protection.levels
        )
        return (
            fast,
            hooks or (),
            kernel.packs,
            _unwatched if tracked is None else tracked,  # fast is False then: never called
            _NEVER if due is None else due,
        )

    def _tracked_hook(self) -> Callable[[MarketData, Tracker, int], list[RiskAction]] | None:
        """The policy's ``on_tracked_tick``, looked up again only when the
        kernel's policy is another object (a public attribute)."""
        policy = self.kernel.policy
        if policy is not self._tracked_of:
            self._tracked_of = policy
            self._tracked = getattr(policy, "on_tracked_tick", None)
        return self._tracked

    def _bind_strategies(self) -> tuple[Callable[[MarketData], Sequence[Signal]], ...] | None:
        """Each strategy's synchronous tick hook, bound once per strategies
        tuple (a public attribute: rebound if it is replaced); None in
        ``_sync_hooks`` when one of them has none."""
        kernel = self.kernel
        self._hooks_of = kernel.strategies
        self._strategy_hooks = tuple(sync_hook(s) for s in kernel.strategies)
        hooks = self._strategy_hooks
        plain = tuple(hook for hook in hooks if hook is not None)
        self._sync_hooks = plain if len(plain) == len(hooks) else None
        return self._sync_hooks

    def _head(self, tick: MarketData) -> Awaitable[None] | None:
        """The tick's first steps: counted, the clock, the book marked and the
        tick published; the wait for a full BLOCK subscriber, if any."""
        kernel = self.kernel
        kernel.stats.ticks += 1
        symbol = tick.symbol
        kernel._now_ns = now = tick.ts_ns
        kernel._last[symbol] = tick
        kernel.tracker.mark(symbol, tick.last)
        topic = kernel._market_topics.get(symbol)
        if topic is None:
            topic = kernel._market_topics[symbol] = f"market.{symbol}"
        return kernel.bus.post(topic, tick, ts=now)

    async def tick(self, tick: MarketData) -> None:
        # The general tick, every step awaited where it may wait (the pacer,
        # kernel-held stops, a risk action, the strategies' async hooks);
        # run() handles the same tick as plain calls when nothing waits.
        waiting = self._head(tick)
        await self._after_post(tick, waiting)

    async def _after_post(self, tick: MarketData, waiting: Awaitable[None] | None) -> None:
        kernel = self.kernel
        if waiting is not None:
            await waiting
        if kernel.protection.levels:
            await kernel.protection.on_tick(tick)  # kernel-held stops, before anything else
        if kernel._on_tick is not None:
            # Progress display, real-time pacing. A stop cuts the pacer's wait
            # short and the tick is still handled whole: a recording never
            # ends in the middle of a tick, and a stopped session replays.
            with trio.CancelScope() as kernel._pacing:
                await kernel._on_tick(tick)
            kernel._pacing = None
        await self._packs(tick)

    async def _packs(
        self, tick: MarketData, failed: RiskRules | None = None, exc: Exception | None = None
    ) -> None:
        """The packs (after ``failed``, whose error ``exc`` is reported first),
        the reload poll, the margin read, the policy, the strategies."""
        kernel = self.kernel
        packs = kernel.packs
        if failed is not None and exc is not None:
            # The pack's facts are now suspect; its next facts() call
            # decides (and a raise there rejects the order).
            await kernel._error(f"risk pack {failed.name} failed on market data", exc)
            packs = packs[next(i for i, p in enumerate(packs) if p is failed) + 1 :]
        for pack in packs:
            try:
                pack.on_market_data(tick)
            except Exception as error:  # a plugin error must not stop the session
                await kernel._error(f"risk pack {pack.name} failed on market data", error)
        now = kernel._now_ns
        if kernel.stats.ticks % RELOAD_POLL_TICKS == 0:
            reloaded = await kernel._maybe_reload()
            if reloaded is not None and kernel.on_reload is not None:
                await kernel.on_reload(reloaded)
        due = kernel.margin.due_ns
        if due is not None and now >= due:
            # The venue's margin figures, at a bounded rate (bot4.margin_desk).
            await kernel.margin.refresh(now)
        # RiskPolicy.on_tracked_tick builds no Portfolio snapshot for a tick of
        # a symbol not held (most ticks); other policies get on_market_data.
        # The same steps as _monitor, inlined: no awaits when nothing is asked.
        policy = kernel.policy
        tracked = self._tracked_hook()
        tracker = kernel.tracker
        try:
            if tracked is not None:
                actions = tracked(tick, tracker, now)
            else:
                actions = policy.on_market_data(tick, tracker.snapshot(), now)
        except Exception as error:  # a blind risk monitor: stop opening risk
            await self._policy_failed(tick, error)
        else:
            await self._acted(tick, actions)

    async def _policy_failed(self, tick: MarketData, exc: Exception) -> None:
        kernel = self.kernel
        await kernel._monitor_failed(exc)
        await self._strategies(tick)

    async def _acted(self, tick: MarketData, actions: list[RiskAction]) -> None:
        kernel = self.kernel
        now = kernel._now_ns
        for action in actions:
            await kernel._act(action)
        if kernel.shadow is not None:
            found = kernel.shadow.tick(tick, kernel.tracker, now, actions)
            if found is not None:
                await kernel.bus.publish(SHADOW_TOPIC, found.as_dict(), ts=now)
        await self._strategies(tick)

    async def _strategies(
        self,
        tick: MarketData,
        first: int = 0,
        outcome: Sequence[Signal] | Exception | None = None,
    ) -> None:
        """The strategies from index ``first`` on; ``outcome`` is what that one
        already returned (or raised) on this tick, from its synchronous hook.
        An empty answer, None included, is no signal (as on the tick path); an
        answer that is not a sequence is the strategy's error, reported."""
        kernel = self.kernel
        if self._hooks_of is not kernel.strategies:
            self._bind_strategies()
        strategies, hooks = kernel.strategies, self._strategy_hooks
        stats = kernel.stats
        for k in range(first, len(strategies)):
            strategy = strategies[k]
            answer: Any = outcome if k == first else None
            if answer is None:
                hook = hooks[k]
                try:
                    answer = hook(tick) if hook is not None else await strategy.on_market_data(tick)
                except Exception as exc:  # a plugin error must not stop the session
                    answer = exc
            if not answer:
                continue
            if not isinstance(answer, Exception):
                if not isinstance(answer, list | tuple):
                    answer = TypeError(
                        f"returned {type(answer).__name__}, not a list or tuple of Signal"
                    )
                else:
                    odd = next((x for x in answer if not isinstance(x, Signal)), answer)
                    if odd is not answer:
                        answer = TypeError(
                            f"returned {type(odd).__name__} among its signals, not a Signal"
                        )
            if isinstance(answer, Exception):
                stats.strategy_errors += 1
                await kernel._error(f"strategy {strategy.name} failed on {tick.symbol}", answer)
                continue
            for signal in answer:
                await kernel._signal(signal)
