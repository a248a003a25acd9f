"""Conformance checks for exchanges that claim ``Capability.MARGIN`` (linear
perpetuals): leverage applied, the reported liquidation price against the
formula of the first notional tier (:mod:`bot4.margin`), funding only at
funding times, reduce-only never growing a position, liquidation past the
liquidation price, and add-margin moving it.

The paper venue is the reference. An exchange reports margin through
``fetch_margin_positions()`` (objects with ``symbol`` and
``liquidation_price``, as :class:`bot4_paper.PaperExchange` and the ccxt
plugin's perpetuals return); one without it skips the checks that need a
reported liquidation price, with the reason. Each check sets the symbol to
isolated margin first.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bot4.errors import ExchangeRefused
from bot4.margin import DEFAULT_TIERS, liquidation_price, next_funding_time
from bot4.model import OrderStatus, OrderType, Side
from bot4.testing.exchange_kit import CheckSkipped, Kit, fail

__all__ = ["MARGIN_CHECKS"]

# How far a reported liquidation price may be from the formula's, relative:
# venues differ in the tier table (the first tier's rate, 0.4% to 0.5%),
# the fee they reserve for the close and their rounding.
LIQUIDATION_TOLERANCE = Decimal("0.01")


async def _isolated(kit: Kit, leverage: Decimal) -> None:
    symbol = kit.symbol
    await kit.call(
        f"set_margin_mode({symbol!r}, 'isolated')", kit.ex.set_margin_mode(symbol, "isolated")
    )
    got = await kit.call(
        f"set_leverage({symbol!r}, {leverage})", kit.ex.set_leverage(symbol, leverage)
    )
    if got != leverage:
        raise fail(
            f"set_leverage({symbol!r}, {leverage}) returned {got!r}; a venue that takes the "
            "leverage returns it (one that rounds returns what it set)"
        )


async def _reported_liquidation(kit: Kit) -> Decimal | None:
    fetch: Any = getattr(kit.ex, "fetch_margin_positions", None)
    if fetch is None:
        raise CheckSkipped(
            f"{kit.name} has no fetch_margin_positions(): it does not report liquidation "
            "prices (add it, returning objects with symbol and liquidation_price)"
        )
    rows = await kit.call("fetch_margin_positions()", fetch())
    for row in rows:
        if getattr(row, "symbol", None) == kit.symbol:
            value = row.liquidation_price
            return None if value is None else Decimal(value)
    raise fail(
        f"fetch_margin_positions() has no {kit.symbol} row although a position is open "
        f"({[getattr(r, 'symbol', r) for r in rows]})"
    )


async def _held(kit: Kit) -> Decimal:
    positions = await kit.call("fetch_positions()", kit.ex.fetch_positions())
    return sum((p.qty for p in positions if p.symbol == kit.symbol), Decimal(0))


async def check_margin_leverage(kit: Kit) -> None:
    """set_leverage() is applied: a position opened after it holds notional / leverage."""
    await kit.quote()
    lev = Decimal(4)
    await _isolated(kit, lev)
    state = await kit.take(Side.BUY, leverage=lev)
    assert state.avg_price is not None
    bal = await kit.balance()
    margin = state.filled_qty * state.avg_price / lev
    if abs(bal.used - margin) > max(kit.step, margin * Decimal("0.001")):
        raise fail(
            f"after set_leverage({kit.symbol!r}, {lev}) a {state.filled_qty} position at "
            f"{state.avg_price} holds {bal.used} of margin; at {lev}x it is {margin}"
        )
    positions = await kit.call("fetch_positions()", kit.ex.fetch_positions())
    levs = {p.leverage for p in positions if p.symbol == kit.symbol}
    if levs != {lev}:
        raise fail(f"fetch_positions() reports leverage {levs} after set_leverage to {lev}")


async def check_margin_liquidation_price(kit: Kit) -> None:
    """The reported liquidation price of an isolated long is the formula's for its tier."""
    await kit.quote()
    lev = Decimal(10)
    await _isolated(kit, lev)
    state = await kit.take(Side.BUY, leverage=lev)
    assert state.avg_price is not None
    reported = await _reported_liquidation(kit)
    qty, entry = state.filled_qty, state.avg_price
    expected = liquidation_price(qty, entry, qty * entry / lev, DEFAULT_TIERS)
    assert expected is not None
    if reported is None or abs(reported - expected) > expected * LIQUIDATION_TOLERANCE:
        raise fail(
            f"a {qty} long at {entry}, {lev}x isolated, reports liquidation price {reported}; "
            f"the formula (bot4.margin.liquidation_price, first tier 0.5%) gives {expected} "
            f"(tolerance {LIQUIDATION_TOLERANCE:.0%})"
        )


async def check_margin_funding_times(kit: Kit) -> None:
    """Funding moves the balance only at funding times, once per time."""
    await kit.quote()
    await _isolated(kit, Decimal(2))
    await kit.take(Side.BUY, leverage=Decimal(2))
    # Two funding times at the same price: equal payments; none between.
    due = next_funding_time(kit._t)
    later = next_funding_time(due)

    async def total_at(when: datetime) -> Decimal:
        kit._t = when - timedelta(seconds=1)  # quote() steps one second on
        await kit.quote()
        return (await kit.balance()).total

    before = await total_at(due - timedelta(seconds=2))
    if await total_at(due - timedelta(seconds=1)) != before:
        raise fail("the balance moved between two quotes at one price, away from a funding time")
    first = await total_at(due) - before
    mid = await total_at(later - timedelta(seconds=1))
    second = await total_at(later) - mid
    if mid - before != first:
        raise fail(
            f"the balance moved by {mid - before - first} between two funding times "
            "(same price); funding is paid at the funding times only"
        )
    if first != second:
        raise fail(
            f"two funding times at one price and position paid {first} and {second}; each "
            "funding time pays once, the same for the same position and mark"
        )


async def check_margin_reduce_only(kit: Kit) -> None:
    """A reduce-only order larger than the position closes it and never opens the other side."""
    await kit.quote()
    await _isolated(kit, Decimal(2))
    state = await kit.take(Side.BUY, leverage=Decimal(2))
    order = kit.order(
        Side.SELL, OrderType.MARKET, state.filled_qty * 3, reduce_only=True, leverage=Decimal(2)
    )
    await kit.place(order)
    await kit.quote()
    held = await _held(kit)
    if held != 0:
        raise fail(
            f"a reduce-only sell of {order.qty} against a {state.filled_qty} long left "
            f"{held}; reduce-only never grows a position or opens the other side"
        )
    again = kit.order(Side.SELL, OrderType.MARKET, kit.qty, reduce_only=True, leverage=Decimal(2))
    try:
        after = await kit.ex.place_order(again)
    except ExchangeRefused:
        return  # refused: nothing to reduce
    await kit.quote()
    held = await _held(kit)
    if held != 0 or after.status is OrderStatus.FILLED:
        raise fail(
            f"a reduce-only sell with no position ended {after.status.value} and left {held}; "
            "it must be cancelled or refused"
        )


async def check_margin_liquidation(kit: Kit) -> None:
    """A position whose mark passes its liquidation price is closed by the venue."""
    await kit.quote()
    lev = Decimal(20)
    await _isolated(kit, lev)
    state = await kit.take(Side.BUY, leverage=lev)
    assert state.avg_price is not None
    expected = liquidation_price(
        state.filled_qty, state.avg_price, state.filled_qty * state.avg_price / lev
    )
    assert expected is not None
    # Well past it (10% below), in one gap: the venue closes the position.
    steps = int((expected * Decimal("0.9") - kit.base) / kit.step)
    await kit.quote(steps)
    await kit.quote(steps)
    held = await _held(kit)
    if held != 0:
        raise fail(
            f"a {state.filled_qty} long at {state.avg_price}, {lev}x isolated (liquidation near "
            f"{expected:.2f}), still holds {held} after the mark fell to {kit.price(steps)}; "
            "the venue must liquidate it"
        )


async def check_margin_add_margin(kit: Kit) -> None:
    """add_margin() moves collateral into an isolated position and its liquidation price away."""
    await kit.quote()
    lev = Decimal(10)
    await _isolated(kit, lev)
    state = await kit.take(Side.BUY, leverage=lev)
    assert state.avg_price is not None
    before = await _reported_liquidation(kit)
    free = (await kit.balance()).free
    amount = (state.filled_qty * state.avg_price / lev / 2).quantize(Decimal("0.01"))
    try:
        await kit.ex.add_margin(kit.symbol, amount)
    except ExchangeRefused as exc:
        if "not supported" in str(exc):
            raise CheckSkipped(f"{kit.name} does not implement add_margin()") from None
        raise fail(f"add_margin({kit.symbol!r}, {amount}) was refused: {exc}") from exc
    after = await _reported_liquidation(kit)
    if before is None or after is None or not after < before:
        raise fail(
            f"add_margin({kit.symbol!r}, {amount}) left the long's liquidation price at {after} "
            f"(was {before}); more collateral moves a long's liquidation price down"
        )
    now_free = (await kit.balance()).free
    if abs(free - amount - now_free) > kit.step:
        raise fail(
            f"add_margin of {amount} took {free - now_free} from the free balance; it moves "
            "exactly the amount from free into the position"
        )


MARGIN_CHECKS = (
    ("margin_leverage", check_margin_leverage),
    ("margin_liquidation_price", check_margin_liquidation_price),
    ("margin_funding_times", check_margin_funding_times),
    ("margin_reduce_only", check_margin_reduce_only),
    ("margin_liquidation", check_margin_liquidation),
    ("margin_add_margin", check_margin_add_margin),
)
