"""The journal's fast body encoder writes exactly what the generic path
(``codec.encode`` then ``json.dumps(sort_keys=True)``) writes: bodies are
checksummed and read back, so one character of difference would be a
different journal."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import attrs

from bot4 import codec
from bot4.journal.encoding import body_of, generic_body
from bot4.model import (
    Approved,
    Balance,
    Fill,
    MarketData,
    Order,
    OrderState,
    OrderStatus,
    OrderType,
    Position,
    Rejected,
    RiskAction,
    RiskActionKind,
    Side,
)

_NASTY = ['"', "\\", "\n", "\x00", "\x1f", "é", "€", "😀", "{", "}", "'", "\u2028", "a"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(_NASTY) for _ in range(rng.randint(0, 6)))


def _dec(rng: random.Random) -> Decimal:
    return rng.choice(
        [
            Decimal("0.01"),
            Decimal("1E-30"),
            Decimal("123456789012345678901234567890.123456789"),
            Decimal("5E+3"),
            Decimal("-0"),
            Decimal(rng.randint(1, 10**9)).scaleb(-rng.randint(0, 12)),
        ]
    )


def _order(rng: random.Random, n: int) -> Order:
    typ = rng.choice(list(OrderType))
    return Order(
        f"s-e-{n}",
        "BTC-USDT",
        rng.choice(list(Side)),
        typ,
        abs(_dec(rng)) or Decimal(1),
        price=None if typ is OrderType.MARKET else Decimal("50000.5"),
        stop_loss=rng.choice([None, Decimal("49000")]),
        leverage=Decimal(rng.randint(1, 5)),
        reduce_only=rng.random() < 0.5,
        correlation_id=_text(rng),
    )


def _payloads(rng: random.Random, n: int) -> list[object]:
    o = _order(rng, n)
    ts = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**12))
    values = {"x": 1.5, "y": [1, "a", None, True], _text(rng): {"n": Decimal("1.10")}}
    return [
        o,
        OrderState(o, rng.choice(list(OrderStatus)), Decimal(0), None, _text(rng), _text(rng)),
        Fill(f"f-{n}", o.client_order_id, o.symbol, o.side, o.qty, Decimal("1.5"), Decimal(0), ts),
        Approved(o, (_text(rng), "max-position-size")),
        Rejected("max-leverage", _text(rng), Decimal("0.001"), values, o),
        Rejected("x", "no order", order=None),
        RiskAction(RiskActionKind.TRIP_BREAKER, None, "r", _text(rng), Decimal("0.5"), values),
        Position("BTC-USDT", Decimal("-0.02"), Decimal("50000"), stop_loss=Decimal("51000")),
        Balance("USDT", Decimal("100"), Decimal("90"), Decimal("10")),
        MarketData(
            "BTC-USDT", "paper", Decimal("1.1"), Decimal("1.2"), Decimal("1.15"), Decimal(3), ts
        ),
        {"kind": "orders", "symbol": "BTC-USDT"},
        {"key": "peak_equity", "value": {"peak": "10001.5"}, 3: "int key"},
        {"tripped": True, "reason": _text(rng), "at_ns": 2**63 - 1, "f": float("inf")},
        [o, (1, 2), {"nested": [Decimal("NaN"), Decimal("-Infinity")]}],
        ts.astimezone(timezone(timedelta(hours=5, minutes=30))),
        Side.BUY,
        None,
        "plain",
        12345678901234567890,
        False,
    ]


def test_every_body_is_the_generic_text() -> None:
    rng = random.Random(7)
    seen = 0
    for n in range(400):
        for payload in _payloads(rng, n):
            assert body_of(payload) == generic_body(payload), payload
            seen += 1
    assert seen == 400 * 20


def test_an_order_seen_again_gives_the_same_text_and_a_new_one_its_own() -> None:
    rng = random.Random(1)
    first = _order(rng, 1)
    twin = attrs.evolve(first, qty=first.qty + 1)  # equal but for one field, new object
    assert body_of(first) == body_of(first) == generic_body(first)
    assert body_of(twin) == generic_body(twin) != body_of(first)
    for n in range(10_000):  # past the identity table's bound: still exact
        o = _order(rng, n)
        assert body_of(o) == generic_body(o)
    assert body_of(first) == generic_body(first)


def test_a_body_decodes_to_its_payload() -> None:
    import json

    rng = random.Random(3)
    for payload in _payloads(rng, 1)[:10]:
        assert codec.decode(json.loads(body_of(payload))) == payload


def test_every_member_of_the_models_enums_is_its_generic_text() -> None:
    import enum

    from bot4 import model

    enums = [v for v in vars(model).values() if isinstance(v, type) and issubclass(v, enum.Enum)]
    assert len(enums) >= 4
    for cls in enums:
        for member in cls:
            assert body_of(member) == generic_body(member), member
            assert body_of([member, {"k": member}]) == generic_body([member, {"k": member}])
