"""The risk facts take a held position's margin from the venue (issue 14,
"Facts and kernel"): liquidation price, margin, margin ratio, mark and
funding come from the exchange's margin positions when it reports them, read
by the kernel's margin desk at a bounded rate, and fall back to the formula,
safely, when it reports nothing or garbage. Against the real paper venue."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import bot4_paper
import pytest
from bot4_paper import PaperExchange

from bot4.bus import Event, open_bus
from bot4.contracts import Strategy
from bot4.errors import ExchangeFailed
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.model import MarketData, Rejected, RiskAction, RiskActionKind, Side, Signal
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path
from bot4.risk.facts import ORDER, TICK
from bot4.venue_margin import read_venue_margin

D = Decimal
T0 = datetime(2024, 3, 1, 6, tzinfo=UTC)  # 08:00 is a funding time
# 0.1 BTC long at 50000, 10x, isolated, 0.5% maintenance: the venue's
# liquidation price (W - q E) / (q r - q) with W = 500 is 4500 / 0.0995; the
# rules' formula, entry x (1 - 1/10 + 0.005), gives 45250.
VENUE_LIQ = D(4500) / D("0.0995")
FORMULA_LIQ = D(45250)

# Tick and order rules that read every margin fact and never fire.
WATCH = """\
description: Reads the margin facts (never fires).
settings:
  maintenance_margin_rate: 0.005
rules:
  - name: watch-margin
    description: Never fires.
    on: tick
    when: >
      position.margin < 0 and position.margin_ratio > 1000 and market.mark < 0 and
      position.funding_paid > 1000000000 and liquidation.distance < 0
    action:
      kind: reduce_position
      fraction: 0.5
      reason: never
  - name: order-margin
    description: Never fires.
    priority: 10
    when: >
      position.margin < 0 and position.margin_ratio > 1000 and market.mark < 0 and
      position.funding_paid > 1000000000
    reject:
      reason: never
"""


def policy_files(tmp_path: Path, *extra: str) -> RiskPolicy:
    watch = tmp_path / "05-watch.yaml"
    watch.write_text(WATCH)
    bundled = [Path(default_rules_path()) / name for name in extra]
    return RiskPolicy.load([watch, *bundled, Path(default_rules_path()) / "99-default.yaml"])


def hourly(prices: Sequence[str], step: timedelta = timedelta(hours=1)) -> list[MarketData]:
    return [
        MarketData("BTC-USDT", "paper", D(p), D(p), D(p), D(5), T0 + step * i)
        for i, p in enumerate(prices)
    ]


def long_signal(size: str = "0.1", lev: str = "10") -> Signal:
    return Signal(
        symbol="BTC-USDT",
        side=Side.BUY,
        confidence=0.5,
        size=D(size),
        entry=D(50000),
        stop_loss=D(30000),
        strategy="probe",
        leverage=D(lev),
    )


class Probe(Strategy):
    """Opens a long on the first tick, runs ``script`` steps by tick number,
    and keeps the tick facts the policy sees on every tick after the first."""

    name = "probe"

    def __init__(self, box: list[Kernel], script: dict[int, str] | None = None) -> None:
        self.box = box
        self.script = script or {}
        self.n = 0
        self.ticks: list[dict[str, Any]] = []

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        kernel = self.box[0]
        policy = kernel.policy
        assert isinstance(policy, RiskPolicy)
        snapshot = kernel.tracker.snapshot()
        self.n += 1
        if self.n > 1:
            now = tick.ts_ns
            self.ticks.append(
                dict(policy.explain(TICK, portfolio=snapshot, now_ns=now, market=tick).facts)
            )
        step = self.script.get(self.n)
        if step == "add_margin":
            await kernel._act(
                RiskAction(
                    RiskActionKind.ADD_MARGIN,
                    "BTC-USDT",
                    "liquidation-add-margin",
                    "near",
                    fraction=D("0.5"),
                )
            )
        return [long_signal()] if self.n == 1 else []


async def run(
    exchange: PaperExchange, policy: RiskPolicy, script: dict[int, str] | None = None
) -> tuple[Kernel, Probe, list[Event]]:
    events: list[Event] = []
    box: list[Kernel] = []
    probe = Probe(box, script)
    async with open_bus() as bus:
        bus.subscribe("#", events.append, name="test")
        kernel = Kernel(
            exchange=exchange,
            strategies=[probe],
            gate=RiskGate(policy),
            policy=policy,
            tracker=PortfolioTracker(D(100000)),
            bus=bus,
        )
        box.append(kernel)
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    return kernel, probe, events


def paper(cls: type[PaperExchange] = PaperExchange, **config: Any) -> Any:
    base = bot4_paper.create({"balance": "100000", "slippage_bps": "0", **config})
    return cls(base._feed, base.engine)


def close(a: object, b: Decimal | float) -> bool:
    assert isinstance(a, float)
    return math.isclose(a, float(b), rel_tol=1e-12)


@pytest.mark.trio
async def test_the_facts_are_the_venues_margin_mark_funding_and_liquidation_price(
    tmp_path: Path,
) -> None:
    # Hourly from 06:00: open at 50000; 49000 at 08:00, when funding is paid
    # (0.01% of the 0.1 BTC at its mark before, 50000); ADD_MARGIN at 09:00
    # moves 250 in.
    prices = ["50000", "50000", "49000", "49000", "49000", "49000", "49000"]
    ex = paper(feed=hourly(prices), funding_rate="0.0001", attached_exits="false")
    _, probe, _ = await run(ex, policy_files(tmp_path), script={4: "add_margin"})
    first, fallen, funded, added = probe.ticks[0], probe.ticks[1], probe.ticks[2], probe.ticks[3]
    # Opened: the venue's liquidation price, not the formula's.
    assert close(first["liquidation.price"], VENUE_LIQ)
    assert not close(first["liquidation.price"], FORMULA_LIQ)
    assert close(first["liquidation.distance"], (D(50000) - VENUE_LIQ) / D(50000))
    assert first["position.margin"] == 500.0
    assert first["market.mark"] == 50000.0
    assert first["position.funding_paid"] == 0.0
    # Maintenance 0.1 x 50000 x 0.5% over the margin balance 500.
    assert close(first["position.margin_ratio"], D(25) / D(500))
    # The price falls: the ratio follows the mark (maintenance 24.5 over 500 - 100).
    assert fallen["market.mark"] == 49000.0
    assert close(fallen["position.margin_ratio"], D("24.5") / D(400))
    assert close(fallen["liquidation.price"], VENUE_LIQ)
    # 08:00 passed: the long paid 0.1 x 50000 x 0.0001 = 0.5.
    assert first["position.funding_paid"] == 0.0
    assert fallen["position.funding_paid"] == 0.5
    assert funded["position.funding_paid"] == 0.5
    state = ex.engine.margin_state("BTC-USDT")
    assert state is not None
    assert state.funding_paid == D("0.5")
    # ADD_MARGIN (half the initial margin): the margin and the venue's
    # liquidation price move at once; the formula's would not have.
    assert added["position.margin"] == 750.0
    moved = D(4250) / D("0.0995")
    assert close(added["liquidation.price"], moved)
    assert state.liquidation_price is not None
    assert close(added["liquidation.price"], state.liquidation_price)
    assert close(added["position.margin_ratio"], D("24.5") / D(650))


@pytest.mark.trio
async def test_the_order_facts_of_the_held_position_are_the_venues(tmp_path: Path) -> None:
    ex = paper(feed=hourly(["50000"] * 5), attached_exits="false")
    kernel, _, _ = await run(ex, policy_files(tmp_path), script={3: "add_margin"})
    policy = kernel.policy
    assert isinstance(policy, RiskPolicy)
    # After the session the desk still holds the last view; ask as an order would.
    from bot4.model import Order, OrderType

    order = Order(
        client_order_id="q1",
        symbol="BTC-USDT",
        side=Side.BUY,
        type=OrderType.MARKET,
        qty=D("0.01"),
        leverage=D(10),
        stop_loss=D(30000),
    )
    tick = hourly(["50000"])[0]
    facts = policy.explain(
        ORDER, portfolio=kernel.tracker.snapshot(), now_ns=tick.ts_ns, order=order, market=tick
    ).facts
    assert facts["position.margin"] == 750.0
    assert facts["market.mark"] == 50000.0
    assert close(facts["position.margin_ratio"], D(25) / D(750))
    # The order's own liquidation facts stay the formula's, at entry.
    assert facts["liquidation.price"] == float(FORMULA_LIQ)


class Counting(PaperExchange):
    reads = 0

    async def fetch_margin_positions(self) -> Sequence[Any]:
        type(self).reads += 1
        return await super().fetch_margin_positions()


@pytest.mark.trio
async def test_the_venue_is_read_at_a_bounded_rate_not_per_tick(tmp_path: Path) -> None:
    # 1200 ticks a second apart with the position held: a read at the first
    # tick, one after the fill, then one a minute (event time).
    Counting.reads = 0
    ex = paper(Counting, feed=hourly(["50000"] * 1200, timedelta(seconds=1)))
    kernel, probe, _ = await run(ex, policy_files(tmp_path))
    assert kernel.stats.ticks == 1200
    assert 20 <= Counting.reads <= 23
    assert kernel.margin.refreshes == Counting.reads
    assert close(probe.ticks[-1]["liquidation.price"], VENUE_LIQ)


def garbage(kind: str) -> Any:
    """A venue answer of the given kind of wrong."""

    class Garbage(PaperExchange):
        async def fetch_margin_positions(self) -> Sequence[Any]:
            rows = list(await super().fetch_margin_positions())
            if kind == "fails":
                raise ExchangeFailed("timeout")
            if kind == "raises":
                raise RuntimeError("a plugin bug")
            if kind == "not-a-list":
                return 42  # type: ignore[return-value]
            if kind == "nothing":
                return []
            out = []
            for row in rows:
                if kind == "zero":
                    row = attrs.evolve(row, liquidation_price=D(0))
                elif kind == "nan":
                    row = attrs.evolve(row, liquidation_price=D("NaN"))
                elif kind == "negative":
                    row = attrs.evolve(row, liquidation_price=D(-5))
                elif kind == "infinite":
                    row = attrs.evolve(row, liquidation_price=D("Infinity"))
                elif kind == "string":
                    row = attrs.evolve(row, liquidation_price="45000")  # type: ignore[arg-type]
                elif kind == "none":
                    row = attrs.evolve(row, liquidation_price=None)
                elif kind == "twice":  # two answers for one position
                    out.append(attrs.evolve(row, liquidation_price=D(40000)))
                out.append(row)
            return out

    return Garbage


@pytest.mark.trio
@pytest.mark.parametrize(
    "kind",
    [
        "fails",
        "raises",
        "not-a-list",
        "nothing",
        "zero",
        "nan",
        "negative",
        "infinite",
        "string",
        "none",
        "twice",
    ],
)
async def test_a_venue_reporting_nothing_or_garbage_leaves_the_formula(
    kind: str, tmp_path: Path
) -> None:
    ex = paper(garbage(kind), feed=hourly(["50000", "50000", "46000"]))
    kernel, probe, _ = await run(ex, policy_files(tmp_path, "50-liquidation-ladder.yaml"))
    assert kernel.stats.ticks == 3  # no crash
    assert [t["liquidation.price"] for t in probe.ticks] == [45250.0, 45250.0]
    # At 46000 the formula's distance (1.6%) closes the position.
    assert kernel.stats.actions["emergency_close"] == 1
    if kind in ("fails", "raises", "not-a-list"):
        assert kernel.margin.refresh_failures >= 1


class FarAway(PaperExchange):
    """Reports a liquidation price its collateral cannot allow."""

    async def fetch_margin_positions(self) -> Sequence[Any]:
        rows = await super().fetch_margin_positions()
        return [attrs.evolve(r, liquidation_price=D(1)) for r in rows]


@pytest.mark.trio
async def test_a_liquidation_price_beyond_the_collateral_is_moved_to_it(tmp_path: Path) -> None:
    # A 500 margin on 0.1 BTC from 50000 is gone at 45000: the venue's
    # claim of 1 would make the position look safe all the way down.
    ex = paper(FarAway, feed=hourly(["50000", "50000", "46000"]))
    kernel, probe, _ = await run(ex, policy_files(tmp_path, "50-liquidation-ladder.yaml"))
    assert [t["liquidation.price"] for t in probe.ticks] == [45000.0, 45000.0]
    assert kernel.stats.actions["emergency_close"] == 1


class WrongSide(PaperExchange):
    """Reports a long's liquidation price above the price (being liquidated)."""

    async def fetch_margin_positions(self) -> Sequence[Any]:
        rows = await super().fetch_margin_positions()
        return [attrs.evolve(r, liquidation_price=D(60000)) for r in rows]


@pytest.mark.trio
async def test_a_liquidation_price_past_the_price_is_distance_zero(tmp_path: Path) -> None:
    # |50000 - 60000| / 50000 would read 20% from liquidation: safe. The
    # side-aware distance reads 0, and the ladder closes.
    ex = paper(WrongSide, feed=hourly(["50000", "50000", "50000"]))
    _, probe, events = await run(ex, policy_files(tmp_path, "50-liquidation-ladder.yaml"))
    assert probe.ticks[0]["liquidation.distance"] == 0.0
    actions = [e.payload for e in events if e.topic == "risk.action"]
    assert [a.kind for a in actions][:1] == [RiskActionKind.EMERGENCY_CLOSE]
    assert not [e for e in events if isinstance(e.payload, Rejected)]


class Lagging(PaperExchange):
    """Reports the position as it was before the last fill (another quantity)."""

    async def fetch_margin_positions(self) -> Sequence[Any]:
        rows = await super().fetch_margin_positions()

        @attrs.frozen
        class Row:
            symbol: str
            qty: Decimal
            liquidation_price: Decimal | None
            margin: Decimal | None

        return [Row(r.symbol, D("0.05"), D(1000), D(1)) for r in rows]


@pytest.mark.trio
async def test_an_answer_about_another_quantity_is_not_used(tmp_path: Path) -> None:
    ex = paper(Lagging, feed=hourly(["50000", "50000", "50000"]))
    _, probe, _ = await run(ex, policy_files(tmp_path))
    assert [t["liquidation.price"] for t in probe.ticks] == [45250.0, 45250.0]
    assert [t["position.margin"] for t in probe.ticks] == [500.0, 500.0]


def test_reading_a_row_never_raises_and_checks_every_figure() -> None:
    from bot4.model import Position

    position = Position("BTC-USDT", D("0.1"), D(50000), D(10))

    class Odd:
        symbol = "BTC-USDT"

        @property
        def liquidation_price(self) -> Decimal:
            raise RuntimeError("boom")

    assert read_venue_margin(Odd(), position, D(50000)) is None

    @attrs.frozen
    class Row:
        symbol: str = "BTC-USDT"
        liquidation_price: object = D(45000)
        margin: object = D(500)
        mark_price: object = D(50010)
        funding_paid: object = D("0.5")

    view = read_venue_margin(Row(), position, D(50000))
    assert view is not None
    assert view.liquidation() == D(45000)
    assert view.mark_at(D(50100)) == D(50110)  # carried by the mid's move
    for bad in (D("NaN"), D("-1"), D("1e16"), 1.5, "500", True):
        view = read_venue_margin(Row(margin=bad, mark_price=bad), position, D(50000))
        assert view is not None
        assert view.margin is None
        assert view.mark is None


def test_the_ccxt_plugins_margin_positions_are_read_too() -> None:
    from bot4_ccxt.perps import MarginPosition

    from bot4.model import Position

    held = Position("BTC-USDT-PERP", D("-0.2"), D(50000), D(5))
    row = MarginPosition(
        symbol="BTC-USDT-PERP",
        qty=D("-0.2"),
        entry_price=D(50000),
        leverage=D(5),
        margin_mode="isolated",
        liquidation_price=D(59700),
        margin=D(2000),
        mark_price=D(50020),
        unrealized_pnl=D(-4),
    )
    view = read_venue_margin(row, held, D(50010))
    assert view is not None
    assert view.liquidation() == D(59700)
    assert view.margin == view.balance == D(2000)
    assert view.mark_at(D(50010)) == D(50020)
    assert view.funding_paid is None  # ccxt's positions do not say: the fact is 0
    # A short's liquidation price beyond entry + balance / |qty| (60000) is moved to it.
    far = attrs.evolve(row, liquidation_price=D(90000))
    far_view = read_venue_margin(far, held, D(50010))
    assert far_view is not None
    assert far_view.liquidation() == D(60000)
    # The venue still shows the position before the last fill: not used.
    assert read_venue_margin(attrs.evolve(row, qty=D("-0.1")), held, D(50010)) is None


def test_a_live_recording_replays_the_venues_margin_figures(tmp_path: Path) -> None:
    """The stress example's ladder acts on the venue's liquidation prices. Its
    recording, made as if against a live venue (played back, no paper engine),
    replays to a match from the recorded ``exchange.margin`` answers; without
    them the replay falls back to the formula and decides otherwise."""
    import json

    import trio

    from bot4.recording_read import read_records
    from bot4.replay import replay
    from tests.conftest import REPO, run_bot4

    out = tmp_path / "out"
    config = Path("examples/stress/session.yaml")
    env = {"BOT4_DATABASE_URL": "", "BOT4_REDIS_URL": ""}
    result = run_bot4("run", "--config", str(config), "--out", str(out), env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    records = [r for _, r in read_records(out / "recording.jsonl.gz")]
    header = records[0]["payload"]
    header["config"]["exchange"] = "ccxt"
    header["config"]["exchange_params"] = {"exchange": "binance"}
    header["plugins"] = [
        {**p, "name": "ccxt", "plugin": "ccxt"} if p["kind"] == "exchange" else p
        for p in header["plugins"]
    ]
    answers = [r for r in records if r["topic"] == "exchange.margin"]
    assert answers
    assert any(row["liquidation_price"] for a in answers for row in a["payload"]["rows"])

    def write(name: str, chosen: list[dict[str, Any]]) -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
        return path

    live = write("live.jsonl", records)
    replayed = trio.run(replay, live)
    assert replayed.mismatch is None, replayed.mismatch
    without = write("without.jsonl", [r for r in records if r["topic"] != "exchange.margin"])
    assert trio.run(replay, without).mismatch is not None


def test_a_venues_mark_cannot_make_the_margin_ratio_look_safer() -> None:
    from bot4.model import Position
    from bot4.risk.facts import MARGIN_FACTS, margin_facts
    from bot4.venue_margin import VenueMargin

    # A 1 BTC short from 50000 at 10x (margin 5000), quoted at 52000: the
    # balance is 3000 and the maintenance 52000 x 0.5%, a ratio of 260 / 3000.
    short = Position("BTC-USDT", D(-1), D(50000), D(10))
    quote = MarketData("BTC-USDT", "paper", D(52000), D(52000), D(52000), D(1), T0)
    honest = 260 / 3000
    for mark, ratio in ((D(52000), honest), (D(1), honest), (D(53000), 265 / 2000)):
        view = VenueMargin(
            symbol="BTC-USDT",
            position=short,
            liquidation_price=None,
            margin=None,
            balance=None,
            maintenance_rate=None,
            mark=mark,
            mid=D(52000),
            funding_paid=None,
        )
        facts: dict[str, object] = {}
        margin_facts(MARGIN_FACTS, facts, short, quote, D(52000), D("0.005"), view)
        assert facts["market.mark"] == mark
        assert math.isclose(float(facts["position.margin_ratio"]), ratio, rel_tol=1e-12)  # type: ignore[arg-type]


def test_the_desk_plans_reads_at_the_funding_times_of_next_funding_time() -> None:
    # The desk plans in integer ns; the reference is the datetime function
    # of the whole second, around the epoch, at and beside funding times.
    import random

    from bot4.margin import next_funding_ns, next_funding_time

    step = 8 * 3600 * 10**9
    rng = random.Random(3)
    samples = [rng.randrange(-(10**18), 10**19) for _ in range(5000)]
    for k in (-2, -1, 0, 1, 2, 19_783):
        samples += [k * step + d for d in (-(10**9), -1, 0, 1, 10**9 - 1, 10**9)]
    for now_ns in samples:
        second = datetime.fromtimestamp(now_ns // 10**9, tz=UTC)
        want = int(next_funding_time(second).timestamp()) * 10**9
        assert next_funding_ns(now_ns) == want, now_ns


def test_holds_any_says_whether_a_position_is_open() -> None:
    from bot4.model import Fill

    book = PortfolioTracker(Decimal(1000))
    assert not book.holds_any()
    when = datetime(2024, 1, 1, tzinfo=UTC)
    book.apply(Fill("f1", "c1", "BTC-USDT", "buy", Decimal(1), Decimal(100), Decimal(0), when))
    assert book.holds_any()
    book.apply(Fill("f2", "c2", "BTC-USDT", "sell", Decimal(1), Decimal(101), Decimal(0), when))
    assert not book.holds_any()
