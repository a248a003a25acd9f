"""Held-position monitoring by price band (bot4.risk.band, issue 13): the
actions with bands are exactly those of asking the engine on every tick.

The differential test runs two policies compiled from the same files side by
side: one through ``on_tracked_tick`` (bands), one through ``on_market_data``
on every tick (the engine path as before). Random books (cash, one to three
positions of either side and any leverage), the default rules with random
parameters (ladder rungs, drawdown limit, maintenance margin) plus a random
extra tick rule, and prices drawn at random, at each band edge and the
neighbouring doubles (``math.nextafter``) on both sides of it, and at and next
to the prices where a rule starts to fire. Fills, ticks of other held symbols,
breaker resets and new venue margin figures (a liquidation price the venue
reports, replacing the formula's, as the kernel's margin desk hands them to
the policy) are interleaved. Every tick, both give the same actions and the
breakers agree."""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import bot4_correlation
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bot4.risk.policy as policy_module
from bot4.model import Fill, MarketData, RiskAction
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy, default_rules_path
from bot4.risk.band import BAND_MARGIN
from bot4.venue_margin import VenueMargin

D = Decimal
TS = datetime(2024, 1, 1, tzinfo=UTC)
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")


@contextmanager
def _policies(
    params: dict[str, float], mmr: float, extra: str | None
) -> Iterator[tuple[RiskPolicy, RiskPolicy]]:
    """Two policies from the default rules with ``params`` (and ``mmr``)
    written into them, and ``extra`` as one more rule file."""
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        shutil.copytree(default_rules_path(), rules)
        for path in rules.glob("*.yaml"):
            text = path.read_text()
            # Rounded: a parameter is a number as a person writes it.
            values = {**params, "maintenance_margin_rate": mmr}
            # Fixed-point text: repr would write 1e-05, which YAML reads as a string.
            for name, value in {k: round(v, 6) for k, v in values.items()}.items():
                text = re.sub(
                    rf"^(\s+{name}:)\s*[0-9.]+", rf"\g<1> {value:.6f}", text, flags=re.MULTILINE
                )
            path.write_text(text)
        if extra is not None:
            (rules / "60-extra.yaml").write_text(extra)
        packs = [bot4_correlation.CorrelationPack()]
        banded = RiskPolicy.load([rules], packs)
        reference = RiskPolicy.load([rules], [bot4_correlation.CorrelationPack()])
        try:
            yield banded, reference
        finally:
            banded.close()
            reference.close()


def _extra_rule(fact: str, op: str, bound: float) -> str:
    return (
        "description: A random extra tick rule.\n"
        "rules:\n"
        "  - name: extra-tick-rule\n"
        "    description: Random.\n"
        "    on: tick\n"
        f"    when: {fact} {op} {bound!r}\n"
        "    action:\n"
        "      kind: reduce_position\n"
        "      fraction: 0.5\n"
        '      reason: "extra rule"\n'
    )


def _tick(symbol: str, price: Decimal) -> MarketData:
    spread = price * D("0.0001")
    return MarketData(symbol, "test", price - spread, price + spread, price, D(1), TS)


def _price(value: float) -> Decimal | None:
    """A float price as the Decimal a feed would give (exactly that double),
    or None when it is not a valid price."""
    if not math.isfinite(value) or value <= 1e-6 or value > 1e9:
        return None
    return Decimal(value)


class Session:
    """The kernel's steps for one tick or fill, on both policies."""

    def __init__(self, banded: RiskPolicy, reference: RiskPolicy, cash: Decimal) -> None:
        self.banded, self.reference = banded, reference
        self.tracker = PortfolioTracker(cash)
        self.now = 0
        self.ticks = 0
        self.fills = 0
        # The venue's margin views, shared with both policies (the margin desk's).
        self.views: dict[str, VenueMargin] = {}
        banded.venue_margins = reference.venue_margins = self.views

    def venue(self, symbol: str, move: float, price: Decimal) -> None:
        """The venue reports new figures for ``symbol``: a liquidation price
        ``move`` away from the formula's (None when that is not a price)."""
        position = self.tracker.position(symbol)
        if position is None:
            return
        reach = position.entry_price * D(str(round(1 + move, 3))) / position.leverage
        liq = position.entry_price - reach if position.qty > 0 else position.entry_price + reach
        self.views[symbol] = VenueMargin(
            symbol=symbol,
            position=position,
            liquidation_price=liq if liq > 0 else None,
            margin=position.margin(),
            balance=None,
            maintenance_rate=None,
            mark=price,
            mid=price,
            funding_paid=D(0),
        )

    def fill(self, symbol: str, side: str, qty: Decimal, price: Decimal, leverage: Decimal) -> None:
        self.fills += 1
        self.now += 1_000_000_000
        fill = Fill(f"f{self.fills}", f"c{self.fills}", symbol, side, qty, price, D(0), TS)
        self.tracker.apply(fill, leverage=leverage)
        self.views.pop(symbol, None)  # as the margin desk does: the view was of the old position
        snapshot = self.tracker.snapshot()
        got = self.banded.on_fill(fill, snapshot, self.now, False)
        want = self.reference.on_fill(fill, snapshot, self.now, False)
        assert got == want

    def tick(self, symbol: str, price: Decimal) -> list[RiskAction]:
        self.ticks += 1
        self.now += 1_000_000_000
        tick = _tick(symbol, price)
        self.tracker.mark(symbol, tick.last)  # as the kernel does, before the policy
        got = self.banded.on_tracked_tick(tick, self.tracker, self.now)
        if self.tracker.position(symbol) is None:
            want: list[RiskAction] = []
        else:
            want = self.reference.on_market_data(tick, self.tracker.snapshot(), self.now)
        assert got == want, (symbol, price, self.banded._bands.get(symbol))
        assert self.banded.breaker.tripped == self.reference.breaker.tripped
        return got

    def probes(self, symbol: str) -> list[Decimal]:
        """Prices at and next to the symbol's band edges, both sides."""
        band = self.banded._bands.get(symbol)
        if band is None:
            return []
        out: list[Decimal] = [band.low, band.high]
        for edge in (float(band.low), float(band.high)):
            # The edge's own double, the doubles next to it, and the prices a
            # relative margin away (just inside and just outside the edge's
            # solved crossing).
            values = [edge, math.nextafter(edge, 0), math.nextafter(edge, math.inf)]
            values += [edge * (1 + k * BAND_MARGIN) for k in (-2, 0.5, 1, 1.5, 2, 3)]
            values += [edge * (1 - k * BAND_MARGIN) for k in (0.5, 1, 1.5, 2, 3)]
            for v in values:
                p = _price(v)
                if p is not None:
                    out.append(p)
        out += [band.low.next_minus(), band.low.next_plus()]
        out += [band.high.next_minus(), band.high.next_plus()]
        return [p for p in out if p > 0]


PARAMS = st.fixed_dictionaries(
    {
        "emergency_below": st.floats(0.001, 0.3),
        "reduce_below": st.floats(0.001, 0.4),
        "add_margin_below": st.floats(0.001, 0.5),
        "max_drawdown": st.floats(0.001, 0.9),
    }
)
POSITION = st.tuples(
    st.sampled_from(["buy", "sell"]),
    st.decimals(D("0.001"), D("50"), places=3),  # qty
    st.decimals(D("1"), D("90000"), places=2),  # entry price
    st.sampled_from([D(1), D(2), D(3), D(5), D(10), D("12.5"), D(20), D(25)]),  # leverage
)
EXTRA = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(
            [
                "market.last",
                "position.notional",
                "portfolio.equity",
                "portfolio.gross_exposure",
                "portfolio.free_margin",
                "portfolio.cash",
                "position.qty",
                "market.mid",  # not a function of the last price: no band
                # The margin facts are not modelled: no band.
                "market.mark",
                "position.margin",
                "position.margin_ratio",
                "position.funding_paid",
            ]
        ),
        st.sampled_from(["<", "<=", ">", ">="]),
        st.floats(0.3, 3.0),  # the bound, as a multiple of the fact's opening value
    ),
)
STEP = st.tuples(
    st.sampled_from(
        ["move", "move", "move", "probe", "probe", "cross", "other", "fill", "reset", "venue"]
    ),
    st.floats(-0.4, 0.4),
    st.integers(0, 1000),
)


def _opening_value(fact: str, session: Session, symbol: str, price: Decimal) -> float:
    tracker = session.tracker
    position = tracker.position(symbol)
    assert position is not None
    return {
        "market.last": float(price),
        "market.mid": float(price),
        "position.notional": float(abs(position.qty) * price),
        "portfolio.equity": float(tracker.equity),
        "portfolio.gross_exposure": float(abs(position.qty) * price),
        "portfolio.free_margin": float(tracker.equity),
        "portfolio.cash": float(tracker.cash),
        "position.qty": float(position.qty),
        "market.mark": float(price),
        "position.margin": float(position.margin()),
        "position.margin_ratio": 0.01,
        "position.funding_paid": 1.0,
    }[fact]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    params=PARAMS,
    mmr=st.floats(0.0, 0.05),
    cash=st.decimals(D(100), D(1_000_000), places=2),
    positions=st.lists(POSITION, min_size=1, max_size=3),
    extra=EXTRA,
    steps=st.lists(STEP, min_size=10, max_size=40),
)
def test_bands_decide_exactly_as_the_engine_on_every_tick(
    params: dict[str, float],
    mmr: float,
    cash: Decimal,
    positions: list[tuple[str, Decimal, Decimal, Decimal]],
    extra: tuple[str, str, float] | None,
    steps: list[tuple[str, float, int]],
) -> None:
    # The extra rule's bound depends on the book, which is built first: the
    # file is written then, from a first pass over the opening fills.
    probe = PortfolioTracker(cash)
    held = SYMBOLS[: len(positions)]
    for i, (symbol, (side, qty, price, leverage)) in enumerate(zip(held, positions, strict=True)):
        probe.apply(Fill(f"p{i}", f"p{i}", symbol, side, qty, price, D(0), TS), leverage=leverage)
    extra_file = None
    if extra is not None:
        fact, op, factor = extra
        shadow = Session.__new__(Session)
        shadow.tracker = probe
        value = _opening_value(fact, shadow, held[0], positions[0][2])
        extra_file = _extra_rule(fact, op, value * factor if value else factor)

    with _policies(params, mmr, extra_file) as (banded, reference):
        session = Session(banded, reference, cash)
        prices: dict[str, Decimal] = {}
        for symbol, (side, qty, price, leverage) in zip(held, positions, strict=True):
            session.fill(symbol, side, qty, price, leverage)
            prices[symbol] = price
        for symbol in held:
            session.tick(symbol, prices[symbol])
        for kind, move, pick in steps:
            symbol = held[pick % len(held)]
            if kind == "move":
                p = _price(float(prices[symbol]) * (1 + move))
                if p is not None:
                    prices[symbol] = p
                    session.tick(symbol, p)
            elif kind == "probe":
                for p in session.probes(symbol):
                    session.tick(symbol, p)
                    session.tick(symbol, prices[symbol])
            elif kind == "cross":
                # Walk in small relative steps: each tick either stays in the
                # band or asks the engine and makes the next band, so the walk
                # meets edges worked out from many different prices.
                p0 = prices[symbol]
                for k in range(1, 8):
                    p = _price(float(p0) * (1 + move * k / 40))
                    if p is not None:
                        session.tick(symbol, p)
                        for q in session.probes(symbol)[:6]:
                            session.tick(symbol, q)
                session.tick(symbol, p0)
            elif kind == "other":
                other = held[(pick + 1) % len(held)]
                p = _price(float(prices[other]) * (1 + move / 4))
                if p is not None:
                    prices[other] = p
                    session.tick(other, p)
                session.tick(symbol, prices[symbol])
            elif kind == "fill":
                position = session.tracker.position(symbol)
                if position is None:
                    continue
                side = "sell" if (position.qty > 0) == (move > 0) else "buy"
                qty = (abs(position.qty) * D(str(round(abs(move), 3)))).quantize(D("0.001"))
                if qty > 0:
                    session.fill(symbol, side, qty, prices[symbol], position.leverage)
                session.tick(symbol, prices[symbol])
            elif kind == "venue":
                session.venue(symbol, move, prices[symbol])
                session.tick(symbol, prices[symbol])
                for p in session.probes(symbol):
                    session.tick(symbol, p)
            else:  # reset
                banded.breaker.reset()
                reference.breaker.reset()
                session.tick(symbol, prices[symbol])


def _book(qty: str = "0.5", price: str = "50000", leverage: str = "5") -> PortfolioTracker:
    tracker = PortfolioTracker(D(100000))
    tracker.apply(
        Fill("f", "c", "BTC-USDT", "buy", D(qty), D(price), D(0), TS), leverage=D(leverage)
    )
    return tracker


@pytest.fixture
def policy() -> Iterator[RiskPolicy]:
    p = RiskPolicy.load([default_rules_path()], [bot4_correlation.CorrelationPack()])
    yield p
    p.close()


class FactCount:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = policy_module.tick_facts

        def counted(*args: object, **kwargs: object) -> dict[str, object]:
            self.calls += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(policy_module, "tick_facts", counted)


def _run(
    policy: RiskPolicy, tracker: PortfolioTracker, price: str, now: int = 1
) -> list[RiskAction]:
    tick = _tick("BTC-USDT", D(price))
    tracker.mark("BTC-USDT", tick.last)
    return policy.on_tracked_tick(tick, tracker, now)


def test_a_tick_inside_the_band_asks_nothing_of_the_engine(
    policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = FactCount(monkeypatch)
    tracker = _book()
    assert _run(policy, tracker, "50000") == []
    assert counter.calls == 1  # the first tick asks the engine and makes the band
    band = policy._bands["BTC-USDT"]
    # 5x long from 50000, mmr 0.005: liquidation at 40250; the add-margin
    # rung (distance 0.10) is crossed at 40250 / 0.9 = 44722.2...
    assert D("44722.2") < band.low < D("44722.3")
    for price in ("50001", "49000", "45000", "60000.5"):
        assert _run(policy, tracker, price) == []
    assert counter.calls == 1
    assert band.hits == 4


def test_a_tick_outside_the_band_asks_the_engine_and_acts(
    policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = FactCount(monkeypatch)
    tracker = _book()
    _run(policy, tracker, "50000")
    # A long's distance to liquidation shrinks as the price falls toward
    # 40250: inside the band above 44722.2..., then the emergency rung.
    assert _run(policy, tracker, "44800") == []
    actions = _run(policy, tracker, "42000")
    assert [a.rule for a in actions] == ["liquidation-emergency-close"]
    assert counter.calls == 2


def _view(tracker: PortfolioTracker, liq: str | None, margin: str | None = None) -> VenueMargin:
    position = tracker.position("BTC-USDT")
    assert position is not None
    return VenueMargin(
        symbol="BTC-USDT",
        position=position,
        liquidation_price=None if liq is None else D(liq),
        margin=None if margin is None else D(margin),
        balance=None,
        maintenance_rate=None,
        mark=None,
        mid=None,
        funding_paid=None,
    )


def test_new_venue_figures_end_the_band(
    policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5x long from 50000: the formula's liquidation at 40250, a band down to
    # 44722.2... The venue then reports 46000 (funding took collateral, say):
    # at 50001 the distance is 8%, the add-margin rung; a band kept from
    # before would have answered nothing.
    tracker = _book()
    views: dict[str, VenueMargin] = {}
    policy.venue_margins = views
    assert _run(policy, tracker, "50000") == []
    assert "BTC-USDT" in policy._bands
    counter = FactCount(monkeypatch)
    views["BTC-USDT"] = _view(tracker, "46000")
    actions = _run(policy, tracker, "50001", 2)
    assert counter.calls == 1
    assert [a.rule for a in actions] == ["liquidation-add-margin"]
    assert actions[0].values["liquidation.price"] == 46000.0
    # A band made with the venue's figure stands while the figure does (a
    # margin of 12000 lets a liquidation price as far as 26000) ...
    views["BTC-USDT"] = _view(tracker, "30000", margin="12000")
    for now in range(3, 10):  # the band's back-off may wait a few ticks
        assert _run(policy, tracker, "50000", now) == []
        if "BTC-USDT" in policy._bands:
            break
    band = policy._bands["BTC-USDT"]
    assert band.venue is views["BTC-USDT"]
    assert band.low < D("33334")  # 30000 / 0.9
    asked = counter.calls
    assert _run(policy, tracker, "44000", 10) == []
    assert counter.calls == asked
    # ... and ends when it goes (the formula again: add-margin below 44722.2).
    del views["BTC-USDT"]
    assert [a.rule for a in _run(policy, tracker, "44000", 11)] == ["liquidation-add-margin"]
    assert counter.calls == asked + 1


@pytest.mark.parametrize("change", ["fill", "reload", "breaker", "cash", "other-mark"])
def test_anything_that_changes_the_inputs_ends_the_band(
    change: str, policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tracker = _book()
    tracker.apply(Fill("g", "g", "ETH-USDT", "buy", D(10), D(3000), D(0), TS), leverage=D(2))
    tracker.mark("ETH-USDT", D(3000))
    _run(policy, tracker, "50000")
    assert "BTC-USDT" in policy._bands
    counter = FactCount(monkeypatch)
    if change == "fill":
        fill = Fill("h", "h", "BTC-USDT", "buy", D("0.1"), D(50000), D(0), TS)
        tracker.apply(fill, leverage=D(10))
        policy.on_fill(fill, tracker.snapshot(), 2, False)
    elif change == "reload":
        policy._set_horizon()  # what a reload that took does
    elif change == "breaker":
        policy.breaker.trip("test", 2)
    elif change == "cash":
        tracker.adjust_cash(D(-50000))  # not reported to the policy at all
    else:
        # The drawdown reads the whole book: ETH at 1000 takes 20% off equity.
        tracker.mark("ETH-USDT", D(1000))
    actions = _run(policy, tracker, "50001", 3)
    assert counter.calls == 1
    if change in ("cash", "other-mark"):
        assert [a.rule for a in actions] == ["drawdown-trips-breaker"]


def test_another_symbols_mark_moves_the_equity_only_within_the_band(
    policy: RiskPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = _book()
    tracker.apply(Fill("g", "g", "ETH-USDT", "buy", D(10), D(3000), D(0), TS), leverage=D(2))
    tracker.mark("ETH-USDT", D(3000))
    _run(policy, tracker, "50000")
    band = policy._bands["BTC-USDT"]
    assert band.book == "equity"
    counter = FactCount(monkeypatch)
    for eth in ("2990", "2500", "3100", "2400"):  # equity within the drawdown's band
        tracker.mark("ETH-USDT", D(eth))
        assert _run(policy, tracker, "50001") == []
    assert counter.calls == 0
    # The band allows the peak to rise to 100000 / (1 - 0.15 / 2) while it
    # stands, so its equity edge is the drawdown limit from there:
    # 108108.1... x 0.85 = 91891.89...; below it the engine is asked.
    assert band.equity_low is not None
    assert D("91891.8") < band.equity_low < D("91891.9")
    tracker.mark("ETH-USDT", D(2200))  # equity 92000.5: inside
    assert _run(policy, tracker, "50001") == []
    tracker.mark("ETH-USDT", D(2180))  # equity 91800.5: outside, but no rule fires
    assert _run(policy, tracker, "50001") == []
    assert counter.calls == 1


def test_a_stage_that_cannot_be_analysed_has_no_band(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(default_rules_path(), rules)
    (rules / "60-extra.yaml").write_text(
        "description: A tick rule on the mid, which the last price does not fix.\n"
        "rules:\n"
        "  - name: mid-watch\n"
        "    description: Random.\n"
        "    on: tick\n"
        "    when: market.mid < 1000\n"
        "    action: {kind: reduce_position, reason: mid}\n"
    )
    p = RiskPolicy.load([rules], [bot4_correlation.CorrelationPack()])
    try:
        tracker = _book()
        _run(p, tracker, "50000")
        assert p._bands == {}
    finally:
        p.close()


def test_an_equity_bands_integer_bounds_answer_as_its_decimal_bounds() -> None:
    # Band.holds compares a PortfolioTracker's equity and peak as integers of
    # its money unit; the Decimal bounds are the reference (units=None).
    # Bounds at, one unit beside, and a fraction of a unit beside the book's
    # equity and peak, negative ones included.
    import random

    import attrs

    from bot4.portfolio import MONEY_SCALE
    from bot4.risk import band as bands

    rng = random.Random(11)
    unit = D(1).scaleb(-MONEY_SCALE)
    checked = 0
    for _ in range(300):
        tracker = PortfolioTracker(D(rng.randrange(1, 10**6)))
        for k in range(rng.randrange(1, 4)):
            qty = D(rng.randrange(1, 10**4)).scaleb(-3)
            price = D(rng.randrange(1, 10**7)).scaleb(-2)
            side = rng.choice(("buy", "sell"))
            fee = D(rng.randrange(0, 10**4)).scaleb(-4)
            tracker.apply(Fill(f"f{k}", f"c{k}", "BTC-USDT", side, qty, price, fee, TS))
            tracker.mark("BTC-USDT", D(rng.randrange(1, 10**7)).scaleb(-2))
        position = tracker.position("BTC-USDT")
        if position is None:
            continue
        equity, peak = tracker.equity, tracker.peak_equity
        offsets = [D(0), unit, -unit, unit / 3, -unit / 3, D(rng.randrange(-999, 999))]
        for low_off in offsets:
            for high_off in offsets:
                low, high = equity + low_off, equity + high_off
                peak_max = peak + rng.choice(offsets)
                reference = bands.Band(
                    "BTC-USDT",
                    D(1),
                    D(10**8),
                    position,
                    False,
                    book="equity",
                    equity_low=low,
                    equity_high=high,
                    peak=peak,
                    peak_max=peak_max,
                )
                units = (
                    bands._units_ceil(low),
                    bands._units_floor(high),
                    tracker.peak_units(),
                    bands._units_floor(peak_max),
                )
                fast = attrs.evolve(reference, units=units)
                assert fast.holds(tracker, False) == reference.holds(tracker, False)
                checked += 1
    assert checked > 5000
