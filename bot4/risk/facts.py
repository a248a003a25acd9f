"""How the facts rule files can name are built from bot4's types.

Which facts there are, of which kind and stage (``order``, ``tick``,
``fill``), is :mod:`bot4.risk.fact_names`; its names are re-exported here, so
``from bot4.risk.facts import BUILTIN_FACTS, ORDER`` goes on working.

Conversion (documented because the engine only takes JSON numbers):
``Decimal`` becomes a binary64 ``float`` by Python's ``float()``, i.e. rounded
to the nearest double, ties to even (relative error at most 2**-53); a
``datetime`` becomes seconds since the Unix epoch as a float; NaN, infinities
and magnitudes above 1e15 are refused (the order is then rejected, fail
closed); booleans stay booleans; strings must be short and printable.
Near a limit the nearest double can sit on the wrong side of it, so the
double is only the engine's view: every order decision is confirmed on the
Decimal facts themselves (:mod:`bot4.risk.exact`).

Derived ratios (``portfolio.drawdown``, ``portfolio.leverage_after``,
``liquidation.distance``) are computed here only after checking the divisor is
non-zero; the default policy prefers multiplications in the conditions anyway
(``gross_after > equity * max_gross_exposure``), which need no division at all.

A missing value has a defined stand-in, never NaN: no stop loss gives
``order.has_stop_loss = false`` and ``order.stop_loss = 0``; no market data
gives ``market.available = false`` and zero prices; no position gives zeros.

A held position's margin figures come from the venue when it reports them
(:mod:`bot4.venue_margin`, kept by the kernel's margin desk): the tick
stage's ``liquidation.price`` (and so ``liquidation.distance``), and
``position.margin``, ``position.margin_ratio``, ``position.funding_paid`` and
``market.mark`` in both stages (:func:`margin_facts`, built only when a rule
reads one). Whatever the venue does not report, or reports wrongly, is the
formula's: the isolated liquidation price at ``maintenance_margin_rate``,
the initial margin, no funding, the mid. An order's own liquidation facts are
of a position not yet held, so always the formula's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, getcontext, setcontext
from types import MappingProxyType
from typing import Any

from bot4.errors import RiskError
from bot4.model import ZERO, Fill, MarketData, Order, Portfolio, Position, Side
from bot4.risk.engine import number
from bot4.risk.expr import BOOL, MAX_MAGNITUDE, NUMBER, STRING, Value
from bot4.risk.fact_names import (
    BUILTIN_FACTS,
    CONTEXT_FACTS,
    FILL,
    LIQUIDATION_FACTS,
    MARGIN_FACTS,
    NO_BALANCE_MARGIN_RATIO,
    NO_EQUITY_LEVERAGE,
    ORDER,
    STAGES,
    TICK,
    FactSpec,
)
from bot4.venue_margin import VenueMargin

# The catalogue's names, re-exported (see the module docstring), and the builders.
__all__ = [
    "BUILTIN_FACTS",
    "CONTEXT_FACTS",
    "FACT_CONTEXT",
    "FACT_DIGITS",
    "FILL",
    "LIQUIDATION_FACTS",
    "MARGIN_FACTS",
    "NO_BALANCE_MARGIN_RATIO",
    "NO_EQUITY_LEVERAGE",
    "ORDER",
    "STAGES",
    "TICK",
    "FactSpec",
    "context_facts",
    "convert",
    "convert_all",
    "describe",
    "encode",
    "entry_price",
    "fill_facts",
    "kind_of_value",
    "liquidation_price",
    "margin_facts",
    "order_facts",
    "portfolio_facts",
    "tick_facts",
    "to_fact",
]

# The Decimal arithmetic of order facts. The default context's 28 digits
# would round a product such as qty x price (two 15-digit numbers) to nearest,
# possibly down onto a limit it is above; at 60 digits the products of bot4's
# quantities and prices are exact, and a quotient (drawdown, margin, 1 /
# leverage) is correctly rounded 60 digits down, far below what any double
# or any limit can tell apart. The exact confirmation of a decision
# (bot4.risk.exact) compares these values.
FACT_DIGITS = 60
FACT_CONTEXT = Context(prec=FACT_DIGITS, rounding=ROUND_HALF_EVEN)


_DAY_NS = 86_400 * 10**9
_NS = Decimal(10**9)

# --- conversion ----------------------------------------------------------------------


def to_fact(name: str, value: object) -> Value:
    """Convert one value for the engine, or raise RiskError naming the fact."""
    kind = type(value)
    if kind is Decimal or kind is float or kind is int:
        # Fast path (every decision converts a dozen numbers). NaN fails both
        # comparisons, so it is refused here too.
        number = float(value)  # type: ignore[arg-type]
        if -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE:
            return number
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise RiskError(f"fact {name} is {value} (not a finite number)")
        number = float(value)
    elif isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, datetime):
        if value.utcoffset() is None:
            raise RiskError(f"fact {name} is a naive datetime (needs a time zone)")
        number = value.timestamp()
    elif isinstance(value, str):
        if len(value) > 100 or not value.isprintable():
            raise RiskError(f"fact {name} is not a short printable string")
        return value
    else:
        raise RiskError(f"fact {name} has unsupported type {type(value).__name__}")
    if not math.isfinite(number):
        raise RiskError(f"fact {name} is {number} (not a finite number)")
    if abs(number) > MAX_MAGNITUDE:
        raise RiskError(f"fact {name} = {number:g} is beyond +/-{MAX_MAGNITUDE:g}")
    return number


def kind_of_value(value: Value) -> str:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, float):
        return NUMBER
    return STRING


# --- builders ---------------------------------------------------------------------------


def liquidation_price(entry: Decimal, leverage: Decimal, mmr: Decimal, long: bool) -> Decimal:
    """Isolated-margin, linear contract: long = entry x (1 - 1/lev + mmr),
    short = entry x (1 + 1/lev - mmr). Exact in Decimal; leverage is > 0."""
    if leverage <= 0:
        raise RiskError(f"leverage {leverage} must be greater than zero")
    inverse = 1 / leverage
    factor = (1 - inverse + mmr) if long else (1 + inverse - mmr)
    return entry * factor


def _distance(price: Decimal, liq: Decimal, long: bool) -> Decimal:
    """How far ``price`` is from ``liq`` on the position's safe side, relative;
    0 at or past it. Not ``|price - liq|``: a price that gapped through a
    long's liquidation price is not safe again (and a venue's liquidation
    price on the wrong side of the price says the position is being
    liquidated)."""
    if price <= 0:
        raise RiskError(f"price {price} must be greater than zero for a liquidation distance")
    gap = price - liq if long else liq - price
    return gap / price if gap > 0 else ZERO


# The last book's portfolio facts: (snapshot, arithmetic context, whether
# its positions are read-only, facts).
_LAST_BOOK: list[tuple[Portfolio, tuple[int, str], bool, dict[str, object]]] = []


def _portfolio(p: Portfolio) -> dict[str, object]:
    """Portfolio facts in one pass over the positions. Same definitions as
    ``Portfolio.equity`` / ``gross_exposure`` / ``drawdown`` (a test holds
    them equal), without walking the positions once per property.

    Cached between marks: a :class:`~bot4.portfolio.PortfolioTracker`
    snapshot (read-only mappings, rebuilt whenever a mark or fill changes the
    book) gives the same facts until it is replaced, in the same Decimal
    context. So does a Portfolio over plain dicts while it holds no position:
    its facts are then its cash and peak alone, attributes of a frozen
    object (the check that it still holds none is made on every use). One
    whose owner may change its positions is otherwise computed afresh every
    time. Callers only read the returned dict."""
    ctx = getcontext()
    key = (ctx.prec, ctx.rounding)
    if _LAST_BOOK:
        last, last_key, frozen, facts = _LAST_BOOK[0]
        if last is p and last_key == key and (frozen or not p.positions):
            return facts
    facts = portfolio_facts(p)
    if type(p.positions) is MappingProxyType and type(p.marks) is MappingProxyType:
        _LAST_BOOK[:] = [(p, key, True, facts)]
    elif not p.positions:
        _LAST_BOOK[:] = [(p, key, False, facts)]
    return facts


def portfolio_facts(p: Portfolio) -> dict[str, object]:
    """The portfolio facts of ``p``, computed afresh (:func:`_portfolio`
    keeps the last book's); the price band checks its edge books with it."""
    upnl = gross = margin = ZERO
    marks = p.marks
    for symbol, pos in p.positions.items():
        mark = marks.get(symbol, pos.entry_price)
        size = abs(pos.qty)
        upnl += (mark - pos.entry_price) * pos.qty
        gross += size * mark
        margin += size * pos.entry_price / pos.leverage
    equity = p.cash + upnl
    peak = max(p.peak_equity, equity)
    return {
        "portfolio.cash": p.cash,
        "portfolio.equity": equity,
        "portfolio.peak_equity": p.peak_equity,
        "portfolio.drawdown": ZERO if peak <= 0 else (peak - equity) / peak,
        "portfolio.gross_exposure": gross,
        "portfolio.free_margin": equity - margin,
    }


def _market(m: MarketData | None) -> dict[str, object]:
    if m is None:
        return {
            "market.available": False,
            "market.bid": 0,
            "market.ask": 0,
            "market.last": 0,
            "market.mid": 0,
        }
    return {
        "market.available": True,
        "market.bid": m.bid,
        "market.ask": m.ask,
        "market.last": m.last,
        "market.mid": m.mid,
    }


def entry_price(order: Order, market: MarketData | None) -> Decimal:
    if order.price is not None:
        return order.price
    if market is not None and market.symbol == order.symbol:
        return market.mid
    raise RiskError(f"market order for {order.symbol} and no market data: no entry price")


def order_facts(
    order: Order,
    portfolio: Portfolio,
    market: MarketData | None,
    breaker_tripped: bool,
    mmr: Decimal | None,
    venue: VenueMargin | None = None,
    wanted: frozenset[str] = frozenset(),
) -> dict[str, object]:
    """Raw (unconverted) facts for one order, computed in :data:`FACT_CONTEXT`;
    those of :data:`MARGIN_FACTS` only when in ``wanted`` (``venue``: the
    venue's view of the position held in the order's symbol)."""
    saved = getcontext()
    setcontext(FACT_CONTEXT)
    try:
        facts = _order_facts(order, portfolio, market, breaker_tripped, mmr)
        if wanted:
            held = portfolio.positions.get(order.symbol)
            quote = market if market is not None and market.symbol == order.symbol else None
            mark = portfolio.mark(order.symbol)
            margin_facts(wanted, facts, held, quote, mark, mmr, venue)
        return facts
    finally:
        setcontext(saved)


# ``Enum.value`` and ``Side.sign`` are Python-level properties, and an enum
# member hashes in Python too (so a dict keyed by members is no cheaper): an
# order's enums are read as the member's ``_value_`` and by identity.
_BUY = Side.BUY
# The last (leverage, mmr) an order's liquidation figures were worked out
# for, with them: (leverage, mmr, long factor, short factor, distance). Most
# orders of a session ask for the same leverage (often the shared ``ONE``),
# and the maintenance rate is the policy's own object; kept as one tuple.
_LAST_LEVERAGE: list[tuple[Decimal, Decimal, Decimal, Decimal, Decimal]] = []


def _leverage_terms(leverage: Decimal, mmr: Decimal) -> tuple[Decimal, Decimal, Decimal]:
    """The factors :func:`liquidation_price` multiplies the entry by (long,
    short) and the order's liquidation distance, in FACT_CONTEXT (the only
    context :func:`_order_facts` runs in), by the same operations."""
    if _LAST_LEVERAGE:
        last = _LAST_LEVERAGE[0]
        if last[0] is leverage and last[1] is mmr:
            return last[2], last[3], last[4]
    if leverage <= 0:
        raise RiskError(f"leverage {leverage} must be greater than zero")
    inverse = 1 / leverage
    long_factor = 1 - inverse + mmr
    short_factor = 1 + inverse - mmr
    # (entry - liq) / entry (a long; the mirror for a short) simplifies to
    # 1/leverage - mmr on both sides; below 0 the entry is past liquidation.
    gap = inverse - mmr
    distance = gap if gap > 0 else ZERO
    if type(leverage) is Decimal and type(mmr) is Decimal:  # immutable: kept by identity
        _LAST_LEVERAGE[:] = [(leverage, mmr, long_factor, short_factor, distance)]
    return long_factor, short_factor, distance


def _order_facts(
    order: Order,
    portfolio: Portfolio,
    market: MarketData | None,
    breaker_tripped: bool,
    mmr: Decimal | None,
) -> dict[str, object]:
    """Run by :func:`order_facts`, in FACT_CONTEXT."""
    symbol = order.symbol
    if market is not None and market.symbol != symbol:
        market = None  # a quote for another symbol says nothing about this order
    entry = order.price
    if entry is None:
        entry = entry_price(order, market)
    side = order.side
    sign = 1 if side is _BUY else -1  # Side.sign
    qty = order.qty
    position = portfolio.positions.get(symbol)
    if position is not None:
        pos_qty = position.qty
        mark = portfolio.mark(symbol)
        held_entry: Decimal | int = position.entry_price
    else:
        pos_qty = ZERO
        mark = entry
        held_entry = 0
    along = pos_qty * sign
    after = pos_qty + sign * qty
    reducing = order.reduce_only or (along < 0 and qty <= -along)
    book = _portfolio(portfolio)
    gross = book["portfolio.gross_exposure"]
    equity = book["portfolio.equity"]
    assert isinstance(gross, Decimal)
    assert isinstance(equity, Decimal)
    held_notional = abs(pos_qty) * mark
    notional_after = abs(after) * entry
    gross_after = gross - held_notional + notional_after
    if equity > 0:
        leverage_after: object = gross_after / equity
    else:
        leverage_after = 0 if gross_after == 0 else NO_EQUITY_LEVERAGE
    stop = order.stop_loss
    facts: dict[str, object] = {
        "order.symbol": symbol,
        "order.exchange": market.exchange if market is not None else "",
        "order.type": order.type._value_,
        "order.qty": qty,
        "order.price": entry,
        "order.notional": qty * entry,
        "order.side": side._value_,
        "order.leverage": order.leverage,
        "order.has_stop_loss": stop is not None,
        "order.stop_loss": stop if stop is not None else 0,
        "order.reduce_only": order.reduce_only,
        "order.reducing": reducing,
        **book,
        "portfolio.gross_after": gross_after,
        "portfolio.leverage_after": leverage_after,
        "position.qty": pos_qty,
        "position.qty_along": along,
        "position.notional": held_notional,
        "position.notional_after": notional_after,
        "position.entry_price": held_entry,
    }
    if market is None:
        facts["market.available"] = False
        facts["market.bid"] = facts["market.ask"] = facts["market.last"] = 0
        facts["market.mid"] = 0
    else:
        facts["market.available"] = True
        facts["market.bid"] = market.bid
        facts["market.ask"] = market.ask
        facts["market.last"] = market.last
        facts["market.mid"] = market.mid
    facts["breaker.tripped"] = breaker_tripped
    if mmr is not None:
        long_factor, short_factor, distance = _leverage_terms(order.leverage, mmr)
        facts["liquidation.price"] = entry * (long_factor if sign > 0 else short_factor)
        facts["liquidation.distance"] = distance
    return facts


def context_facts(
    wanted: frozenset[str],
    facts: dict[str, object],
    portfolio: Portfolio,
    now_ns: int,
    symbol: str,
) -> None:
    """Add to ``facts`` those of :data:`CONTEXT_FACTS` in ``wanted``, for the
    event at ``now_ns`` (UTC) in ``symbol``. ``facts`` already holds the
    portfolio facts (equity and cash, for the day's loss)."""
    if "time.hour" in wanted or "time.minute" in wanted or "time.weekday" in wanted:
        seconds = now_ns // 10**9
        facts["time.hour"] = seconds // 3600 % 24
        facts["time.minute"] = seconds // 60 % 60
        facts["time.weekday"] = (seconds // 86_400 + 3) % 7  # 1970-01-01 was a Thursday
    activity = portfolio.activity
    if "portfolio.open_positions" in wanted:
        facts["portfolio.open_positions"] = sum(1 for p in portfolio.positions.values() if p.qty)
    if "portfolio.realized_pnl_today" in wanted or "portfolio.daily_loss" in wanted:
        today = activity.realized_on(now_ns // _DAY_NS)
        facts["portfolio.realized_pnl_today"] = today
        equity, cash = facts["portfolio.equity"], facts["portfolio.cash"]
        assert isinstance(equity, Decimal)
        assert isinstance(cash, Decimal)
        result = today + (equity - cash)  # unrealised PnL = equity - cash
        facts["portfolio.daily_loss"] = -result if result < 0 else ZERO
    if "portfolio.losing_streak" in wanted:
        facts["portfolio.losing_streak"] = activity.losing_streak
    if "position.age_seconds" in wanted:
        opened = activity.opened_ns.get(symbol)
        held = portfolio.positions.get(symbol)
        if opened is None or held is None or not held.qty:
            facts["position.age_seconds"] = ZERO
        else:
            facts["position.age_seconds"] = Decimal(max(0, now_ns - opened)) / _NS


def tick_facts(
    tick: MarketData,
    position: Position,
    portfolio: Portfolio,
    breaker_tripped: bool,
    mmr: Decimal | None,
    venue: VenueMargin | None = None,
) -> dict[str, object]:
    """Raw facts for a tick of a held symbol. ``venue`` is the venue's view of
    the position's margin (:mod:`bot4.venue_margin`), used only when it was
    read against this very ``position``: its liquidation price then replaces
    the formula's."""
    facts: dict[str, object] = {
        **_portfolio(portfolio),
        "position.qty": position.qty,
        "position.notional": abs(position.qty) * tick.last,
        "position.entry_price": position.entry_price,
        "position.leverage": position.leverage,
        **_market(tick),
        "breaker.tripped": breaker_tripped,
    }
    if mmr is not None and position.entry_price > 0:
        long = position.qty > 0
        reported = venue.liquidation() if venue is not None and venue.position is position else None
        if reported is not None:
            liq = reported
        else:
            liq = liquidation_price(position.entry_price, position.leverage, mmr, long=long)
        facts["liquidation.price"] = liq
        facts["liquidation.distance"] = _distance(tick.last, liq, long)
    return facts


def margin_facts(
    wanted: frozenset[str],
    facts: dict[str, object],
    position: Position | None,
    market: MarketData | None,
    mark: Decimal,
    mmr: Decimal | None,
    venue: VenueMargin | None,
) -> None:
    """Add to ``facts`` those of :data:`MARGIN_FACTS` in ``wanted`` for the
    held ``position`` (None or flat: zeros). ``market`` is the symbol's quote
    (None: unknown), ``mark`` the book's price of the position when there is
    no quote; ``venue`` the venue's view (used only if read against this very
    ``position``)."""
    if venue is not None and (position is None or venue.position is not position):
        venue = None
    carried = venue.mark_at(market.mid if market is not None else ZERO) if venue else None
    mark_price: Decimal
    if carried is not None:
        mark_price = carried
    elif market is not None:
        mark_price = market.mid
    else:
        mark_price = mark if position is not None and position.qty else ZERO
    if "market.mark" in wanted:
        facts["market.mark"] = mark_price
    held = position is not None and position.qty != 0
    if not held:
        for name in ("position.margin", "position.margin_ratio", "position.funding_paid"):
            if name in wanted:
                facts[name] = ZERO
        return
    assert position is not None
    margin = venue.margin if venue is not None else None
    if margin is None:
        margin = position.margin()
    if "position.margin" in wanted:
        facts["position.margin"] = margin
    if "position.funding_paid" in wanted:
        paid = venue.funding_paid if venue is not None else None
        facts["position.funding_paid"] = paid if paid is not None else ZERO
    if "position.margin_ratio" in wanted:
        rate = venue.maintenance_rate if venue is not None else None
        if rate is None:
            rate = mmr
        if rate is not None:
            balance = venue.balance if venue is not None else None
            if balance is None:
                balance = margin
            # At the mark and at the mid, the higher: a venue's mark cannot
            # make the position look further from liquidation than its quote.
            prices = {mark_price if mark_price > 0 else position.entry_price}
            if market is not None and market.mid > 0:
                prices.add(market.mid)
            ratio = ZERO
            for price in prices:
                equity = balance + position.qty * (price - position.entry_price)
                if equity <= 0:
                    ratio = NO_BALANCE_MARGIN_RATIO
                    break
                ratio = max(ratio, abs(position.qty) * price * rate / equity)
            facts["position.margin_ratio"] = ratio


def fill_facts(
    fill: Fill, portfolio: Portfolio, breaker_tripped: bool, stop_out: bool
) -> dict[str, object]:
    return {
        **_portfolio(portfolio),
        "fill.qty": fill.qty,
        "fill.price": fill.price,
        "fill.notional": fill.notional,
        "fill.side": fill.side.value,
        "fill.stop_out": stop_out,
        "breaker.tripped": breaker_tripped,
    }


def convert_all(raw: Mapping[str, object]) -> dict[str, Value]:
    return {name: to_fact(name, value) for name, value in raw.items()}


def convert(raw: Mapping[str, object], names: Iterable[str]) -> dict[str, Value]:
    """Convert only ``names`` (those present): the decision path converts
    what the engine and the deciding rule read, not every fact."""
    return {name: to_fact(name, raw[name]) for name in names if name in raw}


def encode(name: str, value: object) -> str:
    """One fact as engine JSON text (see :func:`bot4.risk.engine.number`)."""
    converted = to_fact(name, value)
    if converted is True:
        return "true"
    if converted is False:
        return "false"
    if isinstance(converted, float):
        return number(converted)
    return json.dumps(converted, ensure_ascii=False)


def describe(value: Any) -> str:
    """A number as people read it in a reason: no float noise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.10g}" if abs(value) < 1e6 else f"{value:,.2f}"
    return str(value)
