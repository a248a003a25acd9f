"""Exchange checks of orders and what their fills leave behind: a market order
filling at the quote, a limit's lifecycle, cancels, unknown ids, partial
fills, placing idempotent on ``client_order_id``, and the account that follows
the fills exactly (the balance net of every fee, signed positions).

Each check is a coroutine taking a :class:`~bot4.testing.exchange_kit.Kit`;
:mod:`bot4.testing.exchange` registers them with the capabilities each needs.
"""

from __future__ import annotations

import attrs

from bot4.errors import InvalidOrder, OrderNotFound
from bot4.model import ZERO, Order, OrderStatus, OrderType, Side
from bot4.testing.exchange_kit import CAP, Kit, fail, show_order, verify_fills, verify_state

__all__ = [
    "check_balance_fees",
    "check_cancel",
    "check_idempotent_place",
    "check_limit_order_lifecycle",
    "check_market_order_fills",
    "check_partial_fill",
    "check_positions",
    "check_unknown_order_id",
]


async def check_market_order_fills(kit: Kit) -> None:
    """A market order fills at the quote, and its fills add up."""
    await kit.quote()
    for side in (Side.BUY, Side.SELL):
        order = kit.order(side, OrderType.MARKET)
        state = await kit.place(order)
        if state.status is not OrderStatus.FILLED:
            await kit.quote()
            state = await kit.fetch(order.client_order_id)
        if state.status is not OrderStatus.FILLED or state.filled_qty != order.qty:
            raise fail(
                f"{show_order(order)} against ample size is {state.status.value} with filled_qty "
                f"{state.filled_qty} after a tick; a market order must fill completely"
                f"{kit.claims(CAP.MARKET_ORDERS)}"
            )
        fills = await verify_fills(kit, state)
        assert kit.last is not None
        for f in fills:
            through = f.price < kit.last.bid if side is Side.BUY else f.price > kit.last.ask
            if through:
                raise fail(
                    f"market {side.value} filled at {f.price} with the book at "
                    f"{kit.last.bid}/{kit.last.ask}; a buy fills at the ask or worse, a sell at "
                    "the bid or worse"
                )
        if order.client_order_id in await kit.open_ids():
            raise fail(f"filled order {order.client_order_id!r} is still in fetch_open_orders()")


async def check_limit_order_lifecycle(kit: Kit) -> None:
    """A resting limit is open, fills when the book crosses it, then cannot be cancelled."""
    await kit.quote()
    price = kit.price(-10)
    order = kit.order(Side.BUY, OrderType.LIMIT, price=price)
    state = await kit.place(order)
    if state.status is not OrderStatus.NEW or state.filled_qty != 0:
        raise fail(
            f"{show_order(order)} below the bid {kit.last.bid if kit.last else ''} came back "
            f"{state.status.value} (filled {state.filled_qty}); a limit that does not cross "
            "rests as NEW"
        )
    if order.client_order_id not in await kit.open_ids():
        raise fail(f"resting limit {order.client_order_id!r} is missing from fetch_open_orders()")
    fetched = await kit.fetch(order.client_order_id)
    if fetched.status is not OrderStatus.NEW:
        raise fail(f"fetch_order of a resting limit says {fetched.status.value}, expected new")
    await kit.quote(-13)  # the ask falls through the limit
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED:
        raise fail(
            f"{show_order(order)} is {state.status.value} after a tick whose ask "
            f"{kit.price(-11)} is below the limit; a crossed limit fills"
            f"{kit.claims(CAP.LIMIT_ORDERS)}"
        )
    fills = await verify_fills(kit, state)
    for f in fills:
        if f.price > price:
            raise fail(f"limit buy at {price} filled at {f.price}; a limit never fills worse")
    if order.client_order_id in await kit.open_ids():
        raise fail(f"filled order {order.client_order_id!r} is still in fetch_open_orders()")
    await kit.expect_refused(
        f"cancel_order of the filled order {order.client_order_id!r}",
        kit.ex.cancel_order(kit.symbol, order.client_order_id),
        InvalidOrder,
        "a filled order can no longer be cancelled",
    )


async def check_cancel(kit: Kit) -> None:
    """Cancelling a resting order closes it; cancelling it again is refused."""
    await kit.quote()
    order = kit.order(Side.SELL, OrderType.LIMIT, price=kit.price(20))
    await kit.place(order)
    coid = order.client_order_id
    state = await kit.call(f"cancel_order({coid!r})", kit.ex.cancel_order(kit.symbol, coid))
    verify_state(kit, state, order, "cancel_order")
    if state.status is not OrderStatus.CANCELED:
        raise fail(f"cancel_order({coid!r}) returned status {state.status.value}, not canceled")
    if coid in await kit.open_ids():
        raise fail(f"cancelled order {coid!r} is still in fetch_open_orders()")
    if (await kit.fetch(coid)).status is not OrderStatus.CANCELED:
        raise fail(f"fetch_order({coid!r}) after a cancel does not say canceled")
    await kit.quote(30)  # the bid rises through the old limit: it must not fill now
    if await kit.fills_of(coid):
        raise fail(f"cancelled order {coid!r} filled on a later tick; a cancelled order is dead")
    await kit.expect_refused(
        f"a second cancel_order({coid!r})",
        kit.ex.cancel_order(kit.symbol, coid),
        InvalidOrder,
        "the order is already cancelled",
    )


async def check_unknown_order_id(kit: Kit) -> None:
    """fetch_order and cancel_order of an unknown id raise OrderNotFound."""
    await kit.quote()
    for call, aw in (
        ("fetch_order", kit.ex.fetch_order(kit.symbol, "kit-never-placed")),
        ("cancel_order", kit.ex.cancel_order(kit.symbol, "kit-never-placed")),
    ):
        await kit.expect_refused(
            f"{call}({kit.symbol!r}, 'kit-never-placed')",
            aw,
            OrderNotFound,
            "no order has that id",
        )


async def check_partial_fill(kit: Kit) -> None:
    """An order larger than the size at the quote fills in parts across ticks."""
    await kit.quote()
    order = kit.order(Side.BUY, OrderType.LIMIT, price=kit.price(-10))
    await kit.place(order)
    part = kit.unit * 4
    await kit.quote(-13, volume=part)
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.PARTIALLY_FILLED or state.filled_qty != part:
        raise fail(
            f"{show_order(order)} crossed by a tick with only {part} at the ask is "
            f"{state.status.value} with filled_qty {state.filled_qty}; expected "
            f"partially_filled with {part}: a tick's volume is the size at the quote"
            f"{kit.claims(CAP.PARTIAL_FILLS)}"
        )
    if order.client_order_id not in await kit.open_ids():
        raise fail("a partially filled order must stay in fetch_open_orders()")
    await verify_fills(kit, state)
    await kit.quote(-13)
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED or state.filled_qty != order.qty:
        raise fail(
            f"the rest of {show_order(order)} did not fill on the next tick with ample size "
            f"({state.status.value}, filled {state.filled_qty})"
        )
    await verify_fills(kit, state)


async def check_idempotent_place(kit: Kit) -> None:
    """Placing the same client_order_id again returns the same order, never a second."""
    await kit.quote()
    orders: list[Order] = []
    if CAP.MARKET_ORDERS in kit.caps:
        orders.append(kit.order(Side.BUY, OrderType.MARKET))
    if CAP.LIMIT_ORDERS in kit.caps:
        orders.append(kit.order(Side.BUY, OrderType.LIMIT, price=kit.price(-10)))
    for order in orders:
        before = await kit.all_fills()
        open_before = await kit.open_ids()
        first = await kit.place(order)
        second = await kit.place(order, " (a retry with the same client_order_id)")
        fills = [f for f in await kit.all_fills() if f not in before]
        filled = sum((f.qty for f in fills), ZERO)
        new_open = [i for i in await kit.open_ids() if i not in open_before]
        twice = (
            (first.exchange_order_id and first.exchange_order_id != second.exchange_order_id)
            or filled > order.qty
            or len(new_open) > 1
            or second.filled_qty < first.filled_qty
        )
        if twice:
            raise fail(
                f"place_order with a client_order_id already used ({order.client_order_id!r}) "
                f"created a second order: exchange ids {first.exchange_order_id!r} and "
                f"{second.exchange_order_id!r}, {filled} filled for an order of {order.qty}, "
                f"new open orders {new_open}. Placing must be idempotent on client_order_id: "
                "when the id is known, return the existing order's state instead of placing "
                "again (the kernel retries a failed place with the same id)"
            )
    clash = attrs.evolve(orders[0], qty=orders[0].qty * 2)
    await kit.expect_refused(
        f"place_order of a different order under the used id {clash.client_order_id!r}",
        kit.ex.place_order(clash),
        InvalidOrder,
        "a client_order_id names one order; reusing it for another is an error",
    )


async def check_balance_fees(kit: Kit) -> None:
    """After a round trip the balance moved by the realised PnL minus every fee."""
    await kit.quote()
    start = await kit.balance()
    seen = {f.fill_id for f in await kit.all_fills()}
    await kit.take(Side.BUY)
    await kit.quote(25)
    await kit.take(Side.SELL)
    fills = [f for f in await kit.all_fills() if f.fill_id not in seen]
    if not fills:
        raise fail("fetch_fills() shows no fills after a filled round trip")
    cash_flow = sum((-f.side.sign * f.qty * f.price for f in fills), ZERO)
    fees = sum((f.fee for f in fills), ZERO)
    end = await kit.balance()
    expected = start.total + cash_flow - fees
    if end.total != expected:
        hint = ""
        if fees and end.total - expected == fees:
            hint = (
                f" The difference is exactly the fees ({fees}): the balance must be charged "
                "the fee of every fill."
            )
        raise fail(
            f"after buying and selling back {kit.qty} {kit.symbol}, fetch_balance().total is "
            f"{end.total}; the starting {start.total} plus realised PnL {cash_flow} minus fees "
            f"{fees} (both from fetch_fills()) is {expected}.{hint} A balance must follow "
            "the fills exactly, in Decimal"
        )
    if end.used != start.used:
        raise fail(
            f"fetch_balance().used is {end.used} after a round trip left nothing open "
            f"(it was {start.used}); release the margin of a closed position"
        )


async def check_positions(kit: Kit) -> None:
    """Positions follow the fills: signed qty, weighted entry, gone when flat."""
    await kit.quote()
    a = await kit.take(Side.BUY)
    await kit.quote(10)
    b = await kit.take(Side.BUY)
    fills = await kit.fills_of(a.order.client_order_id) + await kit.fills_of(
        b.order.client_order_id
    )
    qty = sum((f.qty for f in fills), ZERO)
    entry = sum((f.qty * f.price for f in fills), ZERO) / qty
    positions = await kit.call("fetch_positions()", kit.ex.fetch_positions())
    mine = [p for p in positions if p.symbol == kit.symbol]
    if len(mine) != 1 or mine[0].qty != qty:
        raise fail(
            f"after buying {qty} {kit.symbol} in two fills, fetch_positions() has "
            f"{[(p.symbol, p.qty) for p in positions]}; expected one {kit.symbol} position "
            f"of +{qty} (positive is long)"
        )
    if abs(mine[0].entry_price - entry) > kit.step:
        raise fail(
            f"position entry_price is {mine[0].entry_price}; the fills average {entry}: "
            "the entry is the quantity-weighted mean price of the fills that opened it"
        )
    await kit.take(Side.SELL, qty)
    left = [p for p in await kit.call("fetch_positions()", kit.ex.fetch_positions())]
    if any(p.symbol == kit.symbol for p in left):
        raise fail(
            f"after selling the whole {qty} {kit.symbol} back, fetch_positions() still has "
            f"{[(p.symbol, p.qty) for p in left]}; it lists non-zero positions only"
        )
    await kit.take(Side.SELL)
    short = [
        p
        for p in await kit.call("fetch_positions()", kit.ex.fetch_positions())
        if p.symbol == kit.symbol
    ]
    if len(short) != 1 or short[0].qty != -kit.qty:
        raise fail(
            f"after selling {kit.qty} from flat, fetch_positions() has "
            f"{[(p.symbol, p.qty) for p in short]}; a short is a negative qty "
            f"(-{kit.qty})"
        )
