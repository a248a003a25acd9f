"""Guarantee: no approval over a limit at the edge of float precision, and a
suggested size always strictly below the rejected one.

The engine compares doubles; the decision is confirmed on the Decimal facts
(bot4.risk.exact). The oracle here is plain Decimal arithmetic at 200 digits
on bot4's model types with the default policy's thresholds copied as
numbers; it shares no code with the compiler, the fact builders or the
engine. Each case puts one input of one limit at ``limit x (1 + offset)`` with
offsets from 1e-8 down to 1e-23 on either side (and exactly on the limit),
every other limit far away, and asks: approved exactly when within the limit,
and otherwise rejected by that limit's rule.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from decimal import Context, Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot4.model import Approved, Order, Portfolio, Position, Rejected
from bot4.risk import RiskPolicy
from tests.riskkit import RULES, SEC, FixedCorrelation, market, order, portfolio

D = Decimal
MAX_POSITION_FRACTION = D("0.02")
MAX_LEVERAGE = D(3)
MAX_GROSS_EXPOSURE = D(3)
MIN_LIQUIDATION_DISTANCE = D("0.05")
MMR = D("0.005")
MAX_CORRELATION = D("0.7")
MAX_DRAWDOWN = D("0.15")
ZERO, ONE = D(0), D(1)
EXPONENTS = range(8, 24)  # offsets 1e-8 .. 1e-23


class Case:
    """One order at one limit: what to send, and whether it is over."""

    def __init__(
        self,
        rule: str,
        order: Order,
        book: Portfolio,
        over: bool,
        correlation: Decimal = ZERO,
        policy: str = "default",
    ) -> None:
        self.rule, self.order, self.book, self.over = rule, order, book, over
        self.correlation, self.policy = correlation, policy


EXACT = Context(prec=200)


def _exact() -> AbstractContextManager[Context]:
    return localcontext(EXACT)


def _order(qty: Decimal, price: Decimal, leverage: Decimal = ONE, **kw: object) -> Order:
    return order(qty=str(qty), price=str(price), leverage=str(leverage), **kw)  # type: ignore[arg-type]


def _book(cash: Decimal, *positions: Position, peak: Decimal | None = None) -> Portfolio:
    return Portfolio(
        cash=cash,
        positions={p.symbol: p for p in positions},
        marks={p.symbol: p.entry_price for p in positions},
        peak_equity=peak if peak is not None else cash,
    )


def position_size(delta: Decimal, qty: Decimal, price: Decimal, move_cash: bool) -> Case:
    with _exact():
        cash = qty * price / MAX_POSITION_FRACTION  # qty x price is exactly 2% of it
        if move_cash:
            cash = cash * (1 - delta)
        else:
            qty = qty * (1 + delta)
        over = qty * price > cash * MAX_POSITION_FRACTION
    return Case("max-position-size", _order(qty, price), _book(cash), over)


def gross_exposure(delta: Decimal, qty: Decimal, price: Decimal, _: bool) -> Case:
    with _exact():
        notional = qty * price
        cash = notional * 100  # the order is 1% of equity
        held = (cash * MAX_GROSS_EXPOSURE * (1 + delta) - notional) / 1000
        eth = Position("ETH-USDT", held, D(1000), leverage=D(10))
        over = held * 1000 + notional > cash * MAX_GROSS_EXPOSURE
    return Case("max-gross-exposure", _order(qty, price), _book(cash, eth), over)


def margin(delta: Decimal, qty: Decimal, price: Decimal, high: bool) -> Case:
    leverage = D("2.5") if high else D(1)
    with _exact():
        notional = qty * price
        cash = notional * 100
        # Free margin is exactly notional / leverage; the order asks a little more or less.
        held = (cash - notional / leverage) / 1000
        eth = Position("ETH-USDT", held, D(1000), leverage=D(1))
        qty = qty * (1 + delta)
        free = cash - held * 1000
        over = qty * price > free * leverage
    return Case("margin-sufficient", _order(qty, price, leverage), _book(cash, eth), over)


def leverage_limit(delta: Decimal, qty: Decimal, price: Decimal, sell: bool) -> Case:
    with _exact():
        leverage = MAX_LEVERAGE * (1 + delta)
        over = leverage > MAX_LEVERAGE
    side = "sell" if sell else "buy"
    o = _order(qty / 10, price, leverage, side=side)
    return Case("max-leverage", o, _book(qty * price * 100), over)


def liquidation(delta: Decimal, qty: Decimal, price: Decimal, sell: bool) -> Case:
    # Only reachable above 3x: run on a copy of the rules with max_leverage 100.
    with _exact():
        leverage = +(1 / (MMR + MIN_LIQUIDATION_DISTANCE * (1 - delta)))
        with localcontext(Context(prec=40)):
            leverage = +leverage  # an order's leverage as a 40-digit number
        over = abs(1 / leverage - MMR) < MIN_LIQUIDATION_DISTANCE
    side = "sell" if sell else "buy"
    o = _order(qty / 10, price, leverage, side=side)
    return Case("liquidation-distance", o, _book(qty * price * 100), over, policy="lev100")


def correlation(delta: Decimal, qty: Decimal, price: Decimal, _: bool) -> Case:
    with _exact():
        value = MAX_CORRELATION * (1 + delta)
        over = value > MAX_CORRELATION
    return Case(
        "max-correlation",
        _order(qty / 10, price),
        _book(qty * price * 100),
        over,
        correlation=value,
    )


def drawdown(delta: Decimal, qty: Decimal, price: Decimal, _: bool) -> Case:
    with _exact():
        peak = qty * price * 100
        cash = peak * (1 - MAX_DRAWDOWN) * (1 + delta)
        over = (peak - cash) / peak >= MAX_DRAWDOWN  # at the limit itself refuses
    return Case("max-drawdown", _order(qty / 10, price), _book(cash, peak=peak), over)


def stop_side(delta: Decimal, qty: Decimal, price: Decimal, sell: bool) -> Case:
    with _exact():
        stop = price * (1 - delta) if sell else price * (1 + delta)
        over = stop <= price if sell else stop >= price  # on the entry itself is wrong
    side = "sell" if sell else "buy"
    o = _order(qty / 10, price, stop_loss=str(stop), side=side)
    return Case("stop-loss-side", o, _book(qty * price * 100), over)


LIMITS: dict[str, Callable[[Decimal, Decimal, Decimal, bool], Case]] = {
    "max-position-size": position_size,
    "max-gross-exposure": gross_exposure,
    "margin-sufficient": margin,
    "max-leverage": leverage_limit,
    "liquidation-distance": liquidation,
    "max-correlation": correlation,
    "max-drawdown": drawdown,
    "stop-loss-side": stop_side,
}


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    pack = FixedCorrelation()
    copy = tmp_path_factory.mktemp("lev100") / "rules"
    shutil.copytree(RULES, copy, ignore=shutil.ignore_patterns("tests"))
    entry = copy / "20-entry.yaml"
    text = entry.read_text(encoding="utf-8")
    assert "  max_leverage: 3 " in text
    entry.write_text(text.replace("  max_leverage: 3 ", "  max_leverage: 100 "), encoding="utf-8")
    loaded = {
        "default": RiskPolicy.load([RULES], [pack]),
        "lev100": RiskPolicy.load([copy], [pack]),
    }
    yield {"pack": pack, "clock": [0], **loaded}
    for policy in loaded.values():
        policy.close()


def _decide(policies: dict[str, object], case: Case) -> object:
    pack = policies["pack"]
    assert isinstance(pack, FixedCorrelation)
    pack.value = case.correlation  # type: ignore[assignment]  # a Decimal, as a pack may give
    clock = policies["clock"]
    assert isinstance(clock, list)
    clock[0] += 61 * SEC  # the rate limit never binds here (tested below)
    policy = policies[case.policy]
    assert isinstance(policy, RiskPolicy)
    price = case.order.price
    assert price is not None
    return policy.check_order(case.order, case.book, market(last=str(price), spread="0"), clock[0])


def _check(case: Case, decision: object) -> None:
    if case.over:
        assert isinstance(decision, Rejected), f"{case.rule}: approved over the limit"
        assert decision.rule == case.rule, decision.reason
    else:
        assert isinstance(decision, Approved), f"{case.rule}: rejected within the limit: {decision}"
    if isinstance(decision, Rejected) and decision.suggested_size > 0:
        assert decision.suggested_size < case.order.qty


PRICES = [D("50000"), D("51234.57"), D("3000.123"), D("0.5371"), D("97.3")]
QTYS = [D("0.04"), D("0.01234567"), D("1.5"), D("250")]


@pytest.mark.parametrize("rule", sorted(LIMITS))
def test_every_offset_around_every_limit(policies: dict[str, object], rule: str) -> None:
    """Every exponent, both signs and the limit itself, for each limit."""
    build = LIMITS[rule]
    seen_over = seen_within = 0
    for exponent in EXPONENTS:
        for sign in (-1, 0, 1):
            delta = sign * D(10) ** -exponent
            for variant in (False, True):
                case = build(delta, D("0.01234567"), D("51234.57"), variant)
                _check(case, _decide(policies, case))
                seen_over += case.over
                seen_within += not case.over
    assert seen_over
    assert seen_within


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(sorted(LIMITS)),
    exponent=st.sampled_from(list(EXPONENTS)),
    sign=st.sampled_from([-1, 0, 1]),
    mantissa=st.integers(1, 9),
    qty=st.sampled_from(QTYS),
    price=st.sampled_from(PRICES),
    variant=st.booleans(),
)
def test_never_an_approval_over_a_limit(
    policies: dict[str, object],
    rule: str,
    exponent: int,
    sign: int,
    mantissa: int,
    qty: Decimal,
    price: Decimal,
    variant: bool,
) -> None:
    delta = sign * mantissa * D(10) ** -exponent
    case = LIMITS[rule](delta, qty, price, variant)
    _check(case, _decide(policies, case))


def test_a_pack_decimal_a_hair_above_the_correlation_limit_is_rejected(
    policies: dict[str, object],
) -> None:
    # 0.70000000000000001 is the double 0.7: the engine alone sees 0.7 > 0.7 false.
    case = Case("max-correlation", order(), portfolio(), True, D("0.70000000000000001"))
    decision = _decide(policies, case)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-correlation"


def test_a_suggested_size_is_strictly_below_the_rejected_size(
    policies: dict[str, object],
) -> None:
    # Found by search: the doubles put equity x 0.02 / price exactly on this
    # qty, which is above the limit by 1.7e-16 relative. The size that fits is
    # one step below it, never the rejected size itself.
    qty, price, cash = D("4.18719248367184"), D("4744.87"), D("993384.2")
    with _exact():
        assert qty * price > cash * MAX_POSITION_FRACTION
    case = Case("max-position-size", _order(qty, price), _book(cash), True)
    decision = _decide(policies, case)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-position-size"
    assert decision.suggested_size == D("4.18719248")
    with _exact():
        assert decision.suggested_size * price <= cash * MAX_POSITION_FRACTION


def test_a_product_of_long_quantities_is_not_rounded_onto_the_limit(
    policies: dict[str, object],
) -> None:
    # 17 x 13 digits: qty x price has 29 digits. At Decimal's default 28 digits
    # it would be rounded down onto the limit (cash is set so the limit is that
    # rounded value) and the order approved; the facts are computed exactly.
    price = D("65432.12345678")
    qty = D("123456789.12345678")
    with _exact():
        notional = qty * price
    with localcontext(Context(prec=28)):
        rounded = +notional
    assert rounded < notional
    case = Case("max-position-size", _order(qty, price), _book(rounded * 50), True)
    decision = _decide(policies, case)
    assert isinstance(decision, Rejected)
    assert decision.rule == "max-position-size"


def test_the_rate_limit_counts_exactly(policies: dict[str, object]) -> None:
    # Window counts are integers, exact as doubles: the tenth order within a
    # minute is refused, the ninth is not (no offset can fall between them).
    policy = RiskPolicy.load([RULES], [FixedCorrelation()])
    try:
        t0 = 10_000 * SEC
        for i in range(9):
            policy.record_order("BTC-USDT", t0 + i * SEC)
        assert isinstance(
            policy.check_order(order(), portfolio(), market(), t0 + 10 * SEC), Approved
        )
        refused = policy.check_order(order(), portfolio(), market(), t0 + 11 * SEC)
        assert isinstance(refused, Rejected)
        assert refused.rule == "order-rate-limit"
    finally:
        policy.close()


def test_an_approving_rule_that_holds_only_in_doubles_does_not_approve(tmp_path: Path) -> None:
    # qty 0.1000000000000000001 is the double 0.1, so the engine sees
    # "order.qty <= 0.1" hold; exactly it does not, and the next rule decides.
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: approve-small\n"
        "    description: Small orders pass.\n"
        "    priority: 5\n"
        "    when: order.qty <= 0.1\n"
        "    approve: true\n"
        "  - name: refuse-the-rest\n"
        "    description: Everything else is refused.\n"
        "    priority: 10\n"
        "    when: true\n"
        "    reject:\n"
        "      reason: too big\n",
        encoding="utf-8",
    )
    policy = RiskPolicy.load([rules])
    try:
        assert isinstance(policy.check_order(order(qty="0.1"), portfolio(), market(), 0), Approved)
        over = order(qty="0.1000000000000000001")
        decision = policy.check_order(over, portfolio(), market(), 0)
        assert isinstance(decision, Rejected)
        assert decision.rule == "refuse-the-rest"
        trace = policy.explain(
            "order", portfolio=portfolio(), now_ns=0, market=market(), order=over
        )
        assert trace.decided_by == "refuse-the-rest"
        assert [t.rule for t in trace.trace if t.fired] == ["refuse-the-rest"]
    finally:
        policy.close()


class SuggestingPolicy:
    """Rejects every first order with a fixed suggestion; records each check."""

    def __init__(self, suggestion: Decimal) -> None:
        self.suggestion = suggestion
        self.asked: list[Decimal] = []

    def check_order(
        self, order: Order, portfolio: Portfolio, market: object, now_ns: int
    ) -> Rejected:
        self.asked.append(order.qty)
        return Rejected(rule="test", reason="no", suggested_size=self.suggestion, order=order)


@pytest.mark.trio
@pytest.mark.parametrize(
    ("suggestion", "asked"),
    [
        (D("0.002"), [D("0.002")]),  # the rejected size itself: no retry
        (D("0.003"), [D("0.002")]),  # larger: no retry
        (D("0.00200009"), [D("0.002")]),  # larger, even before rounding to the lot
        (D("0.00199"), [D("0.002"), D("0.0019")]),  # smaller: one retry, rounded down
        (D("0.00001"), [D("0.002")]),  # rounds below the market minimum: no retry
    ],
)
async def test_the_size_cut_retry_is_strictly_smaller_and_happens_once(
    suggestion: Decimal, asked: list[Decimal]
) -> None:
    from bot4.bus import open_bus
    from bot4.gate import RiskGate
    from tests.test_kernel import Scripted, Session, feed, signal

    policy = SuggestingPolicy(suggestion)
    session = Session(feed(4), Scripted({2: [signal(size="0.002")]}), gate=RiskGate(policy))
    async with open_bus() as bus:
        kernel = await session.run(bus)
    assert policy.asked == asked
    assert kernel.stats.resized == len(asked) - 1
    assert kernel.stats.approved == 0
    assert session.exchange.engine.fills() == []


@pytest.mark.parametrize(
    ("last", "actions"),
    [
        # Entry 50,000 at 10x, mmr 0.5%: liquidation at 45,250. A hair below 10%
        # from it the doubles see exactly 0.1 (not < 0.1); exactly it is below.
        ("50277.77777777777777777", ["add_margin"]),
        ("50277.77777777777777778", []),
        # A hair below 5%: the position is closed (the most severe rung).
        ("47631.57894736842105263", ["emergency_close"]),
        ("47631.57894736842105264", ["reduce_position"]),
    ],
)
def test_a_position_a_hair_inside_a_ladder_rung_gets_its_action(
    policies: dict[str, object], last: str, actions: list[str]
) -> None:
    policy = policies["default"]
    assert isinstance(policy, RiskPolicy)
    held = Position("BTC-USDT", D("0.01"), D(50000), leverage=D(10))
    book = Portfolio(
        cash=D(100000),
        positions={"BTC-USDT": held},
        marks={"BTC-USDT": D(last)},
        peak_equity=D(100000),
    )
    got = policy.on_market_data(market(last=last, spread="0"), book, 0)
    assert [a.kind.value for a in got] == actions
