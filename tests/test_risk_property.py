"""Property test: over thousands of generated orders the engine never
approves an order that breaks a limit of the default policy.

The oracle below is written separately from bot4.risk: plain Decimal
arithmetic of the seed limits on bot4's model types, with the thresholds
copied from the rule files as numbers. It shares no code with the compiler,
the fact builders or the engine.
"""

from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot4.model import Approved, MarketData, Order, Portfolio, Position, Rejected
from bot4.risk import RiskPolicy
from tests.riskkit import RULES, SEC, TS, FixedCorrelation

MAX_POSITION_FRACTION = Decimal("0.02")
MAX_LEVERAGE = Decimal(3)
MAX_GROSS_EXPOSURE = Decimal(3)
MAX_DRAWDOWN = Decimal("0.15")
MAX_CORRELATION = Decimal("0.7")
MIN_LIQ_DISTANCE = Decimal("0.05")
MMR = Decimal("0.005")
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")
MAJORS = ("BTC-USDT", "ETH-USDT", "BTC-USDT-PERP", "ETH-USDT-PERP")
MAX_LEVERAGE_OTHER = Decimal(2)
MAX_DAILY_LOSS = Decimal("0.03")


def oracle(
    order: Order, book: Portfolio, market: MarketData, tripped: bool, correlation: Decimal
) -> tuple[list[str], bool]:
    """The limits an order breaks, and whether any limit is within a hair of
    its boundary (where binary floating point may round either way)."""
    held = book.positions.get(order.symbol)
    held_qty = held.qty if held else Decimal(0)
    signed = order.qty if order.side.value == "buy" else -order.qty
    # Documented exemption: an order that only shrinks the open position.
    if order.reduce_only or (held_qty * signed < 0 and order.qty <= abs(held_qty)):
        return [], False
    entry = order.price if order.price is not None else (market.bid + market.ask) / 2
    equity = book.equity
    broken: list[str] = []
    close: list[tuple[Decimal, Decimal]] = []  # (value, limit) pairs to check for nearness

    if tripped:
        broken.append("breaker")
    drawdown = book.drawdown
    close.append((drawdown, MAX_DRAWDOWN))
    if drawdown >= MAX_DRAWDOWN:
        broken.append("drawdown")
    if order.stop_loss is None:
        broken.append("stop loss")
    elif (signed > 0 and order.stop_loss >= entry) or (signed < 0 and order.stop_loss <= entry):
        broken.append("stop side")
    size_after = abs(held_qty + signed) * entry
    close.append((size_after, equity * MAX_POSITION_FRACTION))
    if size_after > equity * MAX_POSITION_FRACTION:
        broken.append("size")
    mark = book.mark(order.symbol) if held else entry
    gross_after = book.gross_exposure - abs(held_qty) * mark + abs(held_qty + signed) * entry
    close.append((gross_after, equity * MAX_GROSS_EXPOSURE))
    if gross_after > equity * MAX_GROSS_EXPOSURE:
        broken.append("gross")
    if order.leverage > MAX_LEVERAGE:
        broken.append("leverage")
    if order.symbol not in MAJORS:
        close.append((order.leverage, MAX_LEVERAGE_OTHER))
        if order.leverage > MAX_LEVERAGE_OTHER:
            broken.append("symbol leverage")
    # Today's loss: these books have no fills today, so it is the open loss.
    daily_loss = max(Decimal(0), -(equity - book.cash))
    close.append((daily_loss, equity * MAX_DAILY_LOSS))
    if daily_loss > equity * MAX_DAILY_LOSS:
        broken.append("daily loss")
    free = equity - sum((p.margin() for p in book.positions.values()), Decimal(0))
    notional = order.qty * entry
    close.append((notional, free * order.leverage))
    if notional > free * order.leverage:
        broken.append("margin")
    liq_distance = abs(1 / order.leverage - MMR)
    close.append((liq_distance, MIN_LIQ_DISTANCE))
    if liq_distance < MIN_LIQ_DISTANCE:
        broken.append("liquidation")
    if correlation > MAX_CORRELATION:
        broken.append("correlation")
    near = any(abs(v - lim) <= Decimal("1e-9") * max(abs(lim), Decimal(1)) for v, lim in close)
    return broken, near


def _dec(places: int, lo: float, hi: float) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=Decimal(str(lo)),
        max_value=Decimal(str(hi)),
        places=places,
        allow_nan=False,
        allow_infinity=False,
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[Order, Portfolio, MarketData, bool, Decimal]:
    positions: dict[str, Position] = {}
    marks: dict[str, Decimal] = {}
    for symbol in draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=3)):
        qty = draw(_dec(4, -50, 50).filter(lambda q: q != 0))
        entry = draw(_dec(2, 1, 60000))
        positions[symbol] = Position(symbol, qty, entry, leverage=draw(_dec(0, 1, 20)))
        marks[symbol] = entry * draw(_dec(3, 0.7, 1.3))
    cash = draw(_dec(2, 100, 5_000_000))
    peak = cash * draw(_dec(3, 0.8, 1.4))
    book = Portfolio(cash=cash, positions=positions, marks=marks, peak_equity=peak)
    symbol = draw(st.sampled_from(SYMBOLS))
    side = draw(st.sampled_from(["buy", "sell"]))
    mid = marks.get(symbol) or draw(_dec(2, 1, 60000))
    mid = mid.quantize(Decimal("0.01")) if mid >= Decimal("0.02") else Decimal("0.02")
    limit = draw(st.booleans())
    price = (mid * draw(_dec(3, 0.95, 1.05))).quantize(Decimal("0.01")) if limit else None
    entry = price if price is not None else mid
    stop_kind = draw(st.sampled_from(["good", "good", "good", "none", "wrong"]))
    below, above = (
        (entry * Decimal("0.97")).quantize(Decimal("0.01")),
        (entry * Decimal("1.03")).quantize(Decimal("0.01")),
    )
    stop = (
        None
        if stop_kind == "none"
        else (
            (below if side == "buy" else above)
            if stop_kind == "good"
            else (above if side == "buy" else below)
        )
    )
    if stop is not None and stop <= 0:
        stop = None
    # Sizes around the limits: from far below to far above 2% of equity.
    fraction = draw(
        st.sampled_from(
            [
                Decimal("0.001"),
                Decimal("0.01"),
                Decimal("0.019"),
                Decimal("0.02"),
                Decimal("0.021"),
                Decimal("0.05"),
            ]
        )
    )
    qty = (cash * fraction / entry * draw(_dec(3, 0.5, 1.5))).quantize(Decimal("0.00000001"))
    if qty <= 0:
        qty = Decimal("0.00000001")
    if draw(st.booleans()) and symbol in positions:
        qty = abs(positions[symbol].qty) * draw(_dec(2, 0.1, 1.5))  # close or flip a position
        qty = max(qty.quantize(Decimal("0.00000001")), Decimal("0.00000001"))
    order = Order(
        client_order_id="p",
        symbol=symbol,
        side=side,
        type="limit" if price is not None else "market",
        qty=qty,
        price=price,
        stop_loss=stop,
        leverage=draw(
            st.sampled_from(
                [
                    Decimal(1),
                    Decimal(2),
                    Decimal(3),
                    Decimal(10),
                    Decimal(19),
                    Decimal(20),
                    Decimal(25),
                    Decimal("2.5"),
                ]
            )
        ),
        reduce_only=draw(st.booleans()) and draw(st.booleans()),
    )
    half_spread = mid * Decimal("0.0001")
    market = MarketData(symbol, "test", mid - half_spread, mid + half_spread, mid, Decimal(1), TS)
    tripped = draw(st.integers(0, 9)) == 0
    correlation = draw(
        st.sampled_from(
            [Decimal(0), Decimal("0.5"), Decimal("0.7"), Decimal("0.71"), Decimal("0.95")]
        )
    )
    return order, book, market, tripped, correlation


PACK = FixedCorrelation()
POLICY = RiskPolicy.load([RULES], [PACK])
CLOCK = [0]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_engine_never_approves_an_order_that_breaks_a_limit(
    case: tuple[Order, Portfolio, MarketData, bool, Decimal],
) -> None:
    order, book, market, tripped, correlation = case
    PACK.value = float(correlation)
    if tripped:
        POLICY.breaker.trip("property test", 0)
    else:
        POLICY.breaker.reset()
    # A minute and more between orders: the rate limit never binds here (it
    # has its own tests), so the oracle need not count.
    CLOCK[0] += 61 * SEC
    decision = POLICY.check_order(order, book, market, CLOCK[0])
    broken, near = oracle(order, book, market, tripped, correlation)
    if isinstance(decision, Approved):
        assert not broken, f"approved although it breaks {broken}"
    else:
        assert isinstance(decision, Rejected)
        assert decision.rule != "fail-closed", decision.reason
        if not near:
            assert broken, (
                f"rejected by {decision.rule} ({decision.reason}) though no limit is broken"
            )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_suggested_size_passes_the_rule_that_rejected(
    case: tuple[Order, Portfolio, MarketData, bool, Decimal],
) -> None:
    order, book, market, _, _ = case
    PACK.value = 0.0
    POLICY.breaker.reset()
    CLOCK[0] += 61 * SEC
    decision = POLICY.check_order(order, book, market, CLOCK[0])
    if not isinstance(decision, Rejected) or decision.rule not in (
        "max-position-size",
        "max-gross-exposure",
        "margin-sufficient",
    ):
        return
    assert decision.suggested_size < order.qty
    if decision.suggested_size == 0:
        return
    smaller = Order(
        client_order_id="p2",
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        qty=decision.suggested_size,
        price=order.price,
        stop_loss=order.stop_loss,
        leverage=order.leverage,
        reduce_only=order.reduce_only,
    )
    broken, near = oracle(smaller, book, market, False, Decimal(0))
    name = {
        "max-position-size": "size",
        "max-gross-exposure": "gross",
        "margin-sufficient": "margin",
    }[decision.rule]
    assert name not in broken or near, f"suggested {decision.suggested_size} still breaks {name}"


def test_one_pass_portfolio_facts_match_the_model() -> None:
    from bot4.risk.facts import _portfolio

    positions = {
        "BTC-USDT": Position("BTC-USDT", Decimal("0.5"), Decimal(50000), leverage=Decimal(5)),
        "ETH-USDT": Position("ETH-USDT", Decimal(-3), Decimal(3000)),
    }
    book = Portfolio(
        cash=Decimal(100000),
        positions=positions,
        marks={"BTC-USDT": Decimal(48000)},
        peak_equity=Decimal(120000),
    )
    facts = _portfolio(book)
    assert facts["portfolio.equity"] == book.equity
    assert facts["portfolio.gross_exposure"] == book.gross_exposure
    assert facts["portfolio.drawdown"] == book.drawdown
    margin = sum((p.margin() for p in positions.values()), Decimal(0))
    assert facts["portfolio.free_margin"] == book.equity - margin
