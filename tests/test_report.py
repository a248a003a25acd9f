"""SessionReport on a real bus and a real PortfolioTracker, against figures
worked out by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import trio

from bot4.bus import Bus, EventBatch, open_bus
from bot4.journal.riskstate import RunHistory
from bot4.kernel_types import KernelStats
from bot4.model import (
    Approved,
    Fill,
    MarketData,
    Order,
    OrderType,
    Rejected,
    RiskAction,
    RiskActionKind,
    Side,
)
from bot4.portfolio import PortfolioTracker
from bot4.report import SessionReport, Summary
from bot4.session_summary import resumed_text, summary_json

D = Decimal
BTC = "BTC-USDT"
ETH = "ETH-USDT"
# Minute-aligned, so 60 s buckets start at T0.
T0 = datetime(2024, 3, 1, tzinfo=UTC)
NS = 1_000_000_000


def ns(seconds: float) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * NS)


class Driver:
    """Plays the kernel's part: update the tracker, publish, let the report
    see it (drain) before the next step, as the kernel's per-tick checkpoint
    does."""

    def __init__(self, bus: Bus, tracker: PortfolioTracker) -> None:
        self.bus = bus
        self.tracker = tracker
        self.n = 0

    async def tick(self, t: float, price: str, symbol: str = BTC) -> None:
        p = D(price)
        tick = MarketData(symbol, "paper", p, p, p, D(1), T0 + timedelta(seconds=t))
        self.tracker.mark(symbol, p)
        await self.bus.publish(f"market.{symbol}", tick, ts=ns(t))
        await self.bus.drain()

    async def fill(
        self, t: float, side: str, qty: str, price: str, fee: str = "0", symbol: str = BTC
    ) -> None:
        self.n += 1
        fill = Fill(
            f"f{self.n}",
            f"o{self.n}",
            symbol,
            side,
            D(qty),
            D(price),
            D(fee),
            T0 + timedelta(seconds=t),
        )
        self.tracker.apply(fill)
        await self.bus.publish(f"fill.{symbol}", fill, ts=ns(t))
        await self.bus.drain()

    async def publish(self, t: float, topic: str, payload: object) -> None:
        await self.bus.publish(topic, payload, ts=ns(t))
        await self.bus.drain()


def order() -> Order:
    return Order("c1", BTC, Side.BUY, OrderType.MARKET, D(1))


async def scripted_session() -> tuple[SessionReport, PortfolioTracker]:
    tracker = PortfolioTracker(D(1000))
    report = SessionReport(tracker, sample_every_s=60)
    async with open_bus() as bus:
        report.attach(bus)
        k = Driver(bus, tracker)
        await k.tick(0, "100")
        await k.publish(5, "risk.approved", Approved(order(), ("max-position",)))
        await k.fill(10, "buy", "1", "100", fee="1")  # equity 999
        await k.tick(20, "110")  # 1009, the peak so far
        await k.tick(30, "90")  # 989: 20 below 1009
        await k.tick(40, "120")  # 1019, new peak
        await k.fill(50, "sell", "1", "120", fee="1")  # closes +20 - 2 fees: 1018
        await k.publish(55, "risk.rejected", Rejected("max-position", "too big", order=order()))
        await k.publish(56, "risk.rejected", Rejected("max-position", "too big", order=order()))
        await k.publish(57, "risk.rejected", Rejected("breaker", "tripped", order=order()))
        await k.fill(60, "sell", "2", "120")  # short 2
        await k.tick(70, "130")  # 1018 - 20 = 998: 21 below 1019
        await k.publish(
            70, "risk.action", RiskAction(RiskActionKind.TRIP_BREAKER, None, "breaker", "dd")
        )
        await k.publish(
            70, "risk.action", RiskAction(RiskActionKind.EMERGENCY_CLOSE, BTC, "breaker", "dd")
        )
        await k.fill(80, "buy", "2", "130")  # closes -20: 998
        await k.publish(90, "signal.sma", "ignored")
        await k.publish(90, "kernel.error", "ignored too")
        await k.tick(120, "125")  # flat: equity stays 998
    return report, tracker


@pytest.mark.trio
async def test_summary_figures_by_hand() -> None:
    report, tracker = await scripted_session()
    stats = KernelStats(resized=1, strategy_errors=2, exchange_refusals=3)
    s = report.finish(stats, wall_seconds=2.0)

    assert s.ticks == 6
    assert s.fills == 4
    assert s.trades == 2  # long 10..50 (+18 net), short 60..80 (-20)
    assert s.wins == 1
    assert s.win_rate == 0.5
    assert [t.pnl for t in report.trades] == [D(18), D(-20)]
    assert s.pnl == D(-2)
    assert s.final_equity == D(998) == tracker.equity
    assert s.fees == D(2)
    assert s.return_pct == pytest.approx(-0.2)
    assert s.max_drawdown == pytest.approx(21 / 1019)
    # In a position 10..50 and 60..80: 60 s of a 120 s span.
    assert s.exposure == pytest.approx(0.5)
    gross = (
        100 / 999 * 10
        + 110 / 1009 * 10
        + 90 / 989 * 10
        + 120 / 1019 * 10
        + 240 / 1018 * 10
        + 260 / 998 * 10
    ) / 120
    assert s.avg_gross_exposure == pytest.approx(gross)
    assert s.orders_approved == 1
    assert s.orders_rejected == 3
    assert s.rejections_by_rule == {"max-position": 2, "breaker": 1}
    assert s.risk_actions == {"trip_breaker": 1, "emergency_close": 1}
    assert s.breaker_trips == 1
    assert (s.orders_resized, s.strategy_errors, s.exchange_refusals) == (1, 2, 3)
    assert s.start == T0
    assert s.end == T0 + timedelta(seconds=120)
    assert s.duration == 120.0
    assert s.ticks_per_second == 3.0

    assert report.breaker_trips == [ns(70)]
    close = report.risk_actions[1]
    assert (close.kind, close.symbol, close.price) == (RiskActionKind.EMERGENCY_CLOSE, BTC, D(130))
    assert [(f.side, f.qty, f.price) for f in report.fills] == [
        (Side.BUY, D(1), D(100)),
        (Side.SELL, D(1), D(120)),
        (Side.SELL, D(2), D(120)),
        (Side.BUY, D(2), D(130)),
    ]


@pytest.mark.trio
async def test_samples_per_bucket() -> None:
    report, _ = await scripted_session()
    prices = [(s.ts, s.last, s.low, s.high) for s in report.price_samples(BTC)]
    assert prices == [
        (ns(40), 120.0, 90.0, 120.0),
        (ns(70), 130.0, 130.0, 130.0),
        (ns(120), 125.0, 125.0, 125.0),
    ]
    equity = report.equity_samples()
    assert [(e.ts, e.equity, e.low, e.high) for e in equity] == [
        (ns(50), 1018.0, 989.0, 1019.0),
        (ns(80), 998.0, 998.0, 1018.0),
        (ns(120), 998.0, 998.0, 998.0),
    ]
    assert [e.drawdown for e in equity] == pytest.approx([20 / 1009, 21 / 1019, 21 / 1019])
    assert report.symbols == [BTC]
    assert report.price_samples(ETH) == []


@pytest.mark.trio
async def test_flip_splits_the_fee_and_trades_add_up_to_the_book() -> None:
    tracker = PortfolioTracker(D(1000))
    report = SessionReport(tracker)
    async with open_bus() as bus:
        report.attach(bus)
        k = Driver(bus, tracker)
        await k.tick(0, "100")
        await k.fill(1, "buy", "1", "100")
        # Sells 3: closes the long (+10) and opens a 2 short; fee 3 split 1 : 2.
        await k.fill(2, "sell", "3", "110", fee="3")
        await k.fill(3, "buy", "2", "100")  # short closes +20
        await k.tick(4, "100")
    s = report.finish(KernelStats())
    assert [t.pnl for t in report.trades] == [D(9), D(18)]
    assert sum(t.pnl for t in report.trades) == tracker.realized_pnl - tracker.fees == s.pnl
    assert (s.trades, s.wins, s.win_rate) == (2, 2, 1.0)


@pytest.mark.trio
async def test_open_position_is_not_a_trade_and_partial_closes_stay_in_the_trip() -> None:
    tracker = PortfolioTracker(D(1000))
    report = SessionReport(tracker)
    async with open_bus() as bus:
        report.attach(bus)
        k = Driver(bus, tracker)
        await k.tick(0, "100")
        await k.fill(1, "buy", "2", "100")
        await k.fill(2, "sell", "1", "90")  # partial: the trip goes on
        await k.tick(3, "95")
    s = report.finish(KernelStats())
    assert (s.trades, s.wins, s.win_rate) == (0, 0, 0.0)
    assert s.exposure == pytest.approx(2 / 3)
    assert s.pnl == D(-15)  # -10 realised, -5 open


@pytest.mark.trio
async def test_a_crash_inside_one_bucket_is_not_missed() -> None:
    tracker = PortfolioTracker(D(1000))
    report = SessionReport(tracker, sample_every_s=3600)
    async with open_bus() as bus:
        report.attach(bus)
        k = Driver(bus, tracker)
        await k.tick(0, "100")
        await k.fill(1, "buy", "5", "100")
        await k.tick(2, "40")  # equity 700: 30 % down
        await k.tick(3, "100")  # fully recovered before the bucket ends
    (sample,) = report.equity_samples()
    assert sample.equity == 1000.0
    assert sample.low == 700.0
    assert sample.drawdown == pytest.approx(0.3)
    assert report.finish(KernelStats()).max_drawdown == pytest.approx(0.3)


@pytest.mark.trio
async def test_memory_is_bounded_by_samples_not_ticks() -> None:
    tracker = PortfolioTracker(D(10_000))
    report = SessionReport(tracker, sample_every_s=60)
    n = 20_000
    async with open_bus() as bus:
        report.attach(bus)
        price = D(100)
        for i in range(n):
            symbol = BTC if i % 2 == 0 else ETH
            price += D(1) if i % 7 < 4 else D(-1)
            tick = MarketData(symbol, "paper", price, price, price, D(1), T0 + timedelta(seconds=i))
            tracker.mark(symbol, price)
            await bus.publish(f"market.{symbol}", tick, ts=ns(i))
            if i % 100 == 0:
                await trio.lowlevel.checkpoint()
    buckets = -(-n // 60)  # one per started minute
    assert report.finish(KernelStats()).ticks == n
    assert len(report.equity_samples()) == buckets
    assert len(report.price_samples(BTC)) == buckets
    assert len(report.price_samples(ETH)) == buckets


def test_as_dict_is_json_and_as_text_is_aligned() -> None:
    s = Summary(
        ticks=500_000,
        fills=12,
        trades=5,
        wins=3,
        win_rate=0.6,
        pnl=D("1234.5678"),
        return_pct=12.345678,
        max_drawdown=0.04567,
        fees=D("12.3456"),
        starting_cash=D(10_000),
        final_equity=D("11234.5678"),
        exposure=0.25,
        avg_gross_exposure=0.8,
        orders_approved=9,
        orders_rejected=4,
        orders_resized=1,
        rejections_by_rule={"max-position": 3, "breaker": 1},
        risk_actions={"trip_breaker": 1},
        breaker_trips=1,
        strategy_errors=0,
        exchange_refusals=0,
        start=T0,
        end=T0 + timedelta(days=2, hours=3),
        duration=183_600.0,
    )
    s.wall_seconds = 40.0  # as `bot4 run` sets it
    data = json.loads(json.dumps(s.as_dict()))
    assert data["pnl"] == "1234.5678"
    assert D(data["final_equity"]) == D("11234.5678")
    assert data["ticks_per_second"] == 12_500.0
    assert data["start"] == "2024-03-01T00:00:00+00:00"
    assert data["rejections_by_rule"] == {"breaker": 1, "max-position": 3}

    text = s.as_text()
    lines = text.splitlines()
    assert lines[0] == "bot4 session summary"
    # Values start in one column.
    starts = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in lines[1:]}
    assert len(starts) == 1
    assert "+1,234.57 (+12.35%)" in text
    assert "max drawdown   4.57%" in text
    assert "fees           12.35" in text
    assert "3 won, win rate 60.00%" in text
    assert "2d 03:00:00" in text
    assert "12,500 ticks/s" in text
    assert "max-position 3, breaker 1" in text


def test_empty_report() -> None:
    report = SessionReport(PortfolioTracker(D(100)))
    s = report.finish(KernelStats())
    assert (s.ticks, s.trades, s.max_drawdown, s.exposure, s.duration) == (0, 0, 0.0, 0.0, 0.0)
    assert s.start is None
    assert "no market data" in s.as_text()
    assert report.equity_samples() == []


def test_sample_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="sample_every_s"):
        SessionReport(PortfolioTracker(D(100)), sample_every_s=0)


@pytest.mark.trio
async def test_summary_json_of_one_run_is_the_session() -> None:
    report, _ = await scripted_session()
    s = report.finish(KernelStats(resized=1), wall_seconds=2.0)
    data = json.loads(json.dumps(summary_json(s, report)))
    # The keys summary.json always had are there, unchanged.
    assert {k: v for k, v in data.items() if k not in ("this_run", "session")} == s.as_dict()
    run, session = data["this_run"], data["session"]
    assert (run["run"], run["resumed"], session["runs"]) == (1, False, 1)
    assert session["first_run_started"] is None
    for key in ("fills", "orders_approved", "orders_rejected", "breaker_trips"):
        assert run[key] == session[key] == data[key]
    assert (
        run["rejections_by_rule"]
        == session["rejections_by_rule"]
        == {
            "breaker": 1,
            "max-position": 2,
        }
    )
    assert run["equity_at_start"] == "1000"  # the first tick, before any fill
    assert run["pnl"] == session["pnl"] == "-2"
    assert session["peak_equity"] == "1019"
    assert resumed_text(data) is None


@pytest.mark.trio
async def test_summary_json_of_a_resumed_run_adds_the_earlier_runs() -> None:
    report, _ = await scripted_session()
    s = report.finish(KernelStats())
    earlier = RunHistory(
        runs=2,
        started_ns=ns(-3600),
        orders_approved=5,
        orders_rejected=2,
        rejections_by_rule={"breaker": 2},
        risk_actions={"add_margin": 3},
        breaker_trips=0,
        fills=7,
    )
    data = summary_json(s, report, earlier)
    run, session = data["this_run"], data["session"]
    assert (run["run"], run["resumed"], session["runs"]) == (3, True, 3)
    assert session["first_run_started"] == "2024-02-29T23:00:00+00:00"
    assert (run["fills"], session["fills"]) == (4, 11)
    assert (run["orders_approved"], session["orders_approved"]) == (1, 6)
    assert (run["orders_rejected"], session["orders_rejected"]) == (3, 5)
    assert session["rejections_by_rule"] == {"breaker": 3, "max-position": 2}
    assert session["risk_actions"] == {"add_margin": 3, "emergency_close": 1, "trip_breaker": 1}
    assert session["breaker_trips"] == 1
    assert data["ticks"] == run["ticks"] == 6
    assert resumed_text(data) == (
        "  resumed        run 3 of this session; all 3 runs: 11 fills, 6 approved, "
        "5 rejected, 1 breaker trips"
    )


def test_ticks_in_batches_give_the_figures_of_ticks_one_by_one() -> None:
    """The report attached to the bus takes ticks in batches (many ticks
    between two yields, as the kernel publishes them); a second report
    subscribed per event sees the same events at the same moments. Every
    sample, figure and drawdown agrees, positions open and flat, with fills
    and ticks of two symbols interleaved."""

    async def main() -> None:
        tracker = PortfolioTracker(D(1000))
        async with open_bus() as bus:
            batched = SessionReport(tracker, sample_every_s=30)
            batches: list[int] = []
            take = batched.handle_batch

            def counted(batch: EventBatch) -> None:
                batches.append(len(batch))
                take(batch)

            batched.handle_batch = counted  # type: ignore[method-assign]
            batched.attach(bus)
            one_by_one = SessionReport(tracker, sample_every_s=30)
            per_event = bus.subscribe("#", one_by_one.handle)
            t, n = 0.0, 0
            for step in range(40):
                for i in range(25):  # 25 ticks without a yield: one batch
                    t += 1.7
                    symbol = BTC if i % 3 else ETH
                    p = D(100 + (step * 7 + i * 3) % 23) + D("0.25")
                    tracker.mark(symbol, p)
                    tick = MarketData(symbol, "paper", p, p, p, D(1), T0 + timedelta(seconds=t))
                    bus.post(f"market.{symbol}", tick, ts=ns(t))
                if step % 4 in (1, 3):
                    n += 1
                    side = "buy" if step % 8 < 4 else "sell"
                    fill = Fill(f"f{n}", f"o{n}", BTC, side, D("0.5"), p, D("0.01"), T0)
                    tracker.apply(fill)
                    await bus.publish(f"fill.{BTC}", fill, ts=ns(t))
                await bus.drain()
            assert per_event.delivered == 1000 + n
            assert batches == [25] * 40  # the report really took them in batches
        a, b = batched.finish(KernelStats()), one_by_one.finish(KernelStats())
        assert a.as_dict() == b.as_dict()
        assert a.ticks == 1000
        assert batched.equity_samples() == one_by_one.equity_samples()
        for symbol in (BTC, ETH):
            assert batched.price_samples(symbol) == one_by_one.price_samples(symbol)
        assert batched.max_drawdown == one_by_one.max_drawdown > 0

    trio.run(main)


def test_a_report_behind_the_kernel_gives_the_book_as_of_each_event() -> None:
    """The report's task runs some events behind the kernel (a batch of ticks
    at a time, whenever the scheduler gets to it), so the tracker it was
    given already holds a later book. Following a copy of the tracker, it
    sees the crash between the fills, though the kernel was flat again by
    the time the report ran: the same figures on every run."""

    async def main() -> Summary:
        tracker = PortfolioTracker(D(1000))
        report = SessionReport(tracker, sample_every_s=3600)
        async with open_bus() as bus:
            report.attach(bus)
            report.follow()
            n = 0
            for t, kind, price in [
                (0, "tick", "100"),
                (1, "buy", "100"),
                (2, "tick", "40"),  # equity 700: 30 % down
                (3, "tick", "100"),
                (4, "sell", "100"),  # flat again, before the report has run
                (5, "tick", "100"),
            ]:
                p = D(price)
                if kind == "tick":
                    tracker.mark(BTC, p)
                    tick = MarketData(BTC, "paper", p, p, p, D(1), T0 + timedelta(seconds=t))
                    bus.post(f"market.{BTC}", tick, ts=ns(t))
                else:
                    n += 1
                    stamp = T0 + timedelta(seconds=t)
                    fill = Fill(f"f{n}", f"o{n}", BTC, kind, D(5), p, D(0), stamp)
                    tracker.apply(fill)
                    waiting = bus.post(f"fill.{BTC}", fill, ts=ns(t))
                    assert waiting is None  # no yield: the report has not run
            assert report.equity_samples() == []  # it really is behind
            await bus.drain()
        return report.finish(KernelStats())

    summary = trio.run(main)
    assert summary.max_drawdown == pytest.approx(0.3)
    # Exposed from the buy (1 s) to the sell (4 s), at 500 / 1000, then 200 / 700,
    # then 500 / 1000 of equity, over the 5 s span.
    assert summary.avg_gross_exposure == pytest.approx((0.5 + 200 / 700 + 0.5) / 5)


def test_follow_needs_a_tracker_to_copy() -> None:
    class Figures:
        equity = peak_equity = starting_cash = fees = D(0)

    with pytest.raises(TypeError, match="PortfolioTracker"):
        SessionReport(Figures()).follow()


def test_a_following_report_gives_the_decimal_figures_exactly() -> None:
    """A report that follows its own book reads equity in the book's integer
    units and works out the Decimal drawdown only at a new low of a bucket.
    Against a report that reads every figure as Decimals from a tracker moved
    in step (one event at a time, so it is the book as of each event), every
    sample, the worst drawdown and the summary are equal, float for float:
    a random walk of two symbols with long and short positions, flips, fees,
    quantities of many decimals and peaks that move."""
    import random

    async def main() -> None:
        rng = random.Random(13)
        reference_book = PortfolioTracker(D(1000))
        followed_book = PortfolioTracker(D(1000))
        reference = SessionReport(reference_book, sample_every_s=30)
        followed = SessionReport(followed_book, sample_every_s=30)
        async with open_bus() as step_bus, open_bus() as lag_bus:
            step_bus.subscribe("#", reference.handle)
            followed.attach(lag_bus)
            followed.follow()
            prices = {BTC: D("100.00"), ETH: D("20.000")}
            t, n = 0.0, 0
            for step in range(300):
                for _ in range(rng.randrange(1, 30)):  # a batch, behind
                    t += rng.choice((0.3, 1.1, 7.9))
                    symbol = rng.choice((BTC, ETH))
                    move = D(rng.randrange(-40, 41)) / (100 if symbol == BTC else 1000)
                    p = prices[symbol] = max(prices[symbol] + move, D("0.01"))
                    tick = MarketData(symbol, "paper", p, p, p, D(1), T0 + timedelta(seconds=t))
                    reference_book.mark(symbol, p)
                    await step_bus.publish(f"market.{symbol}", tick, ts=ns(t))
                    await step_bus.drain()
                    followed_book.mark(symbol, p)
                    lag_bus.post(f"market.{symbol}", tick, ts=ns(t))
                if step % 3 == 0:
                    n += 1
                    symbol = rng.choice((BTC, ETH))
                    qty = (
                        D(rng.randrange(1, 40_000))
                        / D(10_000_000)
                        * (1000 if symbol == BTC else 9000)
                    )
                    fill = Fill(
                        f"f{n}",
                        f"o{n}",
                        symbol,
                        rng.choice(("buy", "sell")),
                        qty,
                        prices[symbol],
                        D(rng.randrange(0, 997)) / D(100_000),
                        T0 + timedelta(seconds=t),
                    )
                    for book, bus in ((reference_book, step_bus), (followed_book, lag_bus)):
                        book.apply(fill)
                        await bus.publish(f"fill.{symbol}", fill, ts=ns(t))
                    await step_bus.drain()
                if step % 7 == 0:
                    await lag_bus.drain()
            await lag_bus.drain()
        assert followed._book is not None  # the units path was the one taken
        a, b = followed.finish(KernelStats()), reference.finish(KernelStats())
        assert a.as_dict() == b.as_dict()
        assert a.ticks > 3000
        assert a.fills == 100
        assert followed.equity_samples() == reference.equity_samples()
        assert len({s.drawdown for s in reference.equity_samples()}) > 50
        for symbol in (BTC, ETH):
            assert followed.price_samples(symbol) == reference.price_samples(symbol)
        assert followed.max_drawdown == reference.max_drawdown > 0
        assert followed.first_equity == reference.first_equity

    trio.run(main)


def test_follow_after_some_events_keeps_the_open_equity_bucket_exact() -> None:
    """follow() called once the report has read a few events from the
    tracker turns the open equity bucket into the book's units: the samples
    and the drawdown are those of a report that reads the tracker throughout."""
    from bot4.bus import Event

    tracker, twin = PortfolioTracker(D(1000)), PortfolioTracker(D(1000))
    late, reference = SessionReport(tracker, sample_every_s=60), SessionReport(twin)
    seq = 0

    def both(t: float, topic: str, payload: object) -> None:
        nonlocal seq
        seq += 1
        for report in (late, reference):
            report.handle(Event(topic, payload, ns(t), seq, f"c{seq}"))

    def tick(t: float, price: str) -> None:
        p = D(price)
        for book in (tracker, twin):
            book.mark(BTC, p)
        both(t, f"market.{BTC}", MarketData(BTC, "paper", p, p, p, D(1), T0))

    fill = Fill("f1", "o1", BTC, "buy", D("3.3"), D("100"), D("0.07"), T0)
    for book in (tracker, twin):
        book.apply(fill)
    both(1, f"fill.{BTC}", fill)
    tick(2, "97.31")  # the open bucket holds Decimals read from the tracker
    late.follow()
    for t, price in [(3, "96.02"), (4, "99.99"), (5, "95.5"), (61, "101"), (62, "90.25")]:
        tick(t, price)
    assert late.equity_samples() == reference.equity_samples()
    assert len(late.equity_samples()) == 2
    assert late.max_drawdown == reference.max_drawdown > 0
