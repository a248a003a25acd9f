"""The fixed-point portfolio equals an exact model, and rounds only to the safe side.

:class:`bot4.portfolio.PortfolioTracker` keeps every figure as an integer of a
fixed unit (quantity 1e-18, price 1e-12, money 1e-30) and maintains
unrealised PnL and equity incrementally. Here an independent model in exact
fractions replays random fills and marks on several symbols; after every step
each figure the tracker gives out (cash, fees, realised and unrealised PnL,
equity, margin, peak, positions) must equal the model's. Inputs finer than the
scale (a price with 13 decimals, a fee with 31) must round against the
account: equity and cash never above the exact figure, fees and margin never
below it. And a mark touches only the marked symbol: O(1), not a sum over
the book.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot4.model import Fill
from bot4.portfolio import PortfolioTracker

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
SHARE = Fraction(1, 10**12)  # the cost share of a partial close: half-even to 1e-12


def _fill(n: int, symbol: str, side: str, qty: Decimal, price: Decimal, fee: Decimal) -> Fill:
    return Fill(
        fill_id=f"f{n}",
        client_order_id=f"o{n}",
        symbol=symbol,
        side=side,
        qty=qty,
        price=price,
        fee=fee,
        timestamp=T0,
    )


def _half_even(x: Fraction) -> Fraction:
    """Round to a multiple of SHARE, half to even (the documented share rounding)."""
    return round(x / SHARE) * SHARE  # Fraction.__round__ is half-even


class Model:
    """The accounting of the module docstring, in exact fractions."""

    def __init__(self, cash: Fraction) -> None:
        self.cash = cash
        self.realized = Fraction(0)
        self.fees = Fraction(0)
        self.qty: dict[str, Fraction] = {}
        self.cost: dict[str, Fraction] = {}
        self.lev: dict[str, Fraction] = {}
        self.marks: dict[str, Fraction] = {}
        self.peak = max(cash, Fraction(0))

    def apply(self, symbol: str, sign: int, qty: Fraction, price: Fraction, fee: Fraction,
              lev: Fraction | None) -> None:  # fmt: skip
        held = self.qty.get(symbol, Fraction(0))
        cost = self.cost.get(symbol, Fraction(0))
        realized = Fraction(0)
        if held == 0 or (held > 0) == (sign > 0):
            cost += sign * qty * price
            held += sign * qty
        else:
            closing = min(qty, abs(held))
            share = cost if closing == abs(held) else _half_even(cost * closing / abs(held))
            realized = -sign * closing * price - share
            cost -= share
            held += sign * closing
            if qty > closing:
                cost = sign * (qty - closing) * price
                held = sign * (qty - closing)
        if held == 0:
            cost = Fraction(0)
        if lev is not None:
            self.lev[symbol] = lev
        self.qty[symbol], self.cost[symbol] = held, cost
        self.realized += realized
        self.fees += fee
        self.cash += realized - fee
        self.marks.setdefault(symbol, price)
        self._peak()

    def mark(self, symbol: str, price: Fraction) -> None:
        self.marks[symbol] = price
        self._peak()

    def upnl(self, symbol: str) -> Fraction:
        q = self.qty.get(symbol, Fraction(0))
        return q * self.marks[symbol] - self.cost[symbol] if q else Fraction(0)

    @property
    def equity(self) -> Fraction:
        return self.cash + sum((self.upnl(s) for s in self.qty), Fraction(0))

    def margin(self) -> Fraction:
        return sum(
            (abs(self.cost[s]) / self.lev.get(s, Fraction(1)) for s in self.qty if self.qty[s]),
            Fraction(0),
        )

    def _peak(self) -> None:
        self.peak = max(self.peak, self.equity)


def _check(t: PortfolioTracker, m: Model) -> None:
    assert Fraction(t.cash) == m.cash
    assert Fraction(t.fees) == m.fees
    assert Fraction(t.realized_pnl) == m.realized
    assert Fraction(t.equity) == m.equity
    assert Fraction(t.unrealized_pnl()) == m.equity - m.cash
    assert Fraction(t.peak_equity) == m.peak
    # Margin |cost| / leverage is rounded up per position, to the money unit.
    margin = Fraction(t.margin_used())
    assert m.margin() <= margin < m.margin() + Fraction(len(SYMBOLS), 10**30)
    for symbol in SYMBOLS:
        assert Fraction(t.qty(symbol)) == m.qty.get(symbol, 0)
        assert Fraction(t.cost(symbol)) == m.cost.get(symbol, 0)
        if m.qty.get(symbol):
            assert Fraction(t.unrealized_pnl(symbol)) == m.upnl(symbol)
    snap = t.snapshot()
    assert Fraction(snap.cash) == m.cash
    assert {s: Fraction(p.qty) for s, p in snap.positions.items()} == {
        s: q for s, q in m.qty.items() if q
    }


qtys = st.decimals(min_value=D("0.00000001"), max_value=D("50"), places=8)
prices = st.decimals(min_value=D("0.0001"), max_value=D("90000"), places=4)
fees = st.decimals(min_value=D(0), max_value=D("5"), places=10)
leverages = st.sampled_from([None, D(1), D(3), D("2.5"), D(7)])
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("fill"),
            st.sampled_from(SYMBOLS),
            st.sampled_from(["buy", "sell"]),
            qtys,
            prices,
            fees,
            leverages,
        ),
        st.tuples(st.just("mark"), st.sampled_from(SYMBOLS), prices),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(cash=st.decimals(min_value=D(0), max_value=D(10**7), places=6), steps=steps)
def test_the_fixed_point_book_equals_the_exact_model_after_every_step(
    cash: Decimal, steps: list[tuple[object, ...]]
) -> None:
    t = PortfolioTracker(cash=cash)
    m = Model(Fraction(cash))
    for n, step in enumerate(steps):
        if step[0] == "fill":
            _, symbol, side, qty, price, fee, lev = step
            assert isinstance(symbol, str)
            assert isinstance(side, str)
            assert isinstance(qty, Decimal)
            assert isinstance(price, Decimal)
            assert isinstance(fee, Decimal)
            assert lev is None or isinstance(lev, Decimal)
            t.apply(_fill(n, symbol, side, qty, price, fee), leverage=lev)
            m.apply(
                symbol,
                1 if side == "buy" else -1,
                Fraction(qty),
                Fraction(price),
                Fraction(fee),
                None if lev is None else Fraction(lev),
            )
        else:
            _, symbol, price = step
            assert isinstance(symbol, str)
            assert isinstance(price, Decimal)
            t.mark(symbol, price)
            m.mark(symbol, Fraction(price))
        _check(t, m)


fine = st.integers(min_value=1, max_value=10**6)


@settings(max_examples=200, deadline=None)
@given(
    qty=qtys,
    price=prices,
    mark_digits=fine,
    fee_digits=fine,
    long=st.booleans(),
)
def test_inputs_finer_than_the_scale_round_against_the_account(
    qty: Decimal, price: Decimal, mark_digits: int, fee_digits: int, long: bool
) -> None:
    """A mark with 18 decimals, a fee with 36: equity never above the exact
    value, fees never below; within one unit of the scale."""
    fee = D(fee_digits).scaleb(-36)  # below 1e-30: must round up
    t = PortfolioTracker(cash=D(1000))
    t.apply(_fill(1, "BTC-USDT", "buy" if long else "sell", qty, price, fee))
    assert Fraction(t.fees) >= Fraction(fee)
    assert Fraction(t.fees) - Fraction(fee) < Fraction(1, 10**30)
    mark = price + D(mark_digits).scaleb(-18)  # 18 decimals: finer than 1e-12
    t.mark("BTC-USDT", mark)
    sign = 1 if long else -1
    exact = (
        Fraction(1000) - Fraction(fee) + sign * Fraction(qty) * (Fraction(mark) - Fraction(price))
    )
    assert Fraction(t.equity) <= exact  # a long at the floor, a short at the ceiling
    assert exact - Fraction(t.equity) <= Fraction(qty) * Fraction(1, 10**12) + Fraction(1, 10**30)
    assert Fraction(t.peak_equity) <= max(exact, Fraction(1000))


def test_a_fill_price_finer_than_the_scale_costs_the_account() -> None:
    """A buy pays the price rounded up, a sell receives it rounded down."""
    t = PortfolioTracker(cash=D(0))
    price = D("100.0000000000001")  # 13 decimals
    t.apply(_fill(1, "BTC-USDT", "buy", D(1), price, D(0)))
    assert Fraction(t.cost("BTC-USDT")) > Fraction(price)
    t.apply(_fill(2, "BTC-USDT", "sell", D(1), price, D(0)))
    assert t.realized_pnl < 0  # the round trip at one price loses the two roundings
    assert -t.realized_pnl == D("1e-12")  # ceil 100.000000000001, floor 100


def test_cash_rounds_down_a_restored_peak_up_margin_up() -> None:
    cash = D("1000.0000000000000000000000000000009")  # 34 decimals
    t = PortfolioTracker(cash=cash)
    assert t.cash < cash
    assert cash - t.cash < D("1e-30")
    t.restore_peak(D("2000.0000000000000000000000000000001"))
    assert t.peak_equity > D("2000.0000000000000000000000000000001")
    t.apply(_fill(1, "BTC-USDT", "buy", D(1), D(100), D(0)), leverage=D(3))
    exact = Fraction(100, 3)
    assert Fraction(t.margin_used()) >= exact
    assert Fraction(t.margin_used()) - exact < Fraction(1, 10**30)


def test_a_fill_quantity_finer_than_the_scale_is_refused() -> None:
    t = PortfolioTracker(cash=D(1000))
    with pytest.raises(ValueError, match="more than 18 decimals"):
        t.apply(_fill(1, "BTC-USDT", "buy", D("1e-19"), D(100), D(0)))
    assert t.qty("BTC-USDT") == 0
    assert t.cash == 1000


class _NoScan(dict[str, object]):
    """A book that fails the test if anything walks it."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole book was walked")

    def values(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole book was walked")

    def items(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the whole book was walked")


def test_a_mark_costs_the_marked_symbol_only_not_a_sum_over_the_book() -> None:
    t = PortfolioTracker(cash=D(10**9))
    for i in range(200):
        t.apply(_fill(i, f"S{i}-USDT", "buy", D(1), D(100), D(0)))
    t.mark("S7-USDT", D(101))
    books = t._books
    t._books = _NoScan(books)  # type: ignore[assignment]
    t.mark("S7-USDT", D(105))  # equity and peak move: no walk of the book
    t.mark("S8-USDT", D(99))
    assert t.equity == D(10**9) + 5 - 1
    assert t.peak_equity == D(10**9) + 5
