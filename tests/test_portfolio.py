"""PortfolioTracker: netting arithmetic, snapshots, and a property test against
an independent oracle in exact fractions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.model import Fill, MarketData, Portfolio, Side
from bot4.portfolio import PortfolioTracker

T0 = datetime(2024, 3, 1, tzinfo=UTC)
D = Decimal


def fill(side: str, qty: str, price: str, fee: str = "0", symbol: str = "BTC-USDT") -> Fill:
    fill.n += 1  # type: ignore[attr-defined]
    return Fill(
        fill_id=f"f{fill.n}",  # type: ignore[attr-defined]
        client_order_id="o",
        symbol=symbol,
        side=side,
        qty=D(qty),
        price=D(price),
        fee=D(fee),
        timestamp=T0,
    )


fill.n = 0  # type: ignore[attr-defined]


def test_open_add_partial_close_flip_close() -> None:
    t = PortfolioTracker(cash=D("1000"))
    assert t.apply(fill("buy", "1", "100", "0.1")) == 0
    assert t.apply(fill("buy", "1", "110", "0.1")) == 0
    pos = t.position("BTC-USDT")
    assert pos is not None
    assert pos.qty == 2
    assert pos.entry_price == D("105")
    # Partial close: 0.5 at 120 against an average entry of 105.
    assert t.apply(fill("sell", "0.5", "120", "0.05")) == D("7.5")
    assert t.qty("BTC-USDT") == D("1.5")
    assert t.position("BTC-USDT").entry_price == D("105")  # type: ignore[union-attr]
    # Flip: sell 3 at 90 closes 1.5 (loss 22.5) and opens a 1.5 short at 90.
    assert t.apply(fill("sell", "3", "90", "0.2")) == D("-22.5")
    pos = t.position("BTC-USDT")
    assert pos is not None
    assert pos.qty == D("-1.5")
    assert pos.entry_price == D("90")
    assert pos.side is Side.SELL
    # Close the short at 80: gain 15.
    assert t.apply(fill("buy", "1.5", "80", "0.1")) == D("15")
    assert t.position("BTC-USDT") is None
    assert t.cost("BTC-USDT") == 0
    assert t.realized_pnl == D("0")
    assert t.fees == D("0.55")
    assert t.cash == D("1000") + t.realized_pnl - t.fees == D("999.45")
    assert t.realized_pnl_of("BTC-USDT") == 0


def test_short_pnl_and_unrealised_marks() -> None:
    t = PortfolioTracker(cash=D("500"))
    t.apply(fill("sell", "2", "50"))
    t.mark("BTC-USDT", D("45"))
    assert t.unrealized_pnl() == D("10")
    assert t.equity == D("510")
    assert t.peak_equity == D("510")
    t.mark("BTC-USDT", D("60"))
    assert t.unrealized_pnl("BTC-USDT") == D("-20")
    assert t.equity == D("480")
    assert t.peak_equity == D("510")  # the high-water mark stays
    snap = t.snapshot()
    assert snap.equity == D("480")
    assert snap.drawdown == (D("510") - D("480")) / D("510")


def test_thirds_keep_the_balance_equation_exact() -> None:
    """Closing a third of a position divides; the rounding must not leak."""
    t = PortfolioTracker(cash=D("100"))
    t.apply(fill("buy", "1", "100"))
    t.apply(fill("buy", "2", "100.01"))
    for _ in range(2):
        t.apply(fill("sell", "1", "101", "0.03"))
    t.apply(fill("sell", "1", "99.99", "0.03"))
    assert t.qty("BTC-USDT") == 0
    # Exactly proceeds minus costs once flat, whatever was rounded on the way.
    assert t.realized_pnl == D("101") * 2 + D("99.99") - D("100") - D("200.02")
    assert t.cash == D("100") + t.realized_pnl - D("0.09")


def test_snapshot_is_cached_and_immutable() -> None:
    t = PortfolioTracker(cash=D("1000"))
    t.apply(fill("buy", "1", "100"), leverage=D("5"), stop_loss=D("95"))
    s1 = t.snapshot()
    assert t.snapshot() is s1
    assert s1.positions["BTC-USDT"].leverage == 5
    assert s1.positions["BTC-USDT"].stop_loss == D("95")
    assert t.margin_used() == D("20")
    with pytest.raises(TypeError):
        s1.positions["X-Y"] = s1.positions["BTC-USDT"]  # type: ignore[index]
    tick = MarketData(
        symbol="BTC-USDT",
        exchange="paper",
        bid=D("109"),
        ask=D("111"),
        last=D("111"),
        volume=D("1"),
        timestamp=T0,
    )
    t.on_market_data(tick)  # marks at the mid, 110
    s2 = t.snapshot()
    assert s2 is not s1
    assert s2.marks["BTC-USDT"] == D("110")
    assert s1.marks["BTC-USDT"] == D("100")  # the old snapshot did not change
    assert s2.equity == D("1010")
    assert s2.peak_equity == D("1010")
    t.apply(fill("sell", "1", "110"))
    assert t.snapshot().positions == {}
    assert t.position("BTC-USDT") is None


def test_stop_loss_cleared_when_flat_and_leverage_kept_on_reduce() -> None:
    t = PortfolioTracker(cash=D("1000"))
    t.apply(fill("sell", "2", "100"), leverage=D("3"), stop_loss=D("105"))
    t.apply(fill("buy", "1", "90"))
    pos = t.position("BTC-USDT")
    assert pos is not None
    assert pos.leverage == 3
    assert pos.stop_loss == D("105")
    t.apply(fill("buy", "1", "90"))
    t.apply(fill("buy", "1", "90"))
    pos = t.position("BTC-USDT")
    assert pos is not None
    assert pos.qty == 1
    assert pos.stop_loss is None


def test_adjust_cash_keeps_equation() -> None:
    t = PortfolioTracker(cash="100")
    t.adjust_cash(D("50"))
    t.apply(fill("buy", "1", "10", "1"))
    t.apply(fill("sell", "1", "12", "1"))
    assert t.cash == t.starting_cash + t.realized_pnl - t.fees == D("150")


def test_bad_cash_refused() -> None:
    with pytest.raises(ValueError, match="cash"):
        PortfolioTracker(cash="NaN")
    with pytest.raises(ValueError, match="cash"):
        PortfolioTracker(cash="lots")


# --- property test against an oracle ------------------------------------------------


class Oracle:
    """Average-cost netting in exact fractions, written independently: one
    position as (signed qty, average entry), with separate branches for
    long/short instead of signed cost arithmetic."""

    def __init__(self, cash: Fraction) -> None:
        self.start = cash
        self.qty = Fraction(0)
        self.avg = Fraction(0)
        self.realized = Fraction(0)
        self.fees = Fraction(0)
        self.flow = Fraction(0)  # sells' proceeds minus buys' cost, all fills

    def apply(self, side: str, qty: Fraction, price: Fraction, fee: Fraction) -> None:
        self.fees += fee
        if side == "buy":
            self.flow -= qty * price
            if self.qty >= 0:
                self.avg = (self.qty * self.avg + qty * price) / (self.qty + qty)
                self.qty += qty
            else:
                covered = min(qty, -self.qty)
                self.realized += (self.avg - price) * covered
                self.qty += covered
                if qty > covered:
                    self.qty, self.avg = qty - covered, price
        else:
            self.flow += qty * price
            if self.qty <= 0:
                self.avg = (-self.qty * self.avg + qty * price) / (-self.qty + qty)
                self.qty -= qty
            else:
                sold = min(qty, self.qty)
                self.realized += (price - self.avg) * sold
                self.qty -= sold
                if qty > sold:
                    self.qty, self.avg = -(qty - sold), price
        if self.qty == 0:
            self.avg = Fraction(0)

    def equity(self, mark: Fraction) -> Fraction:
        return self.start + self.realized - self.fees + (mark - self.avg) * self.qty


qtys = st.decimals(min_value="0.0001", max_value="50", places=4)
prices = st.decimals(min_value="0.01", max_value="90000", places=2)
fees = st.decimals(min_value="0", max_value="5", places=4)
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["buy", "sell"]), qtys, prices, fees),
        st.tuples(st.just("mark"), prices),
    ),
    min_size=1,
    max_size=40,
)


def F(d: Decimal) -> Fraction:
    return Fraction(d)


@settings(max_examples=300, deadline=None)
@given(steps, st.decimals(min_value="0", max_value="1000000", places=2))
def test_tracker_matches_oracle(ops: list[tuple[object, ...]], start: Decimal) -> None:
    t = PortfolioTracker(cash=start)
    o = Oracle(F(start))
    mark: Fraction | None = None
    peak = F(start)
    tol = Fraction(1, 10**18)
    # Each step may close part of a position once; ``closes`` bounds how many
    # cost shares have been rounded so far.
    for closes, op in enumerate(ops, 1):
        if op[0] == "mark":
            price = op[1]
            assert isinstance(price, Decimal)
            t.mark("BTC-USDT", price)
            mark = F(price)
        else:
            side, qty, price, fee = op
            assert isinstance(qty, Decimal)
            assert isinstance(price, Decimal)
            assert isinstance(fee, Decimal)
            assert isinstance(side, str)
            t.apply(fill(side, str(qty), str(price), str(fee)))
            o.apply(side, F(qty), F(price), F(fee))
            if mark is None:
                mark = F(price)  # the tracker values an unmarked symbol at its first fill
        assert mark is not None
        # Quantities, fees and cash: exact.
        assert F(t.qty("BTC-USDT")) == o.qty
        assert F(t.fees) == o.fees
        assert t.cash == t.starting_cash + t.realized_pnl - t.fees
        # Mark-to-market identity: exact, whatever the cost split rounded.
        assert F(t.realized_pnl) + F(t.unrealized_pnl()) == o.flow + o.qty * mark
        # Average-cost realised PnL: equal up to the rounding of each cost
        # share to 12 decimals (half a unit of 1e-12 per close at most).
        assert abs(F(t.realized_pnl) - o.realized) <= closes * Fraction(1, 2 * 10**12)
        if o.qty == 0:
            assert F(t.realized_pnl) == o.flow
            assert t.position("BTC-USDT") is None
        else:
            pos = t.position("BTC-USDT")
            assert pos is not None
            # Entry is cost / qty: the cost carries the share rounding.
            slack_entry = closes * Fraction(1, 2 * 10**12) / abs(o.qty)
            assert abs(F(pos.entry_price) - o.avg) <= slack_entry + tol * o.avg
        # Equity and its peak: the tracker's equity is exact given its own
        # realised figure, so they differ from the oracle's by the same rounding.
        slack = closes * Fraction(1, 2 * 10**12)
        peak = max(peak, o.equity(mark))
        assert abs(F(t.peak_equity) - peak) <= slack
        assert abs(F(t.equity) - o.equity(mark)) <= slack
        snap = t.snapshot()
        assert snap.cash == t.cash
        # The snapshot values positions from the rounded entry price.
        assert abs(F(snap.equity) - o.equity(mark)) <= slack + tol * (1 + abs(o.qty * mark))


def test_marking_a_symbol_not_held_refreshes_the_snapshot_not_the_peak() -> None:
    t = PortfolioTracker(cash=D("1000"))
    t.apply(fill("buy", "1", "100"))
    t.mark("BTC-USDT", D("120"))
    s1 = t.snapshot()
    t.mark("ETH-USDT", D("3000"))  # not held: equity and peak do not move
    s2 = t.snapshot()
    assert s2 is not s1
    assert s2.marks == {"BTC-USDT": D("120"), "ETH-USDT": D("3000")}
    assert (t.equity, t.peak_equity, s2.equity, s2.peak_equity) == (D("1020"),) * 4
    t.mark("BTC-USDT", D("90"))
    assert t.peak_equity == D("1020")
    assert t.snapshot().drawdown == D("30") / D("1020")


def test_snapshot_equals_a_validated_portfolio() -> None:
    # The tracker builds its snapshot without re-running the validators; it
    # must be the Portfolio the validated constructor would build.
    t = PortfolioTracker(cash=D("-5"))  # a negative balance is allowed, peak is clamped
    t.apply(fill("sell", "2", "100", "0.5"), leverage=D("3"), stop_loss=D("110"))
    t.mark("BTC-USDT", D("99.5"))
    s = t.snapshot()
    ref = Portfolio(
        cash=t.cash, positions=t.positions(), marks={"BTC-USDT": D("99.5")}, peak_equity=D(0)
    )
    assert type(s) is Portfolio
    assert s == ref
    assert dict(s.positions) == dict(ref.positions)
    assert dict(s.marks) == dict(ref.marks)
    assert (s.cash, s.peak_equity, s.equity) == (D("-5.5"), D(0), ref.equity)


def test_restored_peak_raises_the_high_water_mark_and_never_lowers_it() -> None:
    t = PortfolioTracker(cash=D("1000"))
    t.apply(fill("buy", "1", "100"))
    t.mark("BTC-USDT", D("90"))  # equity 990, peak 1000 from the start
    assert t.snapshot().drawdown == D("0.01")
    t.restore_peak(D("1100"))  # the journal knew a higher one before a crash
    assert t.peak_equity == D("1100")
    assert t.snapshot().drawdown == D("110") / D("1100")
    t.restore_peak(D("500"))
    assert t.peak_equity == D("1100")
    with pytest.raises(ValueError, match="peak"):
        t.restore_peak(D("NaN"))


def test_peak_watcher_hears_only_rises_past_the_level_it_asked_for() -> None:
    t = PortfolioTracker(cash=D("1000"))
    heard: list[Decimal] = []

    def watcher(peak: Decimal) -> Decimal:
        heard.append(peak)
        return peak + 10  # tell me again 10 above this

    t.watch_peak(watcher)
    t.apply(fill("buy", "1", "100"))
    for price in ("101", "105", "111", "109", "112", "125"):  # 1011 is not past 1011
        t.mark("BTC-USDT", D(price))
    assert heard == [D("1001"), D("1012"), D("1025")]
    t.watch_peak(None)
    t.mark("BTC-USDT", D("200"))
    assert heard == [D("1001"), D("1012"), D("1025")]
    assert t.peak_equity == D("1100")


def test_a_copy_is_the_same_book_and_moves_on_its_own() -> None:
    t = PortfolioTracker(Decimal(10000))
    t.apply(fill("buy", "2", "100", fee="0.5"), leverage=Decimal(3), stop_loss=Decimal(90))
    t.apply(fill("sell", "1", "50", symbol="ETH-USDT"))
    t.mark("BTC-USDT", Decimal(120))
    seen: list[Decimal] = []

    def watcher(peak: Decimal) -> Decimal:
        seen.append(peak)
        return peak

    t.watch_peak(watcher)
    twin = t.copy()
    assert twin.snapshot() == t.snapshot()
    figures = ("cash", "equity", "peak_equity", "fees", "realized_pnl", "starting_cash")
    assert [getattr(twin, f) for f in figures] == [getattr(t, f) for f in figures]
    assert twin.margin_used() == t.margin_used()
    assert twin.activity == t.activity
    # Each moves alone; the peak watcher stays with the original.
    twin.mark("BTC-USDT", Decimal(200))
    twin.apply(fill("sell", "2", "200"))
    assert twin.position("BTC-USDT") is None
    assert twin.equity == Decimal(10000) - Decimal("0.5") + 2 * 100
    held = t.position("BTC-USDT")
    assert held is not None
    assert held.qty == 2
    assert t.equity == Decimal(10000) - Decimal("0.5") + 2 * 20
    assert seen == []
    t.mark("BTC-USDT", Decimal(130))
    assert seen == [t.peak_equity]
