"""The common types every part of bot4 speaks: market data, signals, orders,
fills, positions, the portfolio and the risk outcomes.

All are frozen, slotted attrs classes. Money, prices and quantities are
``decimal.Decimal``; timestamps are timezone-aware UTC ``datetime``. Values are
checked when an object is built, and a refused value raises
:class:`bot4.errors.ModelError` naming the class, the field and the value, so
garbage from a data file or a plugin stops at the edge instead of deep in the
risk path.

Internal constructors skip the checks for values bot4 itself has already
checked: :func:`trusted_market_data` and :func:`trusted_market_data_batch`
(the columnar loader, which validates a whole batch of rows at once with
numpy) and :func:`trusted_portfolio` (the portfolio tracker). Anything from
outside goes through the class itself.

Symbols are ``BASE-QUOTE`` in upper case (``BTC-USDT``), optionally with a
third part for a contract kind (``BTC-USDT-PERP``).
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import repeat
from typing import Any

import attrs

from bot4.errors import ModelError

_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,2}$")
ZERO = Decimal(0)
ONE = Decimal(1)


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell: the direction a fill moves a position."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(enum.Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP_LOSS = "stop_loss"
    TAKE_PROFIT = "take_profit"


class OrderStatus(enum.Enum):
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class RiskActionKind(enum.Enum):
    EMERGENCY_CLOSE = "emergency_close"
    REDUCE_POSITION = "reduce_position"
    ADD_MARGIN = "add_margin"
    TRIP_BREAKER = "trip_breaker"


# --- converters and validators -------------------------------------------------
# attrs calls a validator as (instance, attribute, value); each names the class
# and field in the error so a bad value is traceable to its source.


def _refuse(inst: object, attr: attrs.Attribute[Any], value: object, why: str) -> ModelError:
    return ModelError(type(inst).__name__, attr.name, value, why)


def to_decimal(value: object) -> Decimal:
    """Convert int, str, float or Decimal to Decimal; floats go through ``repr``
    so that 0.1 becomes Decimal('0.1'), not its binary expansion. Booleans and
    other types are passed through untouched so the validator refuses them."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        return value  # type: ignore[return-value]  # refused by the validator
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return Decimal(repr(value).replace("inf", "Infinity"))
        return Decimal(repr(value))
    if isinstance(value, str):
        try:
            return Decimal(value.strip())
        except InvalidOperation:
            return value  # type: ignore[return-value]  # refused by the validator
    return value  # type: ignore[return-value]  # refused by the validator


def to_optional_decimal(value: object) -> Decimal | None:
    return None if value is None else to_decimal(value)


# Each validator first takes the common case (a finite Decimal in range) in one
# test; everything else goes through the full checks that name the problem.


def _finite(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if type(value) is Decimal and value.is_finite():
        return
    if not isinstance(value, Decimal):
        raise _refuse(inst, attr, value, "must be a decimal number")
    if not value.is_finite():
        raise _refuse(inst, attr, value, "must be finite (no NaN or infinity)")


def _positive(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if type(value) is Decimal and value.is_finite() and value > 0:
        return
    _finite(inst, attr, value)
    assert isinstance(value, Decimal)
    if value <= 0:
        raise _refuse(inst, attr, value, "must be greater than zero")


def _non_negative(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if type(value) is Decimal and value.is_finite() and value >= 0:
        return
    _finite(inst, attr, value)
    assert isinstance(value, Decimal)
    if value < 0:
        raise _refuse(inst, attr, value, "must not be negative")


def _optional(check: Any) -> Any:
    def validate(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(inst, attr, value)

    return validate


def _rate(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    _finite(inst, attr, value)
    assert isinstance(value, Decimal)
    if not -1 < value < 1:
        raise _refuse(inst, attr, value, "must be a fraction between -1 and 1")


def _symbol(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not _SYMBOL.match(value):
        raise _refuse(inst, attr, value, "must look like BASE-QUOTE in upper case, e.g. BTC-USDT")


def _name(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value or not value.isprintable() or value != value.strip():
        raise _refuse(inst, attr, value, "must be a non-empty printable name")


def _utc(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, datetime):
        raise _refuse(inst, attr, value, "must be a datetime")
    offset = value.utcoffset()
    if offset is None:
        raise _refuse(inst, attr, value, "must be timezone-aware (UTC), not naive")
    if offset != timedelta(0):
        raise _refuse(inst, attr, value, "must be in UTC")


def _enum(kind: type[enum.Enum]) -> Any:
    def validate(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, kind):
            raise _refuse(inst, attr, value, f"must be a {kind.__name__}")

    return validate


def _enum_value(kind: type[enum.Enum], value: object) -> object:
    """Accept an enum member or its string value; anything else is passed on
    for the validator to refuse with the field's name."""
    if isinstance(value, str):
        try:
            return kind(value.lower())
        except ValueError:
            return value
    return value


def _to_side(value: object) -> object:
    return _enum_value(Side, value)


def _to_order_type(value: object) -> object:
    return _enum_value(OrderType, value)


def _to_order_status(value: object) -> object:
    return _enum_value(OrderStatus, value)


def _to_action_kind(value: object) -> object:
    return _enum_value(RiskActionKind, value)


def _unit_interval(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, float) or not (0.0 <= value <= 1.0):
        raise _refuse(inst, attr, value, "must be a float between 0 and 1")


def _to_float(value: object) -> object:
    return (
        float(value) if isinstance(value, (int, Decimal)) and not isinstance(value, bool) else value
    )


def _frozen_mapping(value: object) -> Mapping[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return value  # type: ignore[return-value]  # refused by the validator


def _mapping(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _refuse(inst, attr, value, "must be a mapping with string keys")


_DEC = {"converter": to_decimal}
_ODEC = {"converter": to_optional_decimal}


# --- market data and signals -------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@attrs.frozen(slots=True)
class MarketData:
    """One top-of-book quote with the last trade."""

    symbol: str = attrs.field(validator=_symbol)
    exchange: str = attrs.field(validator=_name)
    bid: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    ask: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    last: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    volume: Decimal = attrs.field(validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    timestamp: datetime = attrs.field(validator=_utc)
    # A perpetual's mark price and current funding rate (a fraction per
    # funding period, -1 < rate < 1), when the data carries them; None: the
    # venue marks at the mid and funds at its configured rate.
    mark: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    funding_rate: Decimal | None = attrs.field(default=None, validator=_optional(_rate), **_ODEC)  # type: ignore[call-overload]

    def __attrs_post_init__(self) -> None:
        if self.bid > self.ask:
            raise ModelError(
                "MarketData", "bid", self.bid, f"bid must not be above ask ({self.ask})"
            )

    # Not an attrs field (so not in attrs.fields, eq, repr or a recording): a
    # slot that the loader's trusted path fills and that a tick built by the
    # class computes on first read. The kernel reads it once per tick.
    @functools.cached_property
    def ts_ns(self) -> int:
        """The event time as integer nanoseconds since the epoch (exact:
        ``timestamp`` holds microseconds)."""
        return (self.timestamp - _EPOCH) // _MICROSECOND * 1000

    # A slot as ts_ns is: the nearest double to ``last``, for code that
    # works in floats (a return, a statistic). float(Decimal) goes through
    # the Decimal's text and costs about a fifth of a whole tick of the
    # kernel; the columnar loader fills it from its fixed-point column.
    @functools.cached_property
    def last_float(self) -> float:
        """``float(last)``: the double nearest the last price (exact
        rounding, so the same value whichever way it was filled)."""
        return float(self.last)

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


# The slots' own setters: a trusted tick is object.__new__ plus ten C calls,
# against the generated __init__'s converters, validators, regex and checks.
_md_new = object.__new__
_md_symbol = MarketData.__dict__["symbol"].__set__
_md_exchange = MarketData.__dict__["exchange"].__set__
_md_bid = MarketData.__dict__["bid"].__set__
_md_ask = MarketData.__dict__["ask"].__set__
_md_last = MarketData.__dict__["last"].__set__
_md_volume = MarketData.__dict__["volume"].__set__
_md_timestamp = MarketData.__dict__["timestamp"].__set__
_md_ts_ns = MarketData.__dict__["ts_ns"].__set__
_md_mark = MarketData.__dict__["mark"].__set__
_md_funding_rate = MarketData.__dict__["funding_rate"].__set__
_md_last_float = MarketData.__dict__["last_float"].__set__


def trusted_market_data(
    symbol: str,
    exchange: str,
    bid: Decimal,
    ask: Decimal,
    last: Decimal,
    volume: Decimal,
    timestamp: datetime,
    ts_ns: int,
    mark: Decimal | None = None,
    funding_rate: Decimal | None = None,
    last_float: float | None = None,
) -> MarketData:
    """A :class:`MarketData` without conversion or validation, for values
    already checked as ``MarketData(...)`` would check them: an upper-case
    ``BASE-QUOTE`` symbol, a printable exchange name, finite Decimal prices
    above zero with ``bid <= ask``, a finite non-negative Decimal volume, a UTC
    ``timestamp`` and ``ts_ns`` equal to it in nanoseconds, and ``mark``
    (a finite Decimal above zero) and ``funding_rate`` (a finite Decimal
    strictly between -1 and 1) each None or checked, and ``last_float`` None
    (computed on first read) or ``float(last)`` exactly. The result is equal
    (``==``, ``hash``, ``repr``) to the validated object. Internal: the columnar
    loader calls it for batches it has validated; a plugin, a test or a file
    goes through ``MarketData(...)``."""
    tick: MarketData = _md_new(MarketData)
    _md_symbol(tick, symbol)
    _md_exchange(tick, exchange)
    _md_bid(tick, bid)
    _md_ask(tick, ask)
    _md_last(tick, last)
    _md_volume(tick, volume)
    _md_timestamp(tick, timestamp)
    _md_ts_ns(tick, ts_ns)
    _md_mark(tick, mark)
    _md_funding_rate(tick, funding_rate)
    if last_float is not None:
        _md_last_float(tick, last_float)
    return tick


def trusted_market_data_batch(
    symbols: Iterable[str],
    exchange: str,
    bids: Iterable[Decimal],
    asks: Iterable[Decimal],
    lasts: Iterable[Decimal],
    volumes: Iterable[Decimal],
    timestamps: Iterable[datetime],
    ts_ns: Sequence[int],
    marks: Iterable[Decimal | None] | None = None,
    funding_rates: Iterable[Decimal | None] | None = None,
    last_floats: Iterable[float] | None = None,
) -> list[MarketData]:
    """:func:`trusted_market_data` for ``len(ts_ns)`` ticks at once, under the
    same promise for every value (each iterable holds exactly that many;
    ``marks`` / ``funding_rates`` None: none has one; ``last_floats`` None:
    each computed on first read, else ``float(last)`` exactly). Field by field, each a
    ``map`` of the slot's own setter run in C: no Python frame per tick, which
    pays for the two optional fields and more. Internal, as the other."""
    n = len(ts_ns)
    ticks: list[MarketData] = list(map(_md_new, repeat(MarketData, n)))
    run = deque[None](maxlen=0).extend  # drives a map to its end, keeping nothing
    run(map(_md_symbol, ticks, symbols))
    run(map(_md_exchange, ticks, repeat(exchange, n)))
    run(map(_md_bid, ticks, bids))
    run(map(_md_ask, ticks, asks))
    run(map(_md_last, ticks, lasts))
    run(map(_md_volume, ticks, volumes))
    run(map(_md_timestamp, ticks, timestamps))
    run(map(_md_ts_ns, ticks, ts_ns))
    run(map(_md_mark, ticks, repeat(None, n) if marks is None else marks))
    run(map(_md_funding_rate, ticks, repeat(None, n) if funding_rates is None else funding_rates))
    if last_floats is not None:
        run(map(_md_last_float, ticks, last_floats))
    return ticks


@attrs.frozen(slots=True)
class Signal:
    """A strategy's wish to trade. Signals never reach an exchange directly:
    the kernel turns them into orders only after the risk policy approves."""

    symbol: str = attrs.field(validator=_symbol)
    side: Side = attrs.field(converter=_to_side, validator=_enum(Side))
    confidence: float = attrs.field(converter=_to_float, validator=_unit_interval)
    size: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    entry: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    stop_loss: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    take_profit: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    metadata: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, validator=_mapping, eq=False, hash=False
    )
    strategy: str = attrs.field(default="manual", validator=_name)
    leverage: Decimal = attrs.field(default=ONE, validator=_positive, **_DEC)  # type: ignore[call-overload]


# --- orders and fills ---------------------------------------------------------


@attrs.frozen(slots=True)
class Order:
    """An order intent. ``client_order_id`` is chosen by bot4 and makes placing
    idempotent: the same id placed twice is one order at the exchange."""

    client_order_id: str = attrs.field(validator=_name)
    symbol: str = attrs.field(validator=_symbol)
    side: Side = attrs.field(converter=_to_side, validator=_enum(Side))
    type: OrderType = attrs.field(converter=_to_order_type, validator=_enum(OrderType))
    qty: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    price: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    stop_loss: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    take_profit: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    leverage: Decimal = attrs.field(default=ONE, validator=_positive, **_DEC)  # type: ignore[call-overload]
    reduce_only: bool = False
    strategy: str = attrs.field(default="manual", validator=_name)
    correlation_id: str = ""

    def __attrs_post_init__(self) -> None:
        if self.type is not OrderType.MARKET and self.price is None:
            raise ModelError(
                "Order", "price", None, f"a {self.type.value} order needs a limit or trigger price"
            )


@attrs.frozen(slots=True)
class OrderState:
    """What the exchange knows of an order right now."""

    order: Order
    status: OrderStatus = attrs.field(converter=_to_order_status, validator=_enum(OrderStatus))
    filled_qty: Decimal = attrs.field(default=ZERO, validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    avg_price: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]
    exchange_order_id: str = ""
    reason: str = ""

    def __attrs_post_init__(self) -> None:
        if self.filled_qty > self.order.qty:
            raise ModelError(
                "OrderState",
                "filled_qty",
                self.filled_qty,
                f"more than the order quantity {self.order.qty}",
            )

    @property
    def remaining(self) -> Decimal:
        return self.order.qty - self.filled_qty


@attrs.frozen(slots=True)
class Fill:
    """One execution. ``fee`` is in the quote currency and always charged."""

    fill_id: str = attrs.field(validator=_name)
    client_order_id: str = attrs.field(validator=_name)
    symbol: str = attrs.field(validator=_symbol)
    side: Side = attrs.field(converter=_to_side, validator=_enum(Side))
    qty: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    price: Decimal = attrs.field(validator=_positive, **_DEC)  # type: ignore[call-overload]
    fee: Decimal = attrs.field(validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    timestamp: datetime = attrs.field(validator=_utc)
    liquidity: str = "taker"

    @property
    def notional(self) -> Decimal:
        return self.qty * self.price


# --- positions and portfolio ----------------------------------------------------


@attrs.frozen(slots=True)
class Position:
    """A netted position in one symbol. ``qty`` is signed: positive is long."""

    symbol: str = attrs.field(validator=_symbol)
    qty: Decimal = attrs.field(validator=_finite, **_DEC)  # type: ignore[call-overload]
    entry_price: Decimal = attrs.field(validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    leverage: Decimal = attrs.field(default=ONE, validator=_positive, **_DEC)  # type: ignore[call-overload]
    realized_pnl: Decimal = attrs.field(default=ZERO, validator=_finite, **_DEC)  # type: ignore[call-overload]
    stop_loss: Decimal | None = attrs.field(default=None, validator=_optional(_positive), **_ODEC)  # type: ignore[call-overload]

    @property
    def side(self) -> Side | None:
        if self.qty > 0:
            return Side.BUY
        if self.qty < 0:
            return Side.SELL
        return None

    def notional(self, price: Decimal) -> Decimal:
        return abs(self.qty) * price

    def unrealized_pnl(self, price: Decimal) -> Decimal:
        return (price - self.entry_price) * self.qty

    def margin(self) -> Decimal:
        """Initial margin held for the position at its entry price."""
        return abs(self.qty) * self.entry_price / self.leverage


@attrs.frozen(slots=True)
class Balance:
    """Account balance in the quote currency: ``total = free + used``."""

    currency: str = attrs.field(validator=_name)
    total: Decimal = attrs.field(validator=_finite, **_DEC)  # type: ignore[call-overload]
    free: Decimal = attrs.field(validator=_finite, **_DEC)  # type: ignore[call-overload]
    used: Decimal = attrs.field(validator=_non_negative, **_DEC)  # type: ignore[call-overload]


@attrs.frozen(slots=True)
class Activity:
    """What the book did lately, for the daily facts of the rule files
    (``portfolio.realized_pnl_today``, ``portfolio.daily_loss``,
    ``portfolio.losing_streak``, ``position.age_seconds``). Kept by the
    tracker from the fills themselves, so a restart that replays the
    journal's fills restores it exactly."""

    day: int = -1  # the UTC day (event ns // 86,400 s) realized_today is of
    realized_today: Decimal = ZERO  # realised PnL minus fees of that day's fills
    losing_streak: int = 0  # fills in a row that closed at a loss (a profit resets it)
    opened_ns: Mapping[str, int] = attrs.field(factory=dict, eq=False, hash=False)

    def realized_on(self, day: int) -> Decimal:
        """Realised PnL (fees included) of UTC day ``day``: 0 if none traded then."""
        return self.realized_today if day == self.day else ZERO


NO_ACTIVITY = Activity()


@attrs.frozen(slots=True)
class Portfolio:
    """A snapshot of the book: cash balance, positions and the marks used to
    value them. ``peak_equity`` is the high-water mark for drawdown;
    ``activity`` the day's realised PnL, the losing streak and when each
    position opened (none known: zeros)."""

    cash: Decimal = attrs.field(validator=_finite, **_DEC)  # type: ignore[call-overload]
    positions: Mapping[str, Position] = attrs.field(factory=dict, eq=False, hash=False)
    marks: Mapping[str, Decimal] = attrs.field(factory=dict, eq=False, hash=False)
    peak_equity: Decimal = attrs.field(default=ZERO, validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    activity: Activity = attrs.field(default=NO_ACTIVITY, eq=False, hash=False)

    def mark(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return self.marks.get(symbol, pos.entry_price if pos else ZERO)

    @property
    def unrealized_pnl(self) -> Decimal:
        return sum((p.unrealized_pnl(self.mark(s)) for s, p in self.positions.items()), ZERO)

    @property
    def equity(self) -> Decimal:
        """Cash plus unrealised PnL (perpetual-style: positions are margined,
        not bought, so only their PnL counts towards equity)."""
        return self.cash + self.unrealized_pnl

    @property
    def gross_exposure(self) -> Decimal:
        return sum((p.notional(self.mark(s)) for s, p in self.positions.items()), ZERO)

    @property
    def drawdown(self) -> Decimal:
        peak = max(self.peak_equity, self.equity)
        return ZERO if peak <= 0 else (peak - self.equity) / peak


# Built by bot4's own PortfolioTracker on every mark change (every tick of a
# held symbol): that is the hot path, and the tracker's figures already hold
# the invariants the validators check (its arithmetic runs under a context that
# traps overflow and invalid operations, so every figure is a finite Decimal).
_new = object.__new__
_set_cash = Portfolio.__dict__["cash"].__set__
_set_positions = Portfolio.__dict__["positions"].__set__
_set_marks = Portfolio.__dict__["marks"].__set__
_set_peak = Portfolio.__dict__["peak_equity"].__set__
_set_activity = Portfolio.__dict__["activity"].__set__


def trusted_portfolio(
    cash: Decimal,
    positions: Mapping[str, Position],
    marks: Mapping[str, Decimal],
    peak_equity: Decimal,
    activity: Activity = NO_ACTIVITY,
) -> Portfolio:
    """A :class:`Portfolio` without conversion or validation, for values that
    are already a finite Decimal ``cash`` and a finite, non-negative Decimal
    ``peak_equity``. Internal: anything from outside (a plugin, a file) goes
    through ``Portfolio(...)`` and its validators."""
    portfolio: Portfolio = _new(Portfolio)
    _set_cash(portfolio, cash)
    _set_positions(portfolio, positions)
    _set_marks(portfolio, marks)
    _set_peak(portfolio, peak_equity)
    _set_activity(portfolio, activity)
    return portfolio


# --- risk outcomes ------------------------------------------------------------


@attrs.frozen(slots=True)
class Approved:
    """The policy let the order through. ``rules`` names every rule checked."""

    order: Order
    rules: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class Rejected:
    """The policy refused. ``rule`` decided it; ``reason`` carries the numbers;
    ``suggested_size`` is the largest size that would pass (zero if none)."""

    rule: str
    reason: str
    suggested_size: Decimal = attrs.field(default=ZERO, validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    values: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
    order: Order | None = None


Decision = Approved | Rejected


@attrs.frozen(slots=True)
class RiskAction:
    """Something the risk policy wants done to an open position or the book."""

    kind: RiskActionKind = attrs.field(converter=_to_action_kind, validator=_enum(RiskActionKind))
    symbol: str | None
    rule: str
    reason: str
    fraction: Decimal = attrs.field(default=ONE, validator=_non_negative, **_DEC)  # type: ignore[call-overload]
    values: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False)
