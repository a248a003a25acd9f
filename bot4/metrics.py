"""Prometheus metrics for a running session, served on ``/metrics``.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry`
(never the process-global one), so several sessions and tests in one process
never clash. It is a session service (:meth:`Metrics.service`): given to
:func:`bot4.session.run_session` as ``metrics=``, it

* subscribes to ``order.#``, ``fill.#`` and ``kernel.#`` (``DROP_OLDEST``: an
  observer must never slow the kernel; what it loses is counted in
  ``bot4_bus_dropped_events_total{subscriber="metrics.*"}``). Market data is
  not subscribed to, so metrics cost nothing per tick;
* sets ``kernel.decision_observer`` to time every gate decision;
* samples the book, the breaker, the kill switch, the feed, the kernel's
  counters and the bus every ``sample_every`` seconds (and once more when the
  session ends) from the trio thread. The HTTP server's thread only reads
  prometheus-client objects, which are thread-safe; it never touches the
  tracker or the bus;
* wraps ``kernel.exchange`` in :class:`~bot4.exchange_metrics.InstrumentedExchange`,
  so every request to the venue is counted by outcome and timed.

The book's gauges (equity, PnL, exposure, ...) have no sample at all until the
book has its first mark: a scrape before the first price reads "no data", not
an equity of 0. The feed's age is measured in wall-clock seconds since the
sampler last saw a symbol's latest tick change (so a replay at any speed and a
live feed read the same way), to the sampler's resolution (``sample_every``).

Hooks for other parts of bot4, all cheap, synchronous and safe to call from
the trio thread: :meth:`Metrics.observe_journal_write` (one durable write),
:meth:`Metrics.set_journal_queue` (records waiting and the age of the oldest),
:meth:`Metrics.count_journal_failure`, :meth:`Metrics.observe_exchange_request`
and :meth:`Metrics.observe_exchange_retry`.

Counts the kernel keeps itself (decisions by rule, risk actions, breaker
trips, ticks) are taken from :class:`~bot4.kernel_types.KernelStats` as deltas, at
each sample and on every order and fill event, so they are exact even when the
bus drops events for this observer, and never lag the fills they led to.

Label values are bounded: symbols, rules, exchanges, strategies and
subscriber names pass through until a fixed number of distinct values has been
seen, after which new ones are reported as ``other``. Order ids, fill ids and
prices are never labels.

Metric names (all prefixed ``bot4_``)::

    decisions_total{rule,outcome}            outcome approved|rejected; rule "none" if approved
    decision_latency_seconds{outcome}        histogram, time spent in the risk gate
    orders_total{exchange,symbol,type}       orders the exchange accepted
    fills_total{exchange,symbol,side}        fills
    fill_notional_total{exchange,symbol}     quote value filled
    cancels_total{exchange,symbol}           orders that ended cancelled
    exchange_refusals_total                  orders the exchange refused
    risk_actions_total{kind}                 ladder and breaker actions
    breaker_trips_total, breaker_tripped     trips, and 1 while tripped
    ticks_total, signals_total, strategy_errors_total, kernel_errors_total
    rule_reloads_total{result}               ok | failed
    equity, cash, pnl, realized_pnl, unrealized_pnl, fees, peak_equity
    drawdown_ratio, gross_exposure, net_exposure, exposure{symbol},
    leverage, margin_used, open_positions
    bus_events_total, bus_queue_depth{subscriber},
    bus_dropped_events_total{subscriber}, bus_handler_errors_total{subscriber}
    plugin_load_failures
    journal_write_seconds (histogram), journal_queue_depth, journal_lag_seconds,
    journal_write_failures_total
    exchange_requests_total{venue,method,outcome}   outcome ok|refused|rate_limited|
                                                    timeout|unreachable|error
    exchange_request_seconds{venue,method}   histogram
    exchange_retries_total{venue,method,outcome}     retries inside a plugin
    feed_age_seconds{symbol}, feed_last_tick_timestamp_seconds{symbol}
    breaker_info{state,reason}               state armed|tripped, value 1
    halted, kill_switch                      1 while trading is halted / by the kill switch
    session_info{session_id,run_id,run,exchange}   run_id is new for every process
                                             run; session_id and run (1, 2, ... from
                                             the journal) are kept across a resume
    session_start_time_seconds, session_running, build_info{version}
    notifications_total{notifier,outcome}    sent|failed|timeout|dropped|rate_limited
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

import bot4
from bot4.bus import Backpressure, Bus, Event, Subscription
from bot4.exchange_metrics import METHODS, OUTCOMES, InstrumentedExchange
from bot4.kernel_types import KernelStats
from bot4.metrics_server import DEFAULT_ADDR, MetricsServer
from bot4.model import Fill, OrderState, OrderStatus, RiskActionKind
from bot4.secrets import redact

if TYPE_CHECKING:
    from bot4.session_services import SessionContext

__all__ = ["DEFAULT_ADDR", "Metrics", "MetricsServer"]

OTHER = "other"
APPROVED_RULE = "none"

# The gate's own work is tens of microseconds; async checks (a Redis budget)
# take milliseconds and time out at the gate's deadline (2 s by default).
DECISION_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    0.5,
    2.5,
)
# A journal write is a local fsync or a PostgreSQL round trip.
JOURNAL_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# A venue answers in milliseconds to seconds; a timeout is tens of seconds.
EXCHANGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Breaker reasons are free text: cut to this length (and bounded in number).
REASON_LEN = 120

# One subscription for every counted topic (orders, fills, kernel errors), so
# they are counted in publish order: with one per topic, their delivery tasks
# ran in either order, and a scrape between the two could show a fill before
# the order it filled. Ticks are excluded from routing (nothing is counted of
# them, and they are most events); the handler skips the few other topics.
_SUBSCRIPTION = "metrics"


class _Bounded:
    """Label values as given until ``limit`` distinct ones were seen; later
    newcomers become ``other``, so a misbehaving plugin cannot blow up the
    number of series."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        return OTHER


def _f(value: Decimal) -> float:
    return float(value)


class _UntilMarked:
    """A collector for the book's gauges that yields nothing until
    :attr:`ready`: before the first mark the book is not known, and a 0 would
    read as a wiped-out account."""

    def __init__(self) -> None:
        self.ready = False
        self.gauges: list[Gauge] = []

    def describe(self) -> Iterator[Metric]:
        for gauge in self.gauges:
            yield from gauge.describe()

    def collect(self) -> Iterator[Metric]:
        if self.ready:
            for gauge in self.gauges:
                yield from gauge.collect()


class Metrics:
    """Every metric bot4 exports, in a registry of its own."""

    def __init__(self, *, sample_every: float = 1.0) -> None:
        self.sample_every = sample_every
        self.registry = CollectorRegistry(auto_describe=True)
        self.exchange = "unknown"
        self._symbols = _Bounded(200)
        self._rules = _Bounded(200)
        self._subscribers = _Bounded(64)
        self._exchanges = _Bounded(16)
        # Last values seen of the kernel's and the bus's own counters: the
        # prometheus counters advance by the difference at each sample.
        self._seen_stats: dict[str, int] = {}
        self._seen_rules: dict[str, int] = {}
        self._seen_actions: dict[str, int] = {}
        self._seen_seq = 0
        self._seen_subs: dict[Subscription, tuple[str, int, int]] = {}
        self._exposure_symbols: set[str] = set()
        self.subscriptions: list[Subscription] = []
        self._stats: KernelStats | None = None
        r = self.registry

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"bot4_{name}", doc, labelnames=tuple(labels), registry=r)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"bot4_{name}", doc, labelnames=tuple(labels), registry=r)

        self._book = _UntilMarked()

        def book(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            made = Gauge(f"bot4_{name}", doc, labelnames=tuple(labels), registry=None)
            self._book.gauges.append(made)
            return made

        # decisions
        self.decisions = counter(
            "decisions", "Risk decisions by deciding rule and outcome", ("rule", "outcome")
        )
        self.decision_latency = Histogram(
            "bot4_decision_latency_seconds",
            "Time spent in the risk gate per decision",
            labelnames=("outcome",),
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        # orders
        self.orders = counter(
            "orders", "Orders accepted by the exchange", ("exchange", "symbol", "type")
        )
        self.fills = counter("fills", "Fills", ("exchange", "symbol", "side"))
        self.fill_notional = counter("fill_notional", "Quote value filled", ("exchange", "symbol"))
        self.cancels = counter("cancels", "Orders that ended cancelled", ("exchange", "symbol"))
        self.refusals = counter("exchange_refusals", "Orders the exchange refused")
        # risk
        self.actions = counter("risk_actions", "Risk actions taken, by kind", ("kind",))
        self.breaker_trips = counter("breaker_trips", "Circuit breaker trips")
        self.liquidations = counter(
            "liquidations", "Positions the venue liquidated (isolated or by the cross account)"
        )
        self.breaker_tripped = gauge("breaker_tripped", "1 while the circuit breaker is tripped")
        self.reloads = counter("rule_reloads", "Rule file reloads, by result", ("result",))
        # kernel
        self.ticks = counter("ticks", "Market data events processed")
        self.signals = counter("signals", "Strategy signals")
        self.strategy_errors = counter("strategy_errors", "Strategy calls that raised")
        self.kernel_errors = counter("kernel_errors", "Errors the kernel reported on kernel.error")
        # book (no sample before the first mark)
        self.equity = book("equity", "Cash plus unrealised PnL, quote currency")
        self.cash = book("cash", "Starting cash plus realised PnL minus fees")
        self.pnl = book("pnl", "Equity minus starting cash (net of fees)")
        self.realized = book("realized_pnl", "Realised PnL before fees")
        self.unrealized = book("unrealized_pnl", "Unrealised PnL of open positions")
        self.fees = book("fees", "Fees paid")
        self.peak = book("peak_equity", "High-water mark of equity")
        self.drawdown = book("drawdown_ratio", "(peak - equity) / peak, 0.1 = 10 % down")
        self.gross = book("gross_exposure", "Sum of position notionals at the marks")
        self.net = book("net_exposure", "Signed sum of position notionals (long minus short)")
        self.exposure = book("exposure", "Position notional at the mark", ("symbol",))
        self.leverage = book("leverage", "Gross exposure / equity (0 when flat)")
        self.margin = book("margin_used", "Initial margin held by open positions")
        self.positions = book("open_positions", "Symbols with an open position")
        r.register(self._book)
        # bus
        self.bus_events = counter("bus_events", "Events published on the bus")
        self.queue_depth = gauge(
            "bus_queue_depth", "Events waiting in a subscriber's queue", ("subscriber",)
        )
        self.dropped = counter(
            "bus_dropped_events", "Events a subscriber lost to backpressure", ("subscriber",)
        )
        self.handler_errors = counter(
            "bus_handler_errors", "Events whose handler raised", ("subscriber",)
        )
        # plumbing
        self.plugin_failures = gauge("plugin_load_failures", "Plugins that failed to load")
        self.journal_write = Histogram(
            "bot4_journal_write_seconds",
            "Time to make one journal write durable",
            buckets=JOURNAL_BUCKETS,
            registry=r,
        )
        self.journal_depth = gauge("journal_queue_depth", "Journal records waiting to be written")
        self.journal_lag = gauge(
            "journal_lag_seconds", "Age of the oldest journal record not yet written (0 if none)"
        )
        self.journal_failures = counter(
            "journal_write_failures", "Journal writes (flushes) that failed"
        )
        # exchange
        self.exchange_requests = counter(
            "exchange_requests",
            "Requests to the exchange by venue, method and outcome",
            ("venue", "method", "outcome"),
        )
        self.exchange_latency = Histogram(
            "bot4_exchange_request_seconds",
            "Time an exchange request took, whatever its outcome",
            labelnames=("venue", "method"),
            buckets=EXCHANGE_BUCKETS,
            registry=r,
        )
        self.exchange_retries = counter(
            "exchange_retries",
            "Requests an exchange plugin retried, by the outcome that made it retry",
            ("venue", "method", "outcome"),
        )
        # feed
        self.feed_age = gauge(
            "feed_age_seconds", "Wall-clock seconds since the symbol's last tick", ("symbol",)
        )
        self.feed_ts = gauge(
            "feed_last_tick_timestamp_seconds",
            "Timestamp (data time, Unix seconds) of the symbol's last tick",
            ("symbol",),
        )
        # state
        self.breaker_info = gauge(
            "breaker_info", "The circuit breaker's state and reason (value 1)", ("state", "reason")
        )
        self.halted = gauge("halted", "1 while trading is halted (kill switch or a blind monitor)")
        self.kill_switch = gauge("kill_switch", "1 while the kill switch holds trading halted")
        self.session_info = gauge(
            "session_info",
            "The running session (value 1)",
            ("session_id", "run_id", "run", "exchange"),
        )
        self.session_start = gauge(
            "session_start_time_seconds", "When this run of the session started (Unix seconds)"
        )
        self.session_restarts = gauge(
            "session_restarts",
            "Runs of this session id that died without a clean stop in the minute before "
            "this one started (a restart loop; from the journal)",
        )
        # New for every run of the process; the session id is the journal's.
        self.run_id = uuid.uuid4().hex[:12]
        self._breaker_series: tuple[str, str] | None = None
        self._reasons = _Bounded(32)
        self._notifiers = _Bounded(16)
        self.notifications = counter(
            "notifications",
            "Notifications to a person, by notifier and outcome "
            "(sent, failed, timeout, dropped, rate_limited)",
            ("notifier", "outcome"),
        )
        self._feed_seen: dict[str, tuple[datetime, float]] = {}
        self.running = gauge("session_running", "1 while the session's kernel runs")
        build = gauge("build_info", "bot4 version (value 1)", ("version",))
        build.labels(bot4.__version__).set(1)
        # Bounded, known label sets are created up front so that their series
        # exist (at zero) before the first event: a rate() over them works.
        for kind in RiskActionKind:
            self.actions.labels(kind.value)
        for outcome in ("approved", "rejected"):
            self.decision_latency.labels(outcome)
        self.decisions.labels(APPROVED_RULE, "approved")
        for result in ("ok", "failed"):
            self.reloads.labels(result)
        self._set_breaker("armed", "")

    # -- hooks called by the kernel and the journal --------------------------------

    def observe_decision(self, rule: str, outcome: str, seconds: float) -> None:
        """The kernel's ``decision_observer``: one gate decision took ``seconds``."""
        self.decision_latency.labels(outcome).observe(seconds)

    def observe_journal_write(self, seconds: float) -> None:
        """For :mod:`bot4.journal`: one write (a flush of one batch, committed
        or fsynced) took ``seconds`` to be durable. Call it for every write,
        from the thread that made it (prometheus-client is thread-safe)."""
        self.journal_write.observe(seconds)

    def set_journal_queue(self, depth: int, lag_seconds: float) -> None:
        """For :mod:`bot4.journal`: ``depth`` records wait to be written, the
        oldest queued ``lag_seconds`` ago (0 when none waits). Call it when the
        queue changes or at least once per flush."""
        self.journal_depth.set(depth)
        self.journal_lag.set(lag_seconds if depth else 0.0)

    def count_journal_failure(self) -> None:
        """For :mod:`bot4.journal`: a write failed (it will be retried or spilled)."""
        self.journal_failures.inc()

    def observe_exchange_request(
        self, venue: str, method: str, outcome: str, seconds: float
    ) -> None:
        """One request to ``venue`` ended with ``outcome`` after ``seconds``."""
        venue = self._exchanges(venue)
        self.exchange_requests.labels(venue, method, outcome).inc()
        self.exchange_latency.labels(venue, method).observe(seconds)

    def observe_exchange_retry(self, venue: str, method: str, outcome: str) -> None:
        """An exchange plugin retries ``method`` after a failure of ``outcome``."""
        self.exchange_retries.labels(self._exchanges(venue), method, outcome).inc()

    def count_notification(self, notifier: str, outcome: str, count: int = 1) -> None:
        """For :mod:`bot4.notify`: a notification ended with ``outcome``."""
        child = self.notifications.labels(self._notifiers(notifier), outcome)
        if count:
            child.inc(count)

    def _set_breaker(self, state: str, reason: str) -> None:
        series = (state, self._reasons(redact(reason)[:REASON_LEN]) if reason else "")
        if series == self._breaker_series:
            return
        if self._breaker_series is not None:
            self.breaker_info.remove(*self._breaker_series)
        self.breaker_info.labels(*series).set(1)
        self._breaker_series = series

    # -- bus observer ----------------------------------------------------------------

    def attach(self, bus: Bus, *, exchange: str = "unknown", capacity: int = 8192) -> None:
        """Subscribe to the events counted (one subscription: see
        ``_SUBSCRIPTION``). The capacity is larger
        than the report's and the recorder's (BLOCK, 4096), which therefore
        pace the kernel before this observer has to drop anything."""
        self.exchange = self._exchanges(exchange)
        self.subscriptions.append(
            bus.subscribe(
                "#",
                self.handle,
                policy=Backpressure.DROP_OLDEST,
                capacity=capacity,
                name=_SUBSCRIPTION,
                exclude="market.*",
            )
        )

    def handle(self, event: Event) -> None:
        payload = event.payload
        topic = event.topic
        if topic.startswith("fill."):
            if isinstance(payload, Fill):
                symbol = self._symbols(payload.symbol)
                self.fills.labels(self.exchange, symbol, payload.side.value).inc()
                self.fill_notional.labels(self.exchange, symbol).inc(_f(payload.notional))
        elif topic.startswith("order."):
            if isinstance(payload, OrderState):
                symbol = self._symbols(payload.order.symbol)
                if topic == "order.placed":
                    self.orders.labels(self.exchange, symbol, payload.order.type.value).inc()
                if payload.status is OrderStatus.CANCELED:
                    self.cancels.labels(self.exchange, symbol).inc()
        elif topic.startswith("kernel."):
            if topic == "kernel.error":
                self.kernel_errors.inc()
        else:
            return  # a topic nothing is counted of (the subscription takes "#")
        if self._stats is not None:
            # The decisions behind this order or fill are counted by the
            # kernel already: bring them in now, so that no scrape shows a
            # fill without the approval that led to it.
            self._sample_stats(self._stats)

    # -- sampling ----------------------------------------------------------------------

    def sample(
        self,
        tracker: Any,
        policy: Any,
        stats: KernelStats,
        bus: Bus | None,
        kernel: Any = None,
    ) -> None:
        """Copy the book, the breaker, the kernel's counters, its halt and
        feed, and the bus's subscriber figures into the metrics. Call from the
        trio thread."""
        self._sample_book(tracker)
        breaker = getattr(policy, "breaker", None)
        tripped = bool(getattr(breaker, "tripped", False))
        self.breaker_tripped.set(1 if tripped else 0)
        reason = str(getattr(breaker, "reason", "")) if tripped else ""
        self._set_breaker("tripped" if tripped else "armed", reason)
        self._sample_stats(stats)
        if bus is not None:
            self._sample_bus(bus)
        if kernel is not None:
            self._sample_kernel(kernel)

    def _sample_kernel(self, kernel: Any) -> None:
        from bot4.shared.service import KILL_PREFIX  # late: it imports the session

        halted = getattr(kernel, "halted", None)
        self.halted.set(0 if halted is None else 1)
        self.kill_switch.set(1 if halted is not None and halted.startswith(KILL_PREFIX) else 0)
        # The kernel's last tick per symbol (read only; the dict is the kernel's).
        last: Mapping[str, Any] = getattr(kernel, "_last", {})
        now = time.time()
        for symbol, tick in list(last.items()):
            label = self._symbols(symbol)
            stamp = getattr(tick, "timestamp", None)
            if not isinstance(stamp, datetime):
                continue
            seen = self._feed_seen.get(label)
            if seen is None or seen[0] != stamp:
                seen = self._feed_seen[label] = (stamp, now)
            self.feed_age.labels(label).set(now - seen[1])
            self.feed_ts.labels(label).set(stamp.timestamp())

    def _sample_book(self, tracker: Any) -> None:
        book = tracker.snapshot()
        if not book.marks and not self._book.ready:
            return  # no price seen yet: the book's figures stay unexported
        self._book.ready = True
        equity = book.equity
        self.equity.set(_f(equity))
        self.cash.set(_f(book.cash))
        self.pnl.set(_f(equity - tracker.starting_cash))
        self.realized.set(_f(tracker.realized_pnl))
        self.unrealized.set(_f(book.unrealized_pnl))
        self.fees.set(_f(tracker.fees))
        self.peak.set(_f(max(book.peak_equity, equity)))
        self.drawdown.set(_f(book.drawdown))
        gross = net = Decimal(0)
        held: set[str] = set()
        for symbol, position in book.positions.items():
            notional = position.notional(book.mark(symbol))
            gross += notional
            net += notional if position.qty > 0 else -notional
            label = self._symbols(symbol)
            held.add(label)
            self.exposure.labels(label).set(_f(notional))
        # A symbol gone flat reads 0 rather than vanishing, so a panel shows the drop.
        for label in self._exposure_symbols - held:
            self.exposure.labels(label).set(0)
        self._exposure_symbols |= held
        self.gross.set(_f(gross))
        self.net.set(_f(net))
        self.leverage.set(_f(gross / equity) if equity > 0 else 0.0)
        margin = getattr(tracker, "margin_used", None)
        self.margin.set(_f(margin()) if callable(margin) else 0.0)
        self.positions.set(len(book.positions))

    def _advance(self, counter: Any, key: str, value: int, seen: dict[str, int]) -> None:
        delta = value - seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
        seen[key] = value

    def _sample_stats(self, stats: KernelStats) -> None:
        seen = self._seen_stats
        self._advance(self.ticks, "ticks", stats.ticks, seen)
        self._advance(self.signals, "signals", stats.signals, seen)
        self._advance(self.strategy_errors, "strategy_errors", stats.strategy_errors, seen)
        self._advance(self.refusals, "exchange_refusals", stats.exchange_refusals, seen)
        self._advance(self.breaker_trips, "breaker_trips", stats.breaker_trips, seen)
        self._advance(self.liquidations, "liquidations", stats.liquidations, seen)
        self._advance(self.reloads.labels("ok"), "reloads", stats.reloads, seen)
        self._advance(self.reloads.labels("failed"), "reload_failures", stats.reload_failures, seen)
        self._advance(
            self.decisions.labels(APPROVED_RULE, "approved"), "approved", stats.approved, seen
        )
        # Iterating the Counters is safe: this runs in the kernel's thread.
        for rule, count in stats.rejections_by_rule.items():
            child = self.decisions.labels(self._rules(rule), "rejected")
            self._advance(child, rule, count, self._seen_rules)
        for kind, count in stats.actions.items():
            self._advance(self.actions.labels(kind), kind, count, self._seen_actions)

    def _sample_bus(self, bus: Bus) -> None:
        seq = bus.last_seq
        if seq > self._seen_seq:
            self.bus_events.inc(seq - self._seen_seq)
            self._seen_seq = seq
        live = bus.subscriptions
        for sub in live:
            name, dropped, failed = self._seen_subs.get(sub) or (self._subscribers(sub.name), 0, 0)
            self.queue_depth.labels(name).set(sub.queued)
            if sub.dropped > dropped:
                self.dropped.labels(name).inc(sub.dropped - dropped)
            if sub.failed > failed:
                self.handler_errors.labels(name).inc(sub.failed - failed)
            # The series exist at 0 for a healthy subscriber, so panels and
            # alerts on them have something to show before the first loss.
            self.dropped.labels(name)
            self.handler_errors.labels(name)
            self._seen_subs[sub] = (name, sub.dropped, sub.failed)
        for sub in [s for s in self._seen_subs if s not in live]:
            # Gone (unsubscribed, or closed by a FAIL overflow): its last
            # counts are final; its queue is empty.
            name, dropped, failed = self._seen_subs.pop(sub)
            if sub.dropped > dropped:
                self.dropped.labels(name).inc(sub.dropped - dropped)
            if sub.failed > failed:
                self.handler_errors.labels(name).inc(sub.failed - failed)
            self.queue_depth.labels(name).set(0)

    def set_plugin_failures(self, count: int) -> None:
        self.plugin_failures.set(count)

    # -- the session service ---------------------------------------------------------

    async def service(self, ctx: SessionContext, nursery: trio.Nursery) -> None:
        """A :data:`bot4.session.SessionService`: wire this session in."""
        self.set_plugin_failures(len(ctx.manager.failed()))
        self.attach(ctx.bus, exchange=getattr(ctx.exchange, "name", ctx.config.exchange))
        # The journal service ran before this one and counted the earlier runs.
        run = ctx.history.runs + 1 if ctx.history is not None else 1
        self.session_info.labels(ctx.config.session_id, self.run_id, str(run), self.exchange).set(1)
        self.session_start.set(time.time())
        if ctx.history is not None:
            self.session_restarts.set(ctx.history.restarts)
        if not isinstance(ctx.kernel.exchange, InstrumentedExchange):
            ctx.kernel.exchange = InstrumentedExchange(
                ctx.kernel.exchange,
                self.observe_exchange_request,
                venue=self.exchange,
                observe_retry=self.observe_exchange_retry,
            )
        for method in METHODS:
            for outcome in OUTCOMES:
                self.exchange_requests.labels(self.exchange, method, outcome)
        ctx.kernel.decision_observer = self.observe_decision
        self._stats = ctx.kernel.stats
        self.running.set(1)
        nursery.start_soon(self._sampler, ctx)

    async def _sampler(self, ctx: SessionContext) -> None:
        kernel = ctx.kernel
        try:
            while True:
                self.sample(ctx.tracker, ctx.policy, kernel.stats, ctx.bus, kernel)
                await trio.sleep(self.sample_every)
        finally:
            # The session's nursery is cancelled once the kernel has run and the
            # bus is drained: take the final figures (sync, so cancellation
            # cannot interrupt it).
            self.sample(ctx.tracker, ctx.policy, kernel.stats, ctx.bus, kernel)
            self.running.set(0)

    # -- reading ----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text a scrape of ``/metrics`` returns."""
        return generate_latest(self.registry)

    def sample_values(self) -> Mapping[str, float]:
        """``name{labels}`` -> value for every sample (for tests and tools)."""
        values: dict[str, float] = {}
        for family in self.registry.collect():
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                values[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return values

    def serve(self, port: int, addr: str = DEFAULT_ADDR) -> MetricsServer:
        """Serve ``/metrics`` over HTTP in a background thread until closed."""
        return MetricsServer(self.registry, port, addr)
