"""No position without protection (bot4.protection).

Against the real kernel, the real default policy and the real paper venue,
narrowed where a test needs an exchange without stop orders (as a plugin made
with ``bot4 plugins new`` is): the kernel never sends such an exchange a stop,
holds the stop itself and closes at it; a protective order that is refused or
fails closes the position or halts new entries; held stops survive a restart
through the journal; the session says which protection is in force; and the
conformance kit fails an exchange that claims a capability it does not honour.
"""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs
import bot4_correlation
import pytest
import trio
from bot4_paper import PaperExchange

from bot4.bus import Event, open_bus
from bot4.contracts import Capability, Exchange, Strategy
from bot4.errors import ExchangeUnavailable, InvalidOrder
from bot4.gate import RiskGate
from bot4.journal import open_store
from bot4.journal.service import JournalService
from bot4.kernel import Kernel
from bot4.model import MarketData, Order, OrderState, OrderType, RiskAction, Side, Signal
from bot4.portfolio import PortfolioTracker
from bot4.report import SessionReport
from bot4.risk import RiskPolicy, default_rules_path
from bot4.scaffold import new_plugin
from bot4.session import SessionConfig, SessionContext
from bot4.testing import CHECKS, CheckSkipped, ConformanceError, FeedHarness
from bot4.testing.exchange import run_check
from tests.conftest import REPO, run_bot4, write_ticks
from tests.journalkit import PG_URL, fresh_schema
from tests.testing_kit import wrong

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)
BTC = "BTC-USDT"
NO_STOPS = frozenset(
    {
        Capability.MARKET_ORDERS,
        Capability.LIMIT_ORDERS,
        Capability.POSITIONS,
        Capability.STREAMING,
        Capability.PARTIAL_FILLS,
    }
)


def tick(i: int, bid: str, ask: str | None = None) -> MarketData:
    b = D(bid)
    a = D(ask) if ask is not None else b + 1
    return MarketData(
        symbol=BTC,
        exchange="paper",
        bid=b,
        ask=a,
        last=(a + b) / 2,
        volume=D(5),
        timestamp=T0 + timedelta(seconds=i),
    )


def flat(bids: Iterable[str], start: int = 0) -> list[MarketData]:
    return [tick(start + i, b) for i, b in enumerate(bids)]


def entry(side: Side = Side.BUY, stop: str = "49000", take: str | None = None) -> Signal:
    return Signal(
        symbol=BTC,
        side=side,
        confidence=0.5,
        size=D("0.002"),
        entry=D("50000"),
        stop_loss=D(stop),
        take_profit=D(take) if take else None,
        strategy="scripted",
    )


class Scripted(Strategy):
    """Emits the given signals on the given tick numbers (1-based)."""

    name = "scripted"

    def __init__(self, plan: dict[int, Sequence[Signal]]) -> None:
        self.plan = plan
        self.seen = 0

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        self.seen += 1
        return self.plan.get(self.seen, ())


class HaltsAt(Scripted):
    """Scripted, and pulls the kill switch on tick ``halt_at`` (as an operator
    or the shared kill switch does from another task)."""

    def __init__(self, plan: dict[int, Sequence[Signal]], halt_at: int) -> None:
        super().__init__(plan)
        self.halt_at = halt_at
        self.kernel: Kernel | None = None

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        signals = await super().on_market_data(tick)
        if self.seen == self.halt_at and self.kernel is not None:
            await self.kernel.halt("operator")
        return signals


def paper_config(feed: Any, **extra: Any) -> dict[str, Any]:
    return {"feed": feed, "balance": "100000", "slippage_bps": "0", **extra}


class NoStops(PaperExchange):
    """An honest venue without stop orders, like a scaffolded plugin: it claims
    market and limit orders only, refuses the rest, attaches no exits."""

    name = "nostops"

    def __init__(self, feed: Any, **extra: Any) -> None:
        base = PaperExchange.from_config(paper_config(feed, attached_exits=False, **extra))
        super().__init__(base._feed, base.engine)
        self.capabilities = NO_STOPS
        self.sent: list[Order] = []

    async def place_order(self, order: Order) -> OrderState:
        self.sent.append(order)
        if order.type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT):
            raise InvalidOrder(f"nostops does not support {order.type.value} orders")
        return await super().place_order(order)


class RefusesStops(PaperExchange):
    """Claims STOP_ORDERS, but every stop is refused (or fails on the wire);
    the first ``refuse_closes`` reduce-only market orders are refused too."""

    name = "refusesstops"

    def __init__(self, feed: Any, *, failed: bool = False, refuse_closes: int = 0) -> None:
        base = PaperExchange.from_config(paper_config(feed, attached_exits=False))
        super().__init__(base._feed, base.engine)
        self.failed = failed
        self.refuse_closes = refuse_closes
        self.sent: list[Order] = []

    async def place_order(self, order: Order) -> OrderState:
        self.sent.append(order)
        if order.type is OrderType.STOP_LOSS:
            if self.failed:
                raise ExchangeUnavailable("stop endpoint down")
            raise InvalidOrder("stop orders are disabled for this account")
        if order.reduce_only and order.type is OrderType.MARKET and self.refuse_closes > 0:
            self.refuse_closes -= 1
            raise InvalidOrder("reduce-only orders are disabled for this account")
        return await super().place_order(order)


def policy() -> RiskPolicy:
    return RiskPolicy.load([default_rules_path()], [bot4_correlation.factory({})])


class Run:
    """One kernel session against ``exchange``, every bus event kept."""

    def __init__(self, exchange: Exchange, plan: dict[int, Sequence[Signal]]) -> None:
        self.exchange = exchange
        self.strategy = Scripted(plan)
        self.policy = policy()
        self.tracker = PortfolioTracker(D(100000))
        self.events: list[Event] = []
        self.lines: list[str] = []
        self.report = SessionReport(self.tracker)

    def kernel(self, bus: Any) -> Kernel:
        bus.subscribe("#", self.events.append, name="test")
        self.report.attach(bus)
        kernel = Kernel(
            exchange=self.exchange,
            strategies=[self.strategy],
            gate=RiskGate(self.policy),
            policy=self.policy,
            tracker=self.tracker,
            bus=bus,
            packs=[],
        )
        kernel.announce = self.lines.append
        if isinstance(self.strategy, HaltsAt):
            self.strategy.kernel = kernel
        return kernel

    async def go(self) -> Kernel:
        async with open_bus() as bus:
            kernel = self.kernel(bus)
            await kernel.run([BTC])
            await bus.drain()
        return kernel

    async def go_journaled(
        self, target: str, out: Path, schema: str | None = None
    ) -> tuple[Kernel, JournalService]:
        service = JournalService(target, schema=schema)
        async with open_bus() as bus:
            kernel = self.kernel(bus)
            config = SessionConfig(out=str(out), record=False, journal=target)
            ctx = SessionContext(
                config,
                None,  # type: ignore[arg-type]  # the journal does not use the plugin manager
                self.exchange,
                self.policy,
                self.tracker,
                kernel.gate,
                bus,
                kernel,
                out,
            )
            async with trio.open_nursery() as nursery:
                await service(ctx, nursery)
                await kernel.run([BTC])
                await bus.drain()
                nursery.cancel_scope.cancel()
        return kernel, service

    def topics(self, prefix: str) -> list[Any]:
        return [e.payload for e in self.events if e.topic.startswith(prefix)]

    def placed(self, tag: str) -> list[OrderState]:
        return [s for s in self.topics("order.placed") if f"-{tag}-" in s.order.client_order_id]

    def tick_before(self, client_order_id: str) -> MarketData:
        """The last tick published before the order went out."""
        last: MarketData | None = None
        for e in self.events:
            if e.topic.startswith("market."):
                last = e.payload
            if e.topic == "order.placed" and e.payload.order.client_order_id == client_order_id:
                assert last is not None
                return last
        raise AssertionError(f"{client_order_id} was never placed")


def qty(run: Run) -> Decimal:
    position = run.tracker.position(BTC)
    return D(0) if position is None else position.qty


# --- an exchange without stop orders: the kernel holds the stop --------------------------


@pytest.mark.trio
@pytest.mark.parametrize("side", [Side.BUY, Side.SELL], ids=["long-bid", "short-ask"])
async def test_without_stop_orders_the_kernel_holds_the_stop_and_closes_at_it(side: Side) -> None:
    long = side is Side.BUY
    stop = "49000" if long else "51000"
    if long:
        # The ask and the middle go below the stop first, the bid only on tick 7.
        moves = [tick(5, "49000.5", "49100"), tick(6, "49001", "49002"), tick(7, "49000")]
    else:
        # The bid stays below the stop; the ask reaches it on tick 7.
        moves = [tick(5, "50950", "50999.5"), tick(6, "50900", "50998"), tick(7, "50990", "51000")]
    ticks = flat(["50000"] * 5) + moves + flat(["50000"] * 3, start=8)
    run = Run(NoStops(ticks), {2: [entry(side, stop)]})
    kernel = await run.go()
    exchange = run.exchange
    assert isinstance(exchange, NoStops)
    # Never a stop or take-profit order: only the entry and the close, both market.
    assert [(o.type, o.reduce_only) for o in exchange.sent] == [
        (OrderType.MARKET, False),
        (OrderType.MARKET, True),
    ]
    (close,) = run.placed("hs")
    assert close.order.side is (Side.SELL if long else Side.BUY)
    assert close.order.qty == D("0.002")  # the whole position
    trigger = run.tick_before(close.order.client_order_id)
    assert trigger.timestamp == T0 + timedelta(seconds=7)
    assert (trigger.bid if long else trigger.ask) == D(stop)
    assert qty(run) == 0
    assert kernel.stats.protection == "kernel-held stops"
    assert kernel.stats.protection_failures == 0


@pytest.mark.trio
async def test_a_held_take_profit_closes_at_the_bid_and_is_no_stop_out() -> None:
    ticks = flat(["50000"] * 5 + ["51999", "52000", "50000", "50000"])
    run = Run(NoStops(ticks), {2: [entry(Side.BUY, "49000", take="52000")]})
    kernel = await run.go()
    (close,) = run.placed("ht")
    assert run.tick_before(close.order.client_order_id).bid == D(52000)
    assert close.order.reduce_only
    assert close.order.qty == D("0.002")
    assert qty(run) == 0
    assert not kernel.protection.is_stop_out(close.order.client_order_id)
    assert run.placed("hs") == []


@pytest.mark.trio
async def test_an_entry_against_the_position_keeps_its_stop_until_it_flips() -> None:
    def sized(side: Side, size: str, stop: str) -> Signal:
        return attrs.evolve(entry(side, stop), size=D(size))

    # Long 0.004 (stop 49,000), a sell of 0.002 with its own stop above: the
    # rest of the long keeps 49,000 (the sell's stop would close it at once).
    ticks = flat(["50000"] * 6 + ["48900", "50000"])
    plan = {2: [sized(Side.BUY, "0.004", "49000")], 4: [sized(Side.SELL, "0.002", "51000")]}
    run = Run(NoStops(ticks), plan)
    await run.go()
    (close,) = run.placed("hs")
    assert close.order.qty == D("0.002")
    assert run.tick_before(close.order.client_order_id).bid == D(48900)
    # A sell of 0.004 against a long of 0.002 flips it: the short takes the
    # sell's stop, against the ask.
    ticks = [*flat(["50000"] * 6), tick(6, "50990", "51000"), tick(7, "50000")]
    plan = {2: [sized(Side.BUY, "0.002", "49000")], 4: [sized(Side.SELL, "0.004", "51000")]}
    run = Run(NoStops(ticks), plan)
    await run.go()
    (close,) = run.placed("hs")
    assert (close.order.side, close.order.qty) == (Side.BUY, D("0.002"))
    assert run.tick_before(close.order.client_order_id).ask == D(51000)
    assert qty(run) == 0


@pytest.mark.trio
async def test_three_held_stop_outs_trip_the_breaker() -> None:
    cycle = ["50000"] * 4 + ["48900"] + ["50000"] * 5
    ticks = flat(cycle * 4)
    plan = {n: [entry()] for n in (2, 12, 22, 32)}
    run = Run(NoStops(ticks), plan)
    kernel = await run.go()
    assert len(run.placed("hs")) == 3
    assert kernel.stats.breaker_trips == 1
    (trip,) = [a for a in run.topics("risk.action") if a.kind.value == "trip_breaker"]
    assert "3 stop-outs within an hour" in trip.reason
    assert [r.rule for r in run.topics("risk.rejected")] == ["breaker-tripped"]


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "sqlite":
        yield str(tmp_path / "journal.sqlite"), None
        return
    for schema in fresh_schema():
        open_store(PG_URL, schema=schema, migrate=True).close()
        yield PG_URL, schema


def test_a_held_stop_survives_a_restart_through_the_journal(
    tmp_path: Path, journal: tuple[str, str | None]
) -> None:
    target, schema = journal
    venue = tmp_path / "venue.sqlite"
    first = Run(NoStops(flat(["50000"] * 5), state=str(venue)), {2: [entry(take="53000")]})
    trio.run(first.go_journaled, target, tmp_path / "one", schema)
    assert qty(first) == D("0.002")  # the session ended with the long open
    store = open_store(target, schema=schema)
    try:
        saved = store.state()["protection:BTC-USDT"]
        assert store.verify().ok
    finally:
        store.close()
    assert (saved["side"], saved["stop_loss"], saved["take_profit"]) == ("buy", "49000", "53000")

    # A new process: nothing in memory, the venue and the journal on disk. The
    # strategy says nothing; only the restored stop can close the position.
    later = flat(["50000", "49500", "48900", "50000"], start=10)
    second = Run(NoStops(later, state=str(venue)), {})
    kernel, service = trio.run(second.go_journaled, target, tmp_path / "two", schema)
    assert service.report is not None
    assert service.report.protected == 1
    (close,) = second.placed("hs")
    assert second.tick_before(close.order.client_order_id).bid == D("48900")
    assert qty(second) == 0
    assert kernel.stats.ticks == 4


def test_a_held_stop_survives_sigkill_and_resume(tmp_path: Path) -> None:
    def driver(phase: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.test_guarantees.protection_driver", str(tmp_path), phase],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )

    killed = driver("enter")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = driver("resume")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["positions"] == {BTC: "0.002"}  # the long survived the kill
    assert result["protected"] == 1
    assert result["closes"] == [{"qty": "0.002", "bid": "48900"}]
    assert result["qty"] == "0"


def test_a_position_with_no_protection_record_takes_its_entrys_stop(tmp_path: Path) -> None:
    # A crash right after the entry's intent: no protection record yet, but the
    # journaled intent carries the stop.
    venue, journal = tmp_path / "venue.sqlite", str(tmp_path / "journal.sqlite")
    first = Run(NoStops(flat(["50000"] * 5), state=str(venue)), {2: [entry()]})
    trio.run(first.go_journaled, journal, tmp_path / "one")
    store = open_store(journal)
    try:
        with store._tx() as tx:
            tx.execute("DELETE FROM journal_state WHERE key LIKE 'protection:%'")
    finally:
        store.close()
    second = Run(NoStops(flat(["50000", "48900"], start=10), state=str(venue)), {})
    trio.run(second.go_journaled, journal, tmp_path / "two")
    assert len(second.placed("hs")) == 1
    assert qty(second) == 0


# --- fail closed: a protective order refused or failed -----------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("failed", [False, True], ids=["refused", "failed"])
async def test_a_refused_or_failed_stop_closes_the_position(failed: bool) -> None:
    ticks = flat(["50000"] * 6)
    run = Run(RefusesStops(ticks, failed=failed), {2: [entry()]})
    kernel = await run.go()
    exchange = run.exchange
    assert isinstance(exchange, RefusesStops)
    kinds = [(o.type, o.reduce_only) for o in exchange.sent]
    assert kinds[0] == (OrderType.MARKET, False)  # the entry
    assert (OrderType.STOP_LOSS, True) in kinds  # the stop it tried
    assert kinds[-1] == (OrderType.MARKET, True)  # the close
    assert qty(run) == 0
    (action,) = [a for a in run.topics("risk.action") if isinstance(a, RiskAction)]
    assert (action.kind.value, action.symbol, action.rule) == ("emergency_close", BTC, "protection")
    errors = run.topics("kernel.error")
    assert any("unprotected, closing it" in e for e in errors)
    assert kernel.stats.protection_failures == 1
    assert kernel.halted is None  # closed, so trading goes on
    summary = run.report.finish(kernel.stats)
    assert summary.protection == "exchange stop orders"
    assert summary.protection_failures == 1
    assert summary.risk_actions == {"emergency_close": 1}
    assert "1 failures" in summary.as_text()


@pytest.mark.trio
async def test_when_the_close_fails_too_entries_halt_and_the_kernel_holds_the_stop() -> None:
    ticks = flat(["50000"] * 6 + ["48900", "50000"])
    plan = {2: [entry()], 5: [entry()]}
    run = Run(RefusesStops(ticks, refuse_closes=1), plan)
    kernel = await run.go()
    assert kernel.halted is not None
    assert kernel.halted.startswith("protection: the close")
    assert run.topics("kernel.halted") == [kernel.halted]
    # The second entry was refused by the halt; the stop held by the kernel
    # closed the first one when the bid went through it.
    assert [r.rule for r in run.topics("risk.rejected")] == ["kill-switch"]
    (close,) = run.placed("hs")
    assert run.tick_before(close.order.client_order_id).bid == D(48900)
    assert qty(run) == 0
    assert kernel.stats.protection_failures == 2  # the stop, then its close


@pytest.mark.trio
async def test_a_stop_order_cancelled_by_the_kill_switch_is_held_by_the_kernel() -> None:
    ticks = flat(["50000"] * 6 + ["48900", "50000"])
    exchange = PaperExchange.from_config(paper_config(ticks, attached_exits=False))
    run = Run(exchange, {})
    run.strategy = HaltsAt({2: [entry()]}, halt_at=4)
    kernel = await run.go()
    assert kernel.halted == "operator"
    (stop,) = [s for s in run.topics("order.placed") if s.order.type is OrderType.STOP_LOSS]
    cancelled = [
        s
        for s in run.topics("order.update")
        if s.order.client_order_id == stop.order.client_order_id
    ]
    assert cancelled[-1].status.value == "canceled"
    # The venue's stop is gone; the kernel's own check closed the long at it.
    (close,) = run.placed("hs")
    assert run.tick_before(close.order.client_order_id).bid == D(48900)
    assert qty(run) == 0


# --- the session says which protection is used ------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize(
    ("make", "line"),
    [
        (
            lambda f: PaperExchange.from_config(paper_config(f)),
            "protection: exchange-attached exits (paper)",
        ),
        (
            lambda f: PaperExchange.from_config(paper_config(f, attached_exits=False)),
            "protection: exchange stop orders (paper); take-profits as exchange orders",
        ),
        (
            NoStops,
            "protection: kernel-held stops (nostops has no stop orders): checked on every "
            "tick, a long against the bid, a short against the ask",
        ),
    ],
    ids=["attached", "stop-orders", "kernel-held"],
)
async def test_the_session_start_says_which_protection_is_used(make: Any, line: str) -> None:
    run = Run(make(flat(["50000"] * 2)), {})
    await run.go()
    assert run.lines == [line]


def test_bot4_run_prints_the_protection_mode_at_start(tmp_path: Path) -> None:
    data = write_ticks(tmp_path / "ticks.csv", seconds=300)
    config = tmp_path / "session.yaml"
    config.write_text("exchange: {name: paper, attached_exits: false}\n")
    result = run_bot4(
        "run",
        "--data",
        str(data),
        "--config",
        str(config),
        "--out",
        str(tmp_path / "o"),
        "--no-chart",
    )
    assert result.returncode == 0, result.stderr
    assert "protection: exchange stop orders (paper)" in result.stderr
    assert "protection" in result.stdout  # and the summary's line


# --- the conformance kit and the scaffold -------------------------------------------------


@pytest.mark.parametrize(
    ("check", "exchange", "message"),
    [
        ("stop_orders", wrong.ClaimsStops, "refused with InvalidOrder"),
        ("take_profit_orders", wrong.ClaimsTakeProfits, "claims Capability.TAKE_PROFIT_ORDERS"),
        ("attached_exits", wrong.ClaimsAttachedExits, "Capability.ATTACHED_EXITS means"),
        ("no_unclaimed_exits", wrong.SilentExits, "does not claim Capability.ATTACHED_EXITS"),
    ],
)
def test_the_kit_fails_an_exchange_that_does_not_honour_its_claims(
    check: str, exchange: Any, message: str
) -> None:
    with pytest.raises(ConformanceError, match=message):
        trio.run(run_check, CHECKS[check], lambda: FeedHarness(exchange))
    # The reference passes the same check: paper, without exits when the
    # check is about an exchange that does not claim them.
    honest = (
        (lambda feed: PaperExchange.from_config({"feed": feed, "attached_exits": False}))
        if check == "no_unclaimed_exits"
        else PaperExchange
    )
    trio.run(run_check, CHECKS[check], lambda: FeedHarness(honest))


@pytest.fixture
def scaffolded(tmp_path: Path) -> Iterator[type[Exchange]]:
    root = new_plugin("exchange", "protkit", tmp_path)
    sys.path.insert(0, str(root / "src"))
    try:
        module = importlib.import_module("bot4_protkit.exchange")
        yield module.ProtkitExchange
    finally:
        sys.path.remove(str(root / "src"))
        for name in [m for m in sys.modules if m.startswith("bot4_protkit")]:
            del sys.modules[name]


def test_a_scaffolded_exchange_claims_only_what_it_does_and_gets_kernel_held_stops(
    scaffolded: type[Exchange],
) -> None:
    caps = scaffolded.capabilities
    assert not caps & {
        Capability.STOP_ORDERS,
        Capability.TAKE_PROFIT_ORDERS,
        Capability.ATTACHED_EXITS,
    }
    for check in ("no_unclaimed_exits", "unclaimed_order_types", "market_order_fills"):
        trio.run(run_check, CHECKS[check], lambda: FeedHarness(scaffolded))
    ticks = flat(["50000"] * 5 + ["48900", "50000"])
    exchange = scaffolded.from_config(paper_config(ticks))  # type: ignore[attr-defined]
    run = Run(exchange, {2: [entry()]})
    kernel = trio.run(run.go)
    assert run.lines[0].startswith("protection: kernel-held stops (protkit has no stop orders)")
    assert kernel.stats.exchange_refusals == 0  # no stop was ever sent to be refused
    assert len(run.placed("hs")) == 1
    assert qty(run) == 0


# --- ccxt on spot: stop orders claimed only where the venue has them ----------------------


@pytest.mark.parametrize(
    ("order_types", "line"),
    [
        (("LIMIT", "MARKET", "STOP_LOSS", "TAKE_PROFIT"), "exchange stop orders (ccxt-binance)"),
        (("LIMIT", "MARKET"), "kernel-held stops (ccxt-binance has no stop orders)"),
    ],
    ids=["stop-loss-listed", "no-stop-loss"],
)
def test_ccxt_on_spot_claims_stops_only_where_the_symbol_has_them(
    order_types: tuple[str, ...], line: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot4_ccxt import CcxtExchange
    from bot4_ccxt.fakebinance import API_KEY, SECRET, FakeBinance
    from bot4_ccxt.harness import KEY_ENV, SECRET_ENV, plugin_config

    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    held = "STOP_LOSS" not in order_types
    bids = ["50000"] * 8 + ["48900"] * 6
    with FakeBinance(order_types=order_types) as venue:
        venue.push(tick(0, "50000"))
        venue.feed(flat(bids, start=1), interval=0.1)
        exchange = CcxtExchange.from_config(plugin_config(venue, poll_interval=0.02, max_idle=1.0))
        run = Run(exchange, {2: [entry(stop="49000")]})
        kernel = trio.run(run.go)
    assert len(run.lines) == 1
    assert run.lines[0].startswith(f"protection: {line}")
    assert (Capability.STOP_ORDERS in exchange.capabilities) is not held
    stops = [s for s in run.topics("order.placed") if s.order.type is OrderType.STOP_LOSS]
    assert kernel.stats.exchange_refusals == 0  # never a stop the venue refuses
    if held:
        assert stops == []
        assert len(run.placed("hs")) == 1  # the kernel closed at its held stop
    else:
        assert len(stops) == 1  # the venue's own stop order protects the position
    assert qty(run) == 0


def test_the_kit_holds_ccxt_to_the_order_types_of_its_symbols() -> None:
    from bot4_ccxt.harness import FakeBinanceHarness

    def spot_without_stops() -> FakeBinanceHarness:
        return FakeBinanceHarness(order_types=("LIMIT", "MARKET"))

    with pytest.raises(CheckSkipped, match=r"does not claim Capability\.STOP_ORDERS"):
        trio.run(run_check, CHECKS["stop_orders"], spot_without_stops)
    # What it no longer claims it refuses (ExchangeRefused), rather than half-doing it.
    trio.run(run_check, CHECKS["unclaimed_order_types"], spot_without_stops)
