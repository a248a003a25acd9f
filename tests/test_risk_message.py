"""The engine message of a decision: the generated per-stage encoder
(bot4.risk.message) against the generic field-by-field path, and the caches
the order facts keep between decisions (the book's facts, the leverage's
liquidation terms, the event windows)."""

from __future__ import annotations

import bisect
import math
import random
from decimal import Decimal
from typing import Any

import pytest

from bot4.errors import RiskError
from bot4.model import Order, Portfolio, Position
from bot4.risk import RiskPolicy, facts, windows
from bot4.risk.expr import BOOL, MAX_MAGNITUDE, NUMBER, STRING
from bot4.risk.message import STRING_TEXT, compile_encoder, field_text, generic_body
from bot4.risk.windows import EventLog, WindowSpec
from tests.riskkit import RULES, FixedCorrelation

FIELDS = tuple((name, f',"f{i}":') for i, name in enumerate(["a.n", "b.flag", "c.text", "d.any"]))
KINDS = (NUMBER, BOOL, STRING, "")
LAYOUT = '{"_z":0.0' + "".join(prefix + "%s" for _, prefix in FIELDS)


class OddDecimal(Decimal):
    """A Decimal subclass: not one of the exact types the fast path takes."""


def _value(rng: random.Random) -> object:
    choice = rng.randrange(14)
    magnitude = 10.0 ** rng.randint(-9, 16)
    if choice == 0:
        return Decimal(repr(rng.uniform(-magnitude, magnitude)))
    if choice == 1:
        return rng.uniform(-magnitude, magnitude)
    if choice == 2:
        return rng.randint(-(10**16), 10**16)
    if choice == 3:
        return rng.choice([True, False])
    if choice == 4:
        return rng.choice(["buy", "sell", "BTC-USDT", "", "x" * 101, "bad\nline", "é"])
    if choice == 5:
        return rng.choice([math.nan, math.inf, -math.inf, Decimal("NaN"), Decimal("-Infinity")])
    if choice == 6:
        return rng.choice([None, [1.0], b"1", object()])
    if choice == 7:
        return OddDecimal(repr(rng.uniform(-1, 1)))
    if choice == 8:
        return rng.choice([1e-5, -3e-7, 0.0, -0.0, 5e-324, MAX_MAGNITUDE, -MAX_MAGNITUDE])
    if choice == 9:
        return math.nextafter(MAX_MAGNITUDE, math.inf)
    if choice == 10:
        return Decimal("1E-7")
    if choice == 11:
        return rng.choice([0, 1, Decimal(0), Decimal("0.00")])
    if choice == 12:
        return Decimal("1e16")
    return rng.choice([1.5, Decimal("49000.00")])


def _outcome(make: Any, values: dict[str, object]) -> str:
    try:
        return str(make(values))
    except RiskError as exc:
        return f"RiskError: {exc}"


def test_the_generated_encoder_writes_what_the_generic_path_writes() -> None:
    rng = random.Random(20261201)
    encoder = compile_encoder(FIELDS, KINDS, LAYOUT)
    pool: list[object] = [_value(rng) for _ in range(40)]
    for _ in range(4000):
        # Values drawn from a small pool, so a field often meets the very
        # object it encoded last (the memo) and often another one.
        values = {name: rng.choice(pool) for name, _ in FIELDS}
        if rng.random() < 0.05:
            del values[rng.choice(FIELDS)[0]]
        if rng.random() < 0.1:
            pool[rng.randrange(len(pool))] = _value(rng)
        expected = _outcome(lambda v: generic_body(FIELDS, v), values)
        assert _outcome(encoder, values) == expected, values


def test_the_encoder_refuses_nan_infinity_and_huge_numbers_naming_the_fact() -> None:
    encoder = compile_encoder(FIELDS, KINDS, LAYOUT)
    good: dict[str, object] = {"a.n": 1.5, "b.flag": True, "c.text": "buy", "d.any": 2}
    assert encoder(good) == '{"_z":0.0,"f0":1.5,"f1":true,"f2":"buy","f3":2.0'
    for bad in (math.nan, math.inf, -math.inf, Decimal("NaN"), 2e15, Decimal("1e16"), -1e300):
        for _ in range(2):  # a refused value is never kept: refused again
            with pytest.raises(RiskError, match=r"^fact a\.n .*not a finite number"):
                encoder({**good, "a.n": bad})
        assert encoder(good).startswith('{"_z":0.0,"f0":1.5,')
    with pytest.raises(RiskError, match=r"^fact a\.n has unsupported type NoneType"):
        encoder({**good, "a.n": None})
    with pytest.raises(RiskError, match=r"^fact c\.text is not a short printable string"):
        encoder({**good, "c.text": "bad\nside"})
    with pytest.raises(RiskError, match=r"^fact b\.flag has no value here"):
        encoder({"a.n": 1.5})
    # The engine reads an exponent only with a fraction: written as it parses it.
    assert '"f0":1.0e-05' in encoder({**good, "a.n": 1e-5})
    assert '"f0":1.0e-07' in encoder({**good, "a.n": Decimal("1E-7")})


def test_a_number_field_keeps_the_text_of_its_last_object_only() -> None:
    encoder = compile_encoder(FIELDS[:1], KINDS[:1], '{"_z":0.0,"f0":%s')
    first = Decimal("0.1")
    assert encoder({"a.n": first}) == '{"_z":0.0,"f0":0.1'
    assert encoder({"a.n": first}) == '{"_z":0.0,"f0":0.1'
    # An equal value of another type, and another object: written afresh.
    assert encoder({"a.n": True}) == '{"_z":0.0,"f0":true'
    assert encoder({"a.n": Decimal("0.2")}) == '{"_z":0.0,"f0":0.2'
    assert encoder({"a.n": OddDecimal("0.3")}) == '{"_z":0.0,"f0":0.3'


def test_the_policy_encodes_the_order_stage_as_the_generic_path() -> None:
    policy = RiskPolicy.load([RULES], [FixedCorrelation(0.1)])
    try:
        plan = policy.compiled.stages["order"]
        assert plan.kinds
        assert len(plan.kinds) == len(plan.fields)
        rng = random.Random(7)
        for _ in range(300):
            values: dict[str, object] = {}
            for (name, _), kind in zip(plan.fields, plan.kinds, strict=True):
                if kind == BOOL:
                    values[name] = rng.choice([True, False])
                elif kind == STRING:
                    values[name] = rng.choice(["buy", "sell", "ETH-USDT"])
                else:
                    values[name] = Decimal(repr(rng.uniform(-1e6, 1e6)))
            if rng.random() < 0.2:
                values[rng.choice(plan.field_names)] = rng.choice([math.nan, "x", None, 1e20])
            assert _outcome(plan.encode, values) == _outcome(
                lambda v, p=plan: generic_body(p.fields, v), values
            )
    finally:
        policy.close()


def test_string_texts_are_validated_before_they_are_kept() -> None:
    STRING_TEXT.clear()
    assert field_text("order.side", "sell") == '"sell"'
    assert STRING_TEXT == {"sell": '"sell"'}
    with pytest.raises(RiskError, match="not a short printable string"):
        field_text("order.side", "bad\nside")
    assert "bad\nside" not in STRING_TEXT


# --- caches of the order facts ------------------------------------------------------


def _order(leverage: Decimal) -> Order:
    return Order(
        client_order_id="c",
        symbol="BTC-USDT",
        side="buy",
        type="limit",
        qty=Decimal("0.01"),
        price=Decimal(50000),
        stop_loss=Decimal(49000),
        leverage=leverage,
    )


def test_a_plain_book_is_computed_afresh_once_it_holds_a_position() -> None:
    positions: dict[str, Position] = {}
    book = Portfolio(cash=Decimal(100000), positions=positions, peak_equity=Decimal(100000))
    order = _order(Decimal(1))
    before = facts.order_facts(order, book, None, False, Decimal("0.005"))
    again = facts.order_facts(order, book, None, False, Decimal("0.005"))
    assert again["portfolio.equity"] is before["portfolio.equity"]  # the flat book's, kept
    positions["ETH-USDT"] = Position("ETH-USDT", Decimal(10), Decimal(3000))
    book_marks = book.marks
    assert isinstance(book_marks, dict)
    book_marks["ETH-USDT"] = Decimal(2000)
    after = facts.order_facts(order, book, None, False, Decimal("0.005"))
    assert after["portfolio.equity"] == Decimal(90000)
    assert after["portfolio.gross_exposure"] == Decimal(20000)
    assert after["portfolio.equity"] == book.equity


@pytest.mark.parametrize("leverage", ["1", "3", "2.5", "7", "0.5", "100"])
def test_the_kept_liquidation_terms_are_the_formula(leverage: str) -> None:
    mmr = Decimal("0.005")
    for side in ("buy", "sell"):
        lev = Decimal(leverage)
        order = Order(
            client_order_id="c",
            symbol="BTC-USDT",
            side=side,
            type="limit",
            qty=Decimal("0.01"),
            price=Decimal("50000.5"),
            stop_loss=Decimal(49000),
            leverage=lev,
        )
        book = Portfolio(cash=Decimal(100000), peak_equity=Decimal(100000))
        for _ in range(2):  # worked out, then kept
            got = facts.order_facts(order, book, None, False, mmr)
            with facts_context():
                liq = facts.liquidation_price(order.price, lev, mmr, long=side == "buy")  # type: ignore[arg-type]
                gap = 1 / lev - mmr
            assert got["liquidation.price"] == liq
            assert str(got["liquidation.price"]) == str(liq)
            assert got["liquidation.distance"] == (gap if gap > 0 else 0)


def facts_context() -> Any:
    from decimal import localcontext

    return localcontext(facts.FACT_CONTEXT)


class _PlainLog:
    """The event log as first written: every event prunes, every count works
    out the window's length afresh."""

    def __init__(self, horizon_ns: int) -> None:
        self.times: dict[tuple[str, str], list[int]] = {}
        self.horizon_ns = horizon_ns

    def record(self, kind: str, symbol: str, now_ns: int) -> None:
        for key in ((kind, symbol), (kind, "*")):
            times = self.times.setdefault(key, [])
            bisect.insort(times, now_ns)
            drop = bisect.bisect_right(times, now_ns - self.horizon_ns)
            if len(times) - drop > windows.MAX_EVENTS:
                drop = len(times) - windows.MAX_EVENTS
            del times[:drop]

    def count(self, spec: WindowSpec, symbol: str, now_ns: int) -> int:
        times = self.times.get((spec.count, symbol if spec.per_symbol else "*"), [])
        start = now_ns - int(spec.seconds * 1e9)
        return bisect.bisect_right(times, now_ns) - bisect.bisect_right(times, start)


@pytest.mark.parametrize("max_events", [windows.MAX_EVENTS, 40])
def test_window_counts_are_those_of_the_plain_event_log(
    max_events: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(windows, "MAX_EVENTS", max_events)
    rng = random.Random(3)
    log = EventLog()
    log.set_horizon(3600.0)
    plain = _PlainLog(log.horizon_ns)
    specs = [
        WindowSpec("w", "orders", 60.0, True, "f.yaml", 1),
        WindowSpec("all", "orders", 3600.0, False, "f.yaml", 2),
        WindowSpec("odd", "orders", 0.1 + 0.2, True, "f.yaml", 3),
    ]
    assert specs[0].nanos == 60 * 10**9
    now = 0
    for _ in range(5000):
        now += rng.randint(0, 40) * 10**8
        when = now - (rng.randint(0, 900) * 10**8 if rng.random() < 0.1 else 0)  # out of order
        symbol = rng.choice(["A-B", "C-D"])
        log.record("orders", symbol, when)
        plain.record("orders", symbol, when)
        for spec in specs:
            for at in (now, when):
                assert log.count(spec, symbol, at) == plain.count(spec, symbol, at)


def test_the_pack_context_is_the_one_the_class_builds() -> None:
    import attrs

    from bot4.contracts import FactContext
    from bot4.risk.policy import _fact_context

    order = _order(Decimal(2))
    book = Portfolio(cash=Decimal(1))
    for market in (None, _tick()):
        built = _fact_context(order, book, market)
        assert type(built) is FactContext
        assert built == FactContext(order=order, portfolio=book, market=market)
        assert [f.name for f in attrs.fields(FactContext)] == ["order", "portfolio", "market"]
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            built.order = order  # type: ignore[misc]


def test_an_approval_is_the_one_the_class_builds() -> None:
    import attrs

    from bot4.model import Approved
    from bot4.risk.policy import _approved

    order = _order(Decimal(2))
    built = _approved(order, ("a", "b"))
    assert type(built) is Approved
    assert built == Approved(order=order, rules=("a", "b"))
    assert built.order is order
    assert built.rules == ("a", "b")
    assert [(f.name, f.validator, f.converter) for f in attrs.fields(Approved)] == [
        ("order", None, None),
        ("rules", None, None),
    ]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        built.rules = ()  # type: ignore[misc]


def _tick() -> Any:
    from datetime import UTC, datetime

    from bot4.model import MarketData

    p = Decimal(50000)
    return MarketData(
        "BTC-USDT", "x", p - 1, p + 1, p, Decimal(1), datetime(2024, 1, 1, tzinfo=UTC)
    )


def _plain_render(template: str, values: dict[str, Any]) -> str:
    """bot4.risk.reasons.render as first written: one re.sub per rendering."""
    from bot4.risk.reasons import MAX_REASON_CHARS, PLACEHOLDER

    def one(match: Any) -> str:
        name, spec = match.group(1).strip(), match.group(2) or ""
        if name not in values:
            return "?"
        value = values[name]
        if not spec:
            return facts.describe(value)
        try:
            return format(value, spec)
        except (ValueError, TypeError):
            return facts.describe(value)

    text = PLACEHOLDER.sub(one, template)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "\u2026"
    return text


def test_a_reason_renders_as_the_plain_substitution() -> None:
    from bot4.risk.reasons import render

    rng = random.Random(11)
    names = ["a.b", " a.b ", "x", "suggested_size", "missing.fact", ""]
    specs = ["", ":.2f", ":,.2f", ":.0%", ":>10", ":d", ":q", ":.3e", ":"]
    literals = ["", "over ", " {", "} ", "é", "%s", "{{", "x" * 300]
    values: dict[str, Any] = {"a.b": 1234.5678, "x": "buy", "suggested_size": Decimal("0.04")}
    for _ in range(3000):
        template = "".join(
            rng.choice(literals) + "{" + rng.choice(names) + rng.choice(specs) + "}"
            for _ in range(rng.randint(0, 5))
        ) + rng.choice(literals)
        chosen = {k: v for k, v in values.items() if rng.random() < 0.8}
        chosen["a.b"] = rng.choice([1234.5678, True, "text", -0.5, 1e300, Decimal("3.5")])
        assert render(template, chosen) == _plain_render(template, chosen), template
