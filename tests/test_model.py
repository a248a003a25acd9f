"""The common types refuse bad values at construction, naming field and value,
and the codec carries every model object through JSON exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot4 import codec
from bot4.errors import ModelError
from bot4.model import (
    Fill,
    MarketData,
    Order,
    OrderState,
    OrderStatus,
    OrderType,
    Portfolio,
    Position,
    Rejected,
    RiskAction,
    RiskActionKind,
    Side,
    Signal,
)

D = Decimal
NOW = datetime(2024, 3, 1, 12, tzinfo=UTC)


def md(**over: Any) -> MarketData:
    fields: dict[str, Any] = {
        "symbol": "BTC-USDT",
        "exchange": "paper",
        "bid": "50000",
        "ask": "50001",
        "last": "50000.5",
        "volume": "1.5",
        "timestamp": NOW,
    }
    fields.update(over)
    return MarketData(**fields)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"bid": "50002"}, "MarketData.bid=Decimal('50002'): bid must not be above ask (50001)"),
        ({"volume": "-1"}, "MarketData.volume=Decimal('-1'): must not be negative"),
        (
            {"bid": float("nan")},
            "MarketData.bid=Decimal('NaN'): must be finite (no NaN or infinity)",
        ),
        (
            {"ask": "Infinity"},
            "MarketData.ask=Decimal('Infinity'): must be finite (no NaN or infinity)",
        ),
        ({"last": "abc"}, "MarketData.last='abc': must be a decimal number"),
        ({"last": True}, "MarketData.last=True: must be a decimal number"),
        ({"last": "0"}, "MarketData.last=Decimal('0'): must be greater than zero"),
        ({"timestamp": datetime(2024, 3, 1)}, "must be timezone-aware (UTC), not naive"),
        (
            {"timestamp": datetime(2024, 3, 1, tzinfo=timezone(timedelta(hours=2)))},
            "must be in UTC",
        ),
        ({"timestamp": "2024-03-01"}, "MarketData.timestamp='2024-03-01': must be a datetime"),
        ({"symbol": "btc-usdt"}, "MarketData.symbol='btc-usdt': must look like BASE-QUOTE"),
        ({"symbol": "BTCUSDT"}, "MarketData.symbol='BTCUSDT': must look like BASE-QUOTE"),
        ({"symbol": "BTC/USDT"}, "MarketData.symbol='BTC/USDT'"),
        ({"exchange": ""}, "MarketData.exchange='': must be a non-empty printable name"),
    ],
)
def test_market_data_refuses_bad_values_naming_field_and_value(
    over: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError) as info:
        md(**over)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # callers that catch ValueError still do


def test_floats_become_the_decimal_they_print_as() -> None:
    tick = md(bid=0.1, ask=0.3, last=0.2)
    assert tick.bid == D("0.1")
    assert tick.last == D("0.2")


def test_order_needs_a_price_unless_market() -> None:
    with pytest.raises(
        ModelError, match=r"Order.price=None: a limit order needs a limit or trigger price"
    ):
        Order("c1", "BTC-USDT", "buy", "limit", "1")
    order = Order("c1", "BTC-USDT", "BUY", "market", "0.5")
    assert order.side is Side.BUY
    assert order.type is OrderType.MARKET
    with pytest.raises(ModelError, match=r"Order.side='hold': must be a Side"):
        Order("c1", "BTC-USDT", "hold", "market", "1")
    with pytest.raises(ModelError, match=r"Order.qty=Decimal\('-1'\): must be greater than zero"):
        Order("c1", "BTC-USDT", "buy", "market", "-1")


def test_signal_confidence_and_state_bounds() -> None:
    with pytest.raises(ModelError, match=r"Signal.confidence=1.5: must be a float between 0 and 1"):
        Signal("BTC-USDT", "buy", 1.5, "1", "50000")
    order = Order("c1", "BTC-USDT", "buy", "market", "1")
    with pytest.raises(
        ModelError, match=r"OrderState.filled_qty=Decimal\('2'\): more than the order quantity 1"
    ):
        OrderState(order, OrderStatus.FILLED, filled_qty="2")


def test_portfolio_equity_and_drawdown() -> None:
    pos = Position("BTC-USDT", qty="0.1", entry_price="50000")
    book = Portfolio(
        cash="10000", positions={"BTC-USDT": pos}, marks={"BTC-USDT": D(45000)}, peak_equity="10500"
    )
    assert book.unrealized_pnl == D(-500)
    assert book.equity == D(9500)
    assert book.gross_exposure == D(4500)
    assert book.drawdown == D(1000) / D(10500)


decimals = st.decimals(min_value=D("0.00000001"), max_value=D("1000000"), allow_nan=False, places=8)
times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)


@given(bid=decimals, spread=decimals, volume=decimals, ts=times)
def test_valid_market_data_is_accepted_and_round_trips(
    bid: D, spread: D, volume: D, ts: datetime
) -> None:
    tick = md(bid=bid, ask=bid + spread, last=bid, volume=volume, timestamp=ts)
    again = codec.decode(json.loads(json.dumps(codec.encode(tick))))
    assert again == tick
    assert again.bid.as_tuple() == tick.bid.as_tuple()  # not one digit lost


@given(bid=decimals, below=decimals)
def test_crossed_book_is_always_refused(bid: D, below: D) -> None:
    with pytest.raises(ModelError, match="bid must not be above ask"):
        md(bid=bid + below, ask=bid)


@given(
    value=st.one_of(
        st.just(float("nan")),
        st.just(float("inf")),
        st.just(float("-inf")),
        st.text(max_size=8).filter(lambda s: not _is_number(s)),
        st.booleans(),
        st.none(),
    )
)
def test_garbage_prices_are_refused_with_the_field_named(value: object) -> None:
    with pytest.raises(ModelError) as info:
        md(ask=value)
    assert info.value.field == "ask"
    assert info.value.cls == "MarketData"


def _is_number(text: str) -> bool:
    try:
        return D(text.strip()).is_finite()
    except ArithmeticError:
        return False


def test_every_event_type_round_trips_through_the_codec() -> None:
    order = Order("c1", "ETH-USDT", "sell", "stop_loss", "0.25", price="2900.5", reduce_only=True)
    objects: list[object] = [
        md(),
        Signal("BTC-USDT", "buy", 0.5, "0.01", "50000", stop_loss="49000", metadata={"fast": 5}),
        order,
        OrderState(order, "partially_filled", filled_qty="0.1", avg_price="2900.5"),
        Fill("f1", "c1", "ETH-USDT", "sell", "0.1", "2900.5", "0.116", NOW),
        Rejected(
            "max-position-size", "too big", suggested_size="0.04", values={"x": "1"}, order=order
        ),
        RiskAction(
            RiskActionKind.REDUCE_POSITION,
            "BTC-USDT",
            "liquidation-reduce",
            "close",
            fraction="0.5",
        ),
    ]
    for obj in objects:
        text = json.dumps(codec.encode(obj))
        assert codec.decode(json.loads(text)) == obj, type(obj).__name__
    with pytest.raises(ValueError, match="unknown record type 'Nope'"):
        codec.decode({"_t": "Nope"})
