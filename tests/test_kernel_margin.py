"""The kernel and an exchange's margin account (bot4.margin_desk), against the
real paper venue: leverage and mode set before the first entry, an entry
refused when the venue does not take its leverage, ADD_MARGIN moving
collateral (and escalating without free margin), liquidations counted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import bot4_paper
import pytest
from bot4_paper import PaperExchange

from bot4.bus import Event, open_bus
from bot4.contracts import Capability, Strategy
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.model import (
    Fill,
    MarketData,
    Rejected,
    RiskAction,
    RiskActionKind,
    Side,
    Signal,
)
from bot4.portfolio import PortfolioTracker
from bot4.report import SessionReport
from bot4.risk import RiskPolicy, default_rules_path

D = Decimal
LADDER = ("50-liquidation-ladder.yaml", "99-default.yaml")
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def ticks(prices: Sequence[str]) -> list[MarketData]:
    return [
        MarketData("BTC-USDT", "paper", D(p), D(p), D(p), D(5), T0 + timedelta(seconds=i))
        for i, p in enumerate(prices)
    ]


class Once(Strategy):
    name = "once"

    def __init__(self, *signals: Signal) -> None:
        self.signals = list(signals)

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        return [self.signals.pop(0)] if self.signals else []


def long(lev: str = "3", size: str = "0.01", stop: str = "48000") -> Signal:
    return Signal(
        symbol="BTC-USDT",
        side=Side.BUY,
        confidence=0.5,
        size=D(size),
        entry=D(50000),
        stop_loss=D(stop),
        strategy="once",
        leverage=D(lev),
    )


class Recorded(PaperExchange):
    """The paper venue, remembering the margin calls it was asked."""

    calls: list[tuple[str, ...]]

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        self.calls.append(("set_leverage", symbol, str(leverage)))
        return await super().set_leverage(symbol, leverage)

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        self.calls.append(("set_margin_mode", symbol, mode))
        await super().set_margin_mode(symbol, mode)


class RoundsDown(Recorded):
    """A venue that takes whole leverage only (as the ccxt venues do)."""

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        return await super().set_leverage(
            symbol, leverage.to_integral_value(rounding="ROUND_FLOOR")
        )


def paper(cls: type[Recorded] = Recorded, **config: Any) -> Recorded:
    base = bot4_paper.create({"balance": "100000", "slippage_bps": "0", **config})
    ex = cls(base._feed, base.engine)
    ex.calls = []
    return ex


def rules(*files: str) -> RiskPolicy:
    """The bundled policy's files by name (default: every entry approved)."""
    names = files or ("99-default.yaml",)
    return RiskPolicy.load([Path(default_rules_path()) / name for name in names])


async def run(
    exchange: PaperExchange,
    strategy: Strategy,
    balance: str = "100000",
    policy: RiskPolicy | None = None,
    report: SessionReport | None = None,
) -> tuple[Kernel, list[Event]]:
    policy = policy or rules()
    events: list[Event] = []
    async with open_bus() as bus:
        bus.subscribe("#", events.append, name="test")
        if report is not None:
            report.attach(bus)
        kernel = Kernel(
            exchange=exchange,
            strategies=[strategy],
            gate=RiskGate(policy),
            policy=policy,
            tracker=PortfolioTracker(D(balance)),
            bus=bus,
        )
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    return kernel, events


@pytest.mark.trio
async def test_mode_and_leverage_are_set_before_the_first_entry_only() -> None:
    ex = paper(feed=ticks(["50000"] * 4))
    kernel, _ = await run(ex, Once(long(), long()))
    assert ex.calls == [
        ("set_margin_mode", "BTC-USDT", "isolated"),
        ("set_leverage", "BTC-USDT", "3"),
    ]
    assert ex.engine.margin.leverage == {"BTC-USDT": D(3)}
    assert kernel.stats.fills >= 2  # both entries filled, at the leverage set once


@pytest.mark.trio
async def test_an_entry_whose_leverage_the_venue_refuses_is_rejected_unsent() -> None:
    ex = paper(feed=ticks(["50000"] * 3), max_leverage="2")
    kernel, events = await run(ex, Once(long("3")))
    rejected = [e.payload for e in events if e.topic == "risk.rejected"]
    assert [r.rule for r in rejected] == ["exchange-leverage"]
    assert "refused leverage 3" in rejected[0].reason
    assert ex.engine.fills() == []
    assert kernel.stats.approved == 0


@pytest.mark.trio
async def test_an_entry_the_venue_would_trade_at_another_leverage_is_rejected() -> None:
    ex = paper(RoundsDown, feed=ticks(["50000"] * 3))
    _, events = await run(ex, Once(long("2.5"), long("2")))
    rejected = [e.payload for e in events if e.topic == "risk.rejected"]
    assert [r.rule for r in rejected] == ["exchange-leverage"]
    assert "not the order's 2.5" in rejected[0].reason
    fills = ex.engine.fills()
    assert len(fills) == 1  # the entry at leverage 2 went, without asking again
    assert ex.calls.count(("set_leverage", "BTC-USDT", "2")) == 1


class AddMarginThen(Strategy):
    """Opens a long, then has the kernel act on an ADD_MARGIN rung."""

    name = "once"

    def __init__(self, kernel_box: list[Kernel], size: str) -> None:
        self.box = kernel_box
        self.n = 0
        self.size = size

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        self.n += 1
        if self.n == 1:
            return [long("10", self.size)]
        if self.n == 3:
            await self.box[0]._act(
                RiskAction(
                    RiskActionKind.ADD_MARGIN,
                    "BTC-USDT",
                    "liquidation-add-margin",
                    "near",
                    fraction=D("0.5"),
                )
            )
        return []


async def run_add_margin(
    prices: Sequence[str], balance: str = "100000", size: str = "0.1"
) -> tuple[Kernel, PaperExchange, list[Event]]:
    ex = paper(feed=ticks(prices), balance=balance)
    box: list[Kernel] = []
    policy = rules()
    events: list[Event] = []
    async with open_bus() as bus:
        bus.subscribe("#", events.append, name="test")
        kernel = Kernel(
            exchange=ex,
            strategies=[AddMarginThen(box, size)],
            gate=RiskGate(policy),
            policy=policy,
            tracker=PortfolioTracker(D(balance)),
            bus=bus,
        )
        box.append(kernel)
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    return kernel, ex, events


@pytest.mark.trio
async def test_add_margin_moves_collateral_into_the_position() -> None:
    kernel, ex, _ = await run_add_margin(["50000"] * 4)
    # Initial margin 0.1 * 50000 / 10 = 500; the rung adds half of it.
    assert ex.engine.margin.added == {"BTC-USDT": D(250)}
    state = ex.engine.margin_state("BTC-USDT")
    assert state is not None
    assert state.collateral == D(750)
    assert kernel.margin.added == D(250)
    assert ex.engine.tracker.qty("BTC-USDT") == D("0.1")  # not reduced


@pytest.mark.trio
async def test_add_margin_without_free_margin_escalates_to_the_next_rung() -> None:
    # 520 of balance: the 0.1 BTC long at 10x holds 500 of margin (plus a
    # 2 fee); the fall to 49500 loses 50, so nothing is free when the rung acts.
    kernel, ex, events = await run_add_margin(["50000", "49500", "49500", "49500"], balance="520")
    actions = [e.payload for e in events if e.topic == "risk.action"]
    assert [a.kind for a in actions] == [
        RiskActionKind.ADD_MARGIN,
        RiskActionKind.REDUCE_POSITION,
    ]
    assert "escalated: no free margin" in actions[-1].reason
    assert kernel.margin.escalations == 1
    assert ex.engine.margin.added == {}
    assert ex.engine.tracker.qty("BTC-USDT") == D("0.05")  # halved


@pytest.mark.trio
async def test_add_margin_on_a_cross_position_escalates() -> None:
    ex = paper(feed=ticks(["50000"] * 4))
    box: list[Kernel] = []
    policy = rules()
    async with open_bus() as bus:
        kernel = Kernel(
            exchange=ex,
            strategies=[AddMarginThen(box, "0.1")],
            gate=RiskGate(policy),
            policy=policy,
            tracker=PortfolioTracker(D(100000)),
            bus=bus,
        )
        kernel.margin.mode = "cross"
        box.append(kernel)
        await kernel.run(["BTC-USDT"])
    assert ex.engine.margin.mode == {"BTC-USDT": "cross"}
    assert kernel.margin.escalations == 1
    assert ex.engine.tracker.qty("BTC-USDT") == D("0.05")


@pytest.mark.trio
async def test_a_liquidation_on_the_venue_is_counted_and_flattens_the_book() -> None:
    # 10x long at 50000: isolated liquidation near 45226; the feed gaps to
    # 44000 (past the stop at 48000: the venue liquidates before stops
    # trigger). No ladder in this policy: nothing acts first.
    ex = paper(feed=ticks(["50000", "50000", "44000", "44000"]), attached_exits="false")
    report = SessionReport(PortfolioTracker(D(100000)))
    kernel, events = await run(ex, Once(long("10", "0.1")), report=report)
    fills = [e.payload for e in events if e.topic.startswith("fill.")]
    assert [f.liquidity for f in fills if isinstance(f, Fill)][-1] == "liquidation"
    assert kernel.stats.liquidations == 1
    assert kernel.tracker.position("BTC-USDT") is None
    assert not [e for e in events if isinstance(e.payload, Rejected)]
    # The report keeps it (the chart marks it) and the summary counts it.
    assert [f.liquidity for f in report.fills][-1] == "liquidation"
    summary = report.finish(kernel.stats)
    assert summary.liquidations == 1
    assert "1 liquidations" in summary.as_text()


@pytest.mark.trio
async def test_the_ladder_acts_before_the_venue_liquidates(tmp_path: Path) -> None:
    # The same fall with the bundled ladder: it adds margin, halves and
    # closes on the way down, and the venue never liquidates. The ladder
    # measures the venue's liquidation price, which the added margin moved
    # (to about 42713, then about 40201 for the halved position): the close
    # comes near 42300, so the fall goes on to 40250.
    prices = ["50000", "50000", *[str(50000 - 250 * i) for i in range(1, 40)]]
    ex = paper(feed=ticks(prices), attached_exits="false")
    settings = tmp_path / "00-settings.yaml"
    settings.write_text(
        "description: The liquidation facts' rate.\n"
        "settings:\n  maintenance_margin_rate: 0.005\nrules: []\n"
    )
    files = [settings, *(Path(default_rules_path()) / n for n in LADDER)]
    # The stop is below the liquidation price: only the ladder stands between.
    signal = long("10", "0.1", stop="40000")
    kernel, events = await run(ex, Once(signal), policy=RiskPolicy.load(files))
    kinds = [e.payload.kind for e in events if e.topic == "risk.action"]
    assert RiskActionKind.ADD_MARGIN in kinds
    assert RiskActionKind.EMERGENCY_CLOSE in kinds
    assert kernel.margin.added > 0
    assert kernel.stats.liquidations == 0
    assert ex.engine.margin.liquidations == []
    assert kernel.tracker.position("BTC-USDT") is None


def test_the_paper_venue_claims_margin() -> None:
    assert Capability.MARGIN in paper(feed=[]).capabilities


@pytest.mark.trio
async def test_funding_the_venue_charged_reaches_the_session_stats() -> None:
    # Ticks an hour apart from 06:00: the 08:00 funding time falls between.
    start = datetime(2024, 3, 1, 6, tzinfo=UTC)
    feed = [
        MarketData(
            "BTC-USDT", "paper", D(50000), D(50000), D(50000), D(5), start + timedelta(hours=i)
        )
        for i in range(4)
    ]
    ex = paper(feed=feed, funding_rate="0.0001")
    kernel, _ = await run(ex, Once(long("3", "0.01")))
    # A long pays 0.01 * 50000 * 0.0001 once.
    assert kernel.stats.funding_paid == D("0.05")
    assert ex.funding_paid == D("0.05")


class ConfiguredCross(Recorded):
    """A venue configured for cross margin (as the ccxt plugin's ``margin_mode``)."""

    class settings:  # the attribute the ccxt plugin has (bot4_ccxt.settings)
        margin_mode = "cross"


@pytest.mark.trio
async def test_the_mode_the_exchange_was_configured_with_is_kept() -> None:
    ex = paper(ConfiguredCross, feed=ticks(["50000"] * 3))
    await run(ex, Once(long()))
    assert ex.calls[0] == ("set_margin_mode", "BTC-USDT", "cross")
    assert ex.engine.margin.mode == {"BTC-USDT": "cross"}
