"""Tell a person when something needs them: notifier plugins and their dispatcher.

A ``notifiers`` plugin registers a factory (:func:`bot4.hookspecs.register_notifiers`);
the factory reads its own configuration (a webhook URL from the environment or
a secrets file) and returns a :class:`Notifier`, or None when it is not
configured, so an installed but unconfigured notifier costs nothing.

:class:`NotifyService` is the session service that feeds them. It subscribes
to the bus topics that need a person and turns them into
:class:`Notification` objects:

==================  ==========================================================
``breaker_trip``    ``risk.action`` of kind ``trip_breaker``; ``shared.breaker``
                    trips (another process tripped the shared breaker)
``liquidation``     ``risk.action`` ``emergency_close`` / ``reduce_position``
                    (the policy acts on a position near liquidation)
``add_margin``      ``risk.action`` ``add_margin`` (bot4 cannot move
                    collateral: a person must)
``kill``            ``kernel.halted`` by the kill switch
``halt``            ``kernel.halted`` for any other reason
``session_end``     the kernel's run is over (data ended, a stop, a signal)
==================  ==========================================================

Never blocking the decision path: the bus subscription drops its oldest event
rather than wait (``DROP_OLDEST``), its handler only builds the notification
and offers it to each notifier's bounded queue without waiting, and each
notifier sends from a task of its own under a timeout. What a full queue
refuses is dropped and counted, and so is what the rate limit holds back
(a token bucket per notifier and event kind, ``burst`` at once then one
every ``every`` seconds; the next notification that goes out says how many
were held back). The session-end notification is sent, with whatever
is still queued, after the kernel has stopped, within ``end_timeout`` seconds.

Counts: :attr:`NotifyService.counts` (``{notifier: {outcome: n}}``, outcome
sent | failed | timeout | dropped | rate_limited) and, when the session has
metrics, ``bot4_notifications_total{notifier,outcome}``.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bot4.bus import Backpressure, Event
from bot4.model import RiskAction, RiskActionKind
from bot4.secrets import redact

if TYPE_CHECKING:
    from bot4.session_config import SessionConfig
    from bot4.session_services import SessionContext, SessionService

__all__ = [
    "EVENTS",
    "Notification",
    "Notifier",
    "NotifierFailed",
    "NotifyService",
    "notify_services",
]

log = logging.getLogger("bot4.notify")

EVENTS = ("breaker_trip", "liquidation", "add_margin", "kill", "halt", "session_end")
_TOPICS = ("risk.action", "kernel.halted", "shared.breaker")
# The shared service's kill prefix (bot4.shared.service.KILL_PREFIX), repeated
# here because importing that module pulls in Redis.
KILL_PREFIX = "bot4 kill: "
OUTCOMES = ("sent", "failed", "timeout", "dropped", "rate_limited")
_LIQUIDATION = {RiskActionKind.EMERGENCY_CLOSE, RiskActionKind.REDUCE_POSITION}


@attrs.frozen
class Notification:
    """One message for a person. ``text`` is one or two plain sentences,
    already redacted; ``fields`` are short strings a formatter may show."""

    event: str
    severity: str  # page | warn | info
    title: str
    text: str
    session_id: str
    run_id: str = ""
    at: datetime = attrs.field(factory=lambda: datetime.now(UTC))
    fields: Mapping[str, str] = attrs.field(factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "severity": self.severity,
            "title": self.title,
            "text": self.text,
            "session_id": self.session_id,
            "run_id": self.run_id,
            "at": self.at.isoformat(),
            "fields": dict(self.fields),
        }


class NotifierFailed(Exception):
    """A notifier could not deliver (its message never includes a secret)."""


class Notifier(abc.ABC):
    """Delivers notifications somewhere a person sees them."""

    name: str

    @abc.abstractmethod
    async def send(self, notification: Notification) -> None:
        """Deliver one notification or raise. Called from the notifier's own
        task, one at a time, under a timeout; it may block in a thread."""

    def target(self) -> str:
        """Where it delivers, for logs and listings, with every secret masked."""
        return self.name


NotifierFactory = Callable[[Mapping[str, Any]], Notifier | None]


class _Bucket:
    """A token bucket: ``burst`` at once, then one every ``every`` seconds."""

    def __init__(self, burst: int, every: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.every = every
        self.clock = clock
        self.tokens = float(burst)
        self.last = clock()

    def take(self) -> bool:
        now = self.clock()
        if self.every > 0:
            self.tokens = min(self.burst, self.tokens + (now - self.last) / self.every)
        else:
            self.tokens = math.inf
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Channel:
    """One notifier with its queue, rate limit and counts."""

    def __init__(self, notifier: Notifier, queue: int, bucket: Callable[[], _Bucket]) -> None:
        self.notifier = notifier
        self.name = notifier.name
        self.send, self.receive = trio.open_memory_channel[Notification](queue)
        # One bucket per event kind: a flood of liquidation actions never
        # holds back the breaker trip that follows it.
        self._new_bucket = bucket
        self.buckets: dict[str, _Bucket] = {}
        self.held_back = 0

    def admit(self, event: str) -> bool:
        bucket = self.buckets.get(event)
        if bucket is None:
            bucket = self.buckets[event] = self._new_bucket()
        return bucket.take()


class NotifyService:
    """The session service that feeds every configured notifier."""

    def __init__(
        self,
        notifiers: list[Notifier] | None = None,
        *,
        queue: int = 32,
        burst: int = 5,
        every: float = 12.0,
        timeout: float = 10.0,
        end_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # None: build them from the session's plugins when the service starts.
        self.notifiers = notifiers
        self.queue = queue
        self.burst = burst
        self.every = every
        self.timeout = timeout
        self.end_timeout = end_timeout
        self.clock = clock
        self.counts: dict[str, Counter[str]] = {}
        self.channels: list[_Channel] = []
        self._ctx: SessionContext | None = None
        self._run_id = ""

    # -- building -------------------------------------------------------------------

    @staticmethod
    def from_plugins(ctx: SessionContext) -> list[Notifier]:
        """Every registered notifier whose factory says it is configured."""
        built: list[Notifier] = []
        for name, registered in sorted(ctx.manager.registry.notifiers.items()):
            try:
                notifier = registered.factory({"session_id": ctx.config.session_id})
            except Exception as exc:  # a misconfigured notifier must not stop trading
                log.warning("notifier %s not started: %s", name, redact(f"{exc}"))
                if ctx.kernel.announce is not None:
                    ctx.kernel.announce(redact(f"notifier {name} not started: {exc}"))
                continue
            if notifier is not None:
                built.append(notifier)
        return built

    # -- the session service -----------------------------------------------------------

    async def service(self, ctx: SessionContext, nursery: trio.Nursery) -> None:
        """A :data:`bot4.session.SessionService`."""
        notifiers = self.from_plugins(ctx) if self.notifiers is None else self.notifiers
        if not notifiers:
            return
        self._ctx = ctx
        metrics = ctx.metrics
        self._run_id = getattr(metrics, "run_id", "") if metrics is not None else ""
        for notifier in notifiers:
            channel = _Channel(
                notifier, self.queue, lambda: _Bucket(self.burst, self.every, self.clock)
            )
            self.channels.append(channel)
            self.counts[channel.name] = Counter({o: 0 for o in OUTCOMES})
            if metrics is not None:
                for outcome in OUTCOMES:
                    metrics.count_notification(channel.name, outcome, 0)
            line = f"notifier {channel.name}: {notifier.target()}"
            log.info("%s", redact(line))
            if ctx.kernel.announce is not None:
                ctx.kernel.announce(redact(line))
            nursery.start_soon(self._sender, channel)
        for topic in _TOPICS:
            ctx.bus.subscribe(
                topic,
                self.handle,
                policy=Backpressure.DROP_OLDEST,
                capacity=256,
                name=f"notify.{topic}",
            )

    def _count(self, channel: _Channel, outcome: str) -> None:
        self.counts[channel.name][outcome] += 1
        metrics = self._ctx.metrics if self._ctx is not None else None
        if metrics is not None:
            metrics.count_notification(channel.name, outcome)

    # -- events -> notifications ---------------------------------------------------

    def handle(self, event: Event) -> None:
        """The bus handler: never waits."""
        notification = self.notification_for(event)
        if notification is not None:
            self.offer(notification)

    def notification_for(self, event: Event) -> Notification | None:
        payload = event.payload
        session = self._ctx.config.session_id if self._ctx is not None else ""

        def make(
            kind: str, severity: str, title: str, text: str, fields: Mapping[str, str] = {}
        ) -> Notification:
            return Notification(
                kind, severity, title, redact(text), session, self._run_id, fields=dict(fields)
            )

        if event.topic == "risk.action" and isinstance(payload, RiskAction):
            symbol = payload.symbol or "-"
            fields = {"rule": payload.rule, "symbol": symbol, "kind": payload.kind.value}
            if payload.kind is RiskActionKind.TRIP_BREAKER:
                return make(
                    "breaker_trip",
                    "page",
                    f"bot4 {session}: circuit breaker tripped",
                    f"{payload.reason}. Every new order is refused until `bot4 breaker reset`.",
                    fields,
                )
            if payload.kind is RiskActionKind.ADD_MARGIN:
                return make(
                    "add_margin",
                    "page",
                    f"bot4 {session}: add margin to {symbol}",
                    f"{payload.reason}. bot4 cannot move collateral: add it on the venue.",
                    fields,
                )
            if payload.kind in _LIQUIDATION:
                verb = "closed" if payload.kind is RiskActionKind.EMERGENCY_CLOSE else "reduced"
                return make(
                    "liquidation",
                    "page",
                    f"bot4 {session}: {symbol} {verb} near liquidation",
                    f"{payload.reason} (rule {payload.rule}, fraction {payload.fraction}).",
                    fields,
                )
            return None
        if event.topic == "kernel.halted":
            reason = str(payload)
            if reason.startswith(KILL_PREFIX):
                return make(
                    "kill",
                    "page",
                    f"bot4 {session}: kill switch",
                    f"Trading halted by the kill switch: {reason.removeprefix(KILL_PREFIX)}.",
                )
            return make("halt", "page", f"bot4 {session}: trading halted", f"{reason}.")
        if (
            event.topic == "shared.breaker"
            and isinstance(payload, Mapping)
            and payload.get("action") == "trip"
        ):
            return make(
                "breaker_trip",
                "page",
                f"bot4 {session}: shared circuit breaker tripped",
                f"{payload.get('reason') or 'no reason given'}. Every session sharing it "
                "refuses new orders.",
            )
        return None

    def offer(self, notification: Notification, *, limited: bool = True) -> None:
        """Queue ``notification`` for every notifier, without waiting."""
        for channel in self.channels:
            if limited and not channel.admit(notification.event):
                channel.held_back += 1
                self._count(channel, "rate_limited")
                continue
            held = channel.held_back
            try:
                channel.send.send_nowait(self._noting_held_back(channel, notification))
            except trio.WouldBlock:
                channel.held_back = held  # still to be told
                self._count(channel, "dropped")
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                self._count(channel, "dropped")

    # -- delivery --------------------------------------------------------------------

    @staticmethod
    def _noting_held_back(channel: _Channel, notification: Notification) -> Notification:
        if not channel.held_back:
            return notification
        held, channel.held_back = channel.held_back, 0
        return attrs.evolve(
            notification,
            text=f"{notification.text} ({held} earlier notifications held back by the rate limit.)",
        )

    async def _deliver(self, channel: _Channel, notification: Notification) -> None:
        try:
            with trio.fail_after(self.timeout):
                await channel.notifier.send(notification)
        except trio.TooSlowError:
            self._count(channel, "timeout")
            log.warning("notifier %s timed out after %.0f s", channel.name, self.timeout)
        except Exception as exc:  # a notifier's failure is counted, never raised
            self._count(channel, "failed")
            log.warning("notifier %s failed: %s", channel.name, redact(f"{exc}"))
        else:
            self._count(channel, "sent")

    async def _sender(self, channel: _Channel) -> None:
        try:
            async for notification in channel.receive:
                await self._deliver(channel, notification)
        finally:
            # The kernel's run is over (the nursery is being cancelled): what
            # is queued and the session's end go out, within end_timeout.
            with trio.CancelScope(shield=True), trio.move_on_after(self.end_timeout):
                pending: list[Notification] = []
                while True:
                    try:
                        pending.append(channel.receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
                end = self.session_end()
                if end is not None:
                    pending.append(self._noting_held_back(channel, end))
                for notification in pending:
                    await self._deliver(channel, notification)

    def session_end(self) -> Notification | None:
        ctx = self._ctx
        if ctx is None:
            return None
        kernel = ctx.kernel
        stats = kernel.stats
        book = ctx.tracker.snapshot()
        pnl = book.equity - ctx.tracker.starting_cash
        why = kernel.stop_reason or "the data ended"
        session = ctx.config.session_id
        return Notification(
            "session_end",
            "info",
            f"bot4 {session}: session ended",
            redact(
                f"Session {session} ended ({why}): {stats.ticks} ticks, {stats.approved} "
                f"orders approved, {stats.rejected} rejected, {stats.fills} fills, "
                f"equity {book.equity:.2f}, PnL {pnl:+.2f}"
                + (f", halted: {kernel.halted}" if kernel.halted else "")
                + "."
            ),
            session,
            self._run_id,
            fields={
                "ticks": str(stats.ticks),
                "fills": str(stats.fills),
                "equity": f"{book.equity:.2f}",
                "pnl": f"{pnl:+.2f}",
            },
        )


def notify_services(config: SessionConfig) -> list[SessionService]:
    """For :func:`bot4.session.default_services`: the notifier dispatcher (it
    does nothing when no notifier plugin is configured)."""
    return [NotifyService().service]
