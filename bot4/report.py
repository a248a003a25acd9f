"""What a session did, in numbers and in samples for a chart.

:class:`SessionReport` is a bus observer: :meth:`SessionReport.attach` makes
one subscription (``BLOCK``, so it never misses an event) whose plain-function
handler takes the kernel's topics apart::

    market.<SYMBOL>   price samples, equity and drawdown, exposure time
    fill.<SYMBOL>     the fill list, round-trip trades, positions for exposure
    risk.approved     approved orders
    risk.rejected     rejections by rule
    risk.action       risk actions and breaker trips, with their times

It runs for every tick of runs of half a million ticks, so the work per event
is constant (a handful of Decimal operations, plus a loop over the symbols
with an open position) and memory grows only with the number of samples,
fills, trades and risk actions, never with the number of ticks.

Sampling. Time is cut into buckets of ``sample_every_s`` seconds of *event*
time (the ``ts`` of the bus events, not the wall clock), so a replay at any
speed gives the same samples. Each bucket keeps the last, lowest and highest
price per symbol, and the last, lowest and highest equity with the worst
drawdown seen inside it. Choose ``sample_every_s`` so that the run's span
divided by it is a number of points a chart can show (a few thousand).

Drawdown is not taken from the samples alone: equity and the tracker's peak
are read on *every* market, fill and risk-action event, and the worst
``(peak - equity) / peak`` is kept, so a crash and recovery inside one bucket
still counts. The tracker updates its peak on every mark, so its peak is the
true high-water mark. Both are read from the tracker at the same moment (when
the event is delivered; with the kernel that is at the end of the tick that
published it), so each drawdown figure describes one real state of the book.
A report that follows its own book (:meth:`SessionReport.follow`, as a
session's does) reads equity as the book's integer money units, exact and
without a Decimal per tick, and divides in Decimal only at a new low of the
bucket (the drawdown cannot rise otherwise): the same figures, float for
float, at a fraction of the cost.

Trades. A trade is a round trip per symbol from flat to flat. Its PnL is the
sum of its fills' cash flows (sells minus buys) minus their fees; a fill that
flips the position closes one trip and opens the next, with its fee split in
proportion to the quantity on each side. A trade is a win when that net PnL is
above zero. A position still open at the end is not a trade (yet).

Exposure is time-weighted between consecutive events: the fraction of the
run's event-time span during which any position was open, and the average of
``gross notional / equity`` over the whole span (zero while flat, and while
equity is not positive, where the ratio means nothing).

Counters that the bus carries (ticks, fills, approvals, rejections, risk
actions, breaker trips) are counted from the events, so they agree with the
samples and trades; ``orders_resized``, ``strategy_errors`` and
``exchange_refusals`` come from the kernel's :class:`KernelStats` because the
bus carries those only as free text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from bot4.bus import Backpressure, Bus, Event, EventBatch, Subscription
from bot4.kernel_types import KernelStats
from bot4.model import ZERO, Fill, MarketData, Rejected, RiskAction, RiskActionKind
from bot4.portfolio import PortfolioTracker
from bot4.report_buckets import Book, _Bucket, _money_float, _Trip, _units_of
from bot4.summary import (
    ActionRecord,
    EquitySample,
    FillRecord,
    PriceSample,
    Summary,
    TradeRecord,
    ns_to_datetime,
)

# The figures' types live in bot4.summary; named here too, where a reader of
# a report looks for them.
__all__ = [
    "ActionRecord",
    "EquitySample",
    "FillRecord",
    "PriceSample",
    "SessionReport",
    "Summary",
    "TradeRecord",
    "ns_to_datetime",
]

_NS = 1_000_000_000


class SessionReport:
    """Observes one session on the bus; see the module docstring."""

    def __init__(self, tracker: Book, *, sample_every_s: float = 60.0) -> None:
        if not sample_every_s > 0:
            raise ValueError(f"sample_every_s must be positive, not {sample_every_s!r}")
        self.tracker = tracker
        self.sample_every_s = sample_every_s
        self._bucket_ns = max(1, int(sample_every_s * _NS))
        self._subscription: Subscription | None = None

        self._prices: dict[str, list[PriceSample]] = {}
        self._price_open: dict[str, _Bucket] = {}
        self._last_price: dict[str, Decimal] = {}
        self._equity: list[EquitySample] = []
        self._equity_open: _Bucket | None = None

        self._fills: list[FillRecord] = []
        self._actions: list[ActionRecord] = []
        self._trades: list[TradeRecord] = []
        self._trips: dict[str, _Trip] = {}
        # Open positions as floats, only to weigh gross exposure.
        self._open: dict[str, float] = {}
        self._last_float: dict[str, float] = {}
        # A batch of ticks while flat leaves _last_float behind _last_price
        # (no float per tick); it is caught up before it is next read.
        self._floats_stale = False

        self._ticks = 0
        self._approved = 0
        self._rejected = 0
        self._rejections: Counter[str] = Counter()
        self._action_counts: Counter[str] = Counter()
        self._breaker_trips = 0

        self._first_ts: int | None = None
        self._last_ts = 0
        self._exposed_ns = 0
        self._gross_ns = 0.0  # integral of gross/equity over time, in ns
        self._gross_ratio = 0.0
        self._max_drawdown = ZERO
        self._first_equity: Decimal | None = None  # equity at this run's first book event
        # The book as of the last event handled (see follow()); None: read the tracker.
        self._book: PortfolioTracker | None = None
        # With a book of its own, equity is read as the book's integer units
        # (see _observe_units): the peak last read, and it in units (None
        # when it is not a whole number of them: then always the Decimals).
        self._peak_seen: Decimal | None = None
        self._peak_units: int | None = None
        self._money: Callable[[Any], float] = float

        self._by_head: dict[str, Callable[[Event], None]] = {
            "market": self._on_market,
            "fill": self._on_fill,
        }
        self._by_topic: dict[str, Callable[[Event], None]] = {
            "risk.approved": self._on_approved,
            "risk.rejected": self._on_rejected,
            "risk.action": self._on_action,
        }

    # -- wiring ---------------------------------------------------------------

    def attach(self, bus: Bus, *, capacity: int = 4096) -> Subscription:
        """Subscribe to the kernel's topics. One subscription for all of them,
        because the bus keeps order only within a subscription, and a fill must
        be seen in its place among the ticks."""
        if self._subscription is not None:
            raise RuntimeError("this SessionReport is already attached to a bus")
        self._subscription = bus.subscribe(
            "#",
            self.handle,
            policy=Backpressure.BLOCK,
            capacity=capacity,
            name="session-report",
            on_batch=self.handle_batch,
            batch_topics="market.#",
        )
        return self._subscription

    def follow(self) -> None:
        """Keep a private copy of the tracker from now on, moved by the events
        delivered (ticks mark it at their last price, fills are applied), as
        the kernel moves the tracker before it publishes each. Call it when
        the session starts, after a restart has restored the book and before
        the first event is published; see the module docstring for why."""
        if not isinstance(self.tracker, PortfolioTracker):
            raise TypeError("follow() needs a PortfolioTracker to copy")
        self._book = self.tracker.copy()
        self._money = _money_float
        bucket = self._equity_open
        if bucket is not None and isinstance(bucket.last, Decimal):
            # An equity bucket opened before (read from the tracker as
            # Decimals, so whole units): the same values, in units.
            units = [_units_of(Decimal(v)) for v in (bucket.last, bucket.low, bucket.high)]
            last, low, high = (u if u is not None else 0 for u in units)
            if None in units:
                self._book = None  # cannot happen with a PortfolioTracker; stay exact anyway
                self._money = float
                return
            unit_bucket = _Bucket(bucket.index, bucket.ts, last, bucket.drawdown)
            unit_bucket.low, unit_bucket.high = low, high
            self._equity_open = unit_bucket

    def handle(self, event: Event) -> None:
        """Take one event (the bus handler; also usable without a bus)."""
        handler = self._by_topic.get(event.topic)
        if handler is None:
            handler = self._by_head.get(event.topic.partition(".")[0])
        if handler is not None:
            handler(event)

    def handle_batch(self, batch: EventBatch) -> None:
        """Take a batch of ticks (the bus's batch handler): the same figures as
        :meth:`handle` on each of its events, delivered at the same moment.
        While flat the book is read once for the run of ticks, as no mark
        moves it; a tick while a position is open re-reads it. A tick while
        flat (most of them) credits no exposure and leaves the gross ratio
        at zero, so only the clock and the buckets move."""
        if self._book is not None:
            self._handle_batch_units(batch, self._book)
            return
        # From here the report reads the tracker itself (it follows no book):
        # its state is read once a batch, the batch being delivered after the
        # kernel moved it (as before follow() existed).
        state: tuple[Decimal, Decimal] | None = None
        bucket_ns = self._bucket_ns
        price_open, prices, last_price = self._price_open, self._prices, self._last_price
        for i, (topic, tick, event_ts) in enumerate(
            zip(batch.topics, batch.payloads, batch.ts, strict=True)
        ):
            if not isinstance(tick, MarketData) or topic.partition(".")[0] != "market":
                self.handle(Event(topic, tick, event_ts, batch.seqs[i], batch.correlation_id_at(i)))
                state = None  # another handler may have read or changed the book
                continue
            self._ticks += 1
            equity_open = self._equity_open
            flat = not self._open and self._first_ts is not None and equity_open is not None
            if flat:  # _advance without a position: time only moves forward
                ts = event_ts if event_ts > self._last_ts else self._last_ts
                self._last_ts = ts
            else:
                ts = self._advance(event_ts)
            symbol, price = tick.symbol, tick.last
            last_price[symbol] = price
            index = ts // bucket_ns
            bucket = price_open.get(symbol)
            if bucket is None:
                price_open[symbol] = _Bucket(index, ts, price)
                prices[symbol] = []
            elif index > bucket.index:
                prices[symbol].append(bucket.price())
                price_open[symbol] = _Bucket(index, ts, price)
            else:
                bucket.add(ts, price)
            if state is None:
                state = self._book_state()
            if flat:  # _observe_at without a position
                assert equity_open is not None
                self._floats_stale = True
                equity, drawdown = state
                if index > equity_open.index:
                    self._equity.append(equity_open.equity())
                    self._equity_open = _Bucket(index, ts, equity, drawdown)
                else:
                    equity_open.add(ts, equity)
                    if drawdown > equity_open.drawdown:
                        equity_open.drawdown = drawdown
                self._gross_ratio = 0.0
                continue
            if self._open:
                self._last_float[symbol] = tick.last_float  # float(price), filled by the loader
            else:
                self._floats_stale = True
            self._observe_at(ts, *state)

    def _handle_batch_units(self, batch: EventBatch, book: PortfolioTracker) -> None:
        """:meth:`handle_batch` for a report following its own book: each
        tick marks it and observes it in integer units. The common tick (same
        equity bucket, same peak) is :meth:`_observe_units` inlined, step for
        step; anything else goes through it."""
        bucket_ns = self._bucket_ns
        price_open, prices, last_price = self._price_open, self._prices, self._last_price
        last_float = self._last_float
        mark, equity_units = book.mark, book.equity_units
        for i, (topic, tick, event_ts) in enumerate(
            zip(batch.topics, batch.payloads, batch.ts, strict=True)
        ):
            if not isinstance(tick, MarketData) or topic.partition(".")[0] != "market":
                self.handle(Event(topic, tick, event_ts, batch.seqs[i], batch.correlation_id_at(i)))
                continue
            self._ticks += 1
            held = self._open
            if not held and self._first_ts is not None:
                # _advance without a position: time only moves forward
                ts = event_ts if event_ts > self._last_ts else self._last_ts
                self._last_ts = ts
            else:
                ts = self._advance(event_ts)
            symbol, price = tick.symbol, tick.last
            last_price[symbol] = price
            mark(symbol, price)
            index = ts // bucket_ns
            bucket = price_open.get(symbol)
            if bucket is None:
                price_open[symbol] = _Bucket(index, ts, price)
                prices[symbol] = []
            elif index > bucket.index:
                prices[symbol].append(bucket.price())
                price_open[symbol] = _Bucket(index, ts, price)
            else:
                bucket.add(ts, price)
            if held:
                last_float[symbol] = tick.last_float  # float(price), filled by the loader
            else:
                self._floats_stale = True
            equity = self._equity_open
            if (
                equity is None
                or index > equity.index
                or book.peak_equity is not self._peak_seen
                or self._first_equity is None
            ):
                self._observe_units(ts, book)
                continue
            # _observe_units, for a tick in the open bucket at the peak seen.
            units = equity_units()
            peak = self._peak_units
            equity.ts = ts
            equity.last = units
            if units < equity.low:
                equity.low = units
            elif units > equity.high:
                equity.high = units
            if (peak is None or units < peak) and (
                peak is None or peak != equity.checked_peak or units < equity.checked
            ):
                drawdown = self._book_state()[1]
                if drawdown > equity.drawdown:
                    equity.drawdown = drawdown
                equity.checked_peak, equity.checked = peak, units
            if held:
                self._gross_ratio = self._gross() / _money_float(units) if units > 0 else 0.0
            else:
                self._gross_ratio = 0.0

    # -- handlers -------------------------------------------------------------

    def _on_market(self, event: Event) -> None:
        tick = event.payload
        if not isinstance(tick, MarketData):
            return
        self._ticks += 1
        ts = self._advance(event.ts)
        symbol, price = tick.symbol, tick.last
        if self._book is not None:
            self._book.mark(symbol, price)
        self._last_price[symbol] = price
        self._last_float[symbol] = tick.last_float
        index = ts // self._bucket_ns
        bucket = self._price_open.get(symbol)
        if bucket is None:
            self._price_open[symbol] = _Bucket(index, ts, price)
            self._prices[symbol] = []
        elif index > bucket.index:
            self._prices[symbol].append(bucket.price())
            self._price_open[symbol] = _Bucket(index, ts, price)
        else:
            # Same bucket, or an event time that went backwards: fold it into
            # the open bucket rather than reopen a closed one.
            bucket.add(ts, price)
        self._observe_book(ts)

    def _on_fill(self, event: Event) -> None:
        fill = event.payload
        if not isinstance(fill, Fill):
            return
        ts = self._advance(event.ts)
        if self._book is not None:
            self._book.apply(fill)
        self._fills.append(
            FillRecord(ts, fill.symbol, fill.side, fill.qty, fill.price, fill.fee, fill.liquidity)
        )
        if fill.symbol not in self._last_float:
            self._last_float[fill.symbol] = float(fill.price)
        self._trade(fill, ts)
        self._observe_book(ts)

    def _on_approved(self, event: Event) -> None:
        self._approved += 1

    def _on_rejected(self, event: Event) -> None:
        decision = event.payload
        self._rejected += 1
        rule = decision.rule if isinstance(decision, Rejected) else "unknown"
        self._rejections[rule] += 1

    def _on_action(self, event: Event) -> None:
        action = event.payload
        if not isinstance(action, RiskAction):
            return
        ts = self._advance(event.ts)
        price = self._last_price.get(action.symbol) if action.symbol is not None else None
        self._actions.append(
            ActionRecord(ts, action.kind, action.symbol, action.rule, action.reason, price)
        )
        self._action_counts[action.kind.value] += 1
        if action.kind is RiskActionKind.TRIP_BREAKER:
            self._breaker_trips += 1
        self._observe_book(ts)

    # -- accounting -------------------------------------------------------------

    def _advance(self, ts: int) -> int:
        """Move event time to ``ts``, crediting exposure for the interval just
        ended (the book was as the previous event left it). Returns the time
        to stamp the event with: events published before any tick carry ts 0,
        and time never runs backwards."""
        if self._first_ts is None:
            if ts <= 0:
                return 0
            self._first_ts = self._last_ts = ts
            return ts
        if ts <= self._last_ts:
            return self._last_ts
        dt = ts - self._last_ts
        if self._open:
            self._exposed_ns += dt
            self._gross_ns += self._gross_ratio * dt
        self._last_ts = ts
        return ts

    def _observe_book(self, ts: int) -> None:
        """Read equity and peak from the tracker: drawdown, equity bucket,
        gross exposure. Runs for every market, fill and risk-action event."""
        if self._book is not None:
            self._observe_units(ts, self._book)
            return
        self._observe_at(ts, *self._book_state())

    def _observe_units(self, ts: int, book: PortfolioTracker) -> None:
        """:meth:`_observe_at` of :meth:`_book_state`, the same figures, with
        equity in the book's integer units: the Decimal drawdown is worked out
        only when it may beat the bucket's (see _Bucket), and a bucket's
        floats are those of the Decimals (_money_float)."""
        units = book.equity_units()
        peak_dec = book.peak_equity
        if peak_dec is not self._peak_seen:
            self._peak_seen = peak_dec
            self._peak_units = _units_of(peak_dec)
        peak = self._peak_units
        if self._first_equity is None:
            self._first_equity = book.equity
        # Below the peak (or a peak not in whole units): a drawdown to weigh.
        below = peak is None or units < peak
        index = ts // self._bucket_ns
        bucket = self._equity_open
        if bucket is None or index > bucket.index:
            drawdown = self._book_state()[1] if below else ZERO
            if bucket is not None:
                self._equity.append(bucket.equity(_money_float))
            opened = self._equity_open = _Bucket(index, ts, units, drawdown)
            if below:
                opened.checked_peak, opened.checked = peak, units
        else:
            bucket.add(ts, units)
            if below and (peak is None or peak != bucket.checked_peak or units < bucket.checked):
                # _book_state also keeps the worst drawdown of the run: a
                # state skipped here cannot beat the bucket's, so not it either.
                drawdown = self._book_state()[1]
                if drawdown > bucket.drawdown:
                    bucket.drawdown = drawdown
                bucket.checked_peak, bucket.checked = peak, units
        if self._open:
            self._gross_ratio = self._gross() / _money_float(units) if units > 0 else 0.0
        else:
            self._gross_ratio = 0.0

    def _gross(self) -> float:
        """Gross notional of the open positions at the last prices, as floats."""
        if self._floats_stale:
            self._floats_stale = False
            for symbol, price in self._last_price.items():
                self._last_float[symbol] = float(price)
        gross = 0.0
        for symbol, qty in self._open.items():
            gross += abs(qty) * self._last_float[symbol]
        return gross

    def _book_state(self) -> tuple[Decimal, Decimal]:
        """Equity and drawdown from the tracker now (the first equity and the
        worst drawdown are kept)."""
        book = self._book if self._book is not None else self.tracker
        equity = book.equity
        if self._first_equity is None:
            self._first_equity = equity
        peak = book.peak_equity
        if equity > peak:  # a tracker whose peak lags its equity
            peak = equity
        drawdown = (peak - equity) / peak if peak > 0 and equity < peak else ZERO
        if drawdown > self._max_drawdown:
            self._max_drawdown = drawdown
        return equity, drawdown

    def _observe_at(self, ts: int, equity: Decimal, drawdown: Decimal) -> None:
        index = ts // self._bucket_ns
        bucket = self._equity_open
        if bucket is None:
            self._equity_open = _Bucket(index, ts, equity, drawdown)
        elif index > bucket.index:
            self._equity.append(bucket.equity())
            self._equity_open = _Bucket(index, ts, equity, drawdown)
        else:
            bucket.add(ts, equity)
            if drawdown > bucket.drawdown:
                bucket.drawdown = drawdown
        if self._open:
            self._gross_ratio = self._gross() / float(equity) if equity > 0 else 0.0
        else:
            self._gross_ratio = 0.0

    def _trade(self, fill: Fill, ts: int) -> None:
        trip = self._trips.get(fill.symbol)
        if trip is None:
            trip = self._trips[fill.symbol] = _Trip()
        closed = trip.apply(fill, ts)
        if closed is not None:
            self._trades.append(closed)
        if trip.qty:
            self._open[fill.symbol] = float(trip.qty)
        else:
            self._open.pop(fill.symbol, None)

    # -- reading ----------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        """Symbols with market data, sorted."""
        return sorted(self._price_open)

    def price_samples(self, symbol: str) -> list[PriceSample]:
        """Closed buckets plus the open one (a copy; reading never closes one)."""
        bucket = self._price_open.get(symbol)
        if bucket is None:
            return []
        return [*self._prices[symbol], bucket.price()]

    def equity_samples(self) -> list[EquitySample]:
        bucket = self._equity_open
        return [*self._equity, bucket.equity(self._money)] if bucket is not None else []

    @property
    def fills(self) -> Sequence[FillRecord]:
        return tuple(self._fills)

    @property
    def trades(self) -> Sequence[TradeRecord]:
        return tuple(self._trades)

    @property
    def risk_actions(self) -> Sequence[ActionRecord]:
        return tuple(self._actions)

    @property
    def breaker_trips(self) -> list[int]:
        """Event times (ns) of the breaker trips."""
        return [a.ts for a in self._actions if a.kind is RiskActionKind.TRIP_BREAKER]

    @property
    def pnl(self) -> Decimal:
        return self.tracker.equity - self.tracker.starting_cash

    @property
    def return_pct(self) -> float:
        start = self.tracker.starting_cash
        return float(self.pnl / start * 100) if start > 0 else 0.0

    @property
    def first_equity(self) -> Decimal:
        """Equity when this report first looked at the book (the run's first
        tick): a resumed run's own PnL is measured from it."""
        return self._first_equity if self._first_equity is not None else self.tracker.equity

    @property
    def max_drawdown(self) -> float:
        """Worst drawdown seen, including the book as it is now."""
        worst = self._max_drawdown
        equity, peak = self.tracker.equity, self.tracker.peak_equity
        if peak > 0 and equity < peak:
            worst = max(worst, (peak - equity) / peak)
        return float(worst)

    def finish(self, stats: KernelStats, *, wall_seconds: float = 0.0) -> Summary:
        """The summary as of now. Reading only: the report can go on observing
        and be finished again."""
        trades = len(self._trades)
        wins = sum(1 for t in self._trades if t.pnl > 0)
        span = self._last_ts - self._first_ts if self._first_ts is not None else 0
        tracker = self.tracker
        return Summary(
            ticks=self._ticks,
            fills=len(self._fills),
            trades=trades,
            wins=wins,
            win_rate=wins / trades if trades else 0.0,
            pnl=self.pnl,
            return_pct=self.return_pct,
            max_drawdown=self.max_drawdown,
            fees=tracker.fees,
            starting_cash=tracker.starting_cash,
            final_equity=tracker.equity,
            exposure=self._exposed_ns / span if span else 0.0,
            avg_gross_exposure=self._gross_ns / span if span else 0.0,
            orders_approved=self._approved,
            orders_rejected=self._rejected,
            orders_resized=stats.resized,
            rejections_by_rule=dict(self._rejections),
            risk_actions=dict(self._action_counts),
            breaker_trips=self._breaker_trips,
            strategy_errors=stats.strategy_errors,
            exchange_refusals=stats.exchange_refusals,
            protection=stats.protection,
            protection_failures=stats.protection_failures,
            liquidations=stats.liquidations,
            margin_added=stats.margin_added,
            funding_paid=stats.funding_paid,
            start=ns_to_datetime(self._first_ts) if self._first_ts is not None else None,
            end=ns_to_datetime(self._last_ts) if self._first_ts is not None else None,
            duration=span / _NS,
            wall_seconds=wall_seconds,
        )
