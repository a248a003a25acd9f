"""Exchange checks of protective orders and leverage: stop-loss and take-profit
orders that rest until the bid reaches them, exits attached to an order (and
none added when ``ATTACHED_EXITS`` is not claimed, or the kernel's own exits
would close the position twice), and the margin a leveraged position holds.
The deeper margin checks (liquidation, funding, add-margin) are in
:mod:`bot4.testing.margin_checks`.

Each check is a coroutine taking a :class:`~bot4.testing.exchange_kit.Kit`;
:mod:`bot4.testing.exchange` registers them with the capabilities each needs.
"""

from __future__ import annotations

from decimal import Decimal

from bot4.contracts import Capability
from bot4.errors import InvalidOrder
from bot4.model import OrderStatus, OrderType, Side
from bot4.testing.exchange_kit import CAP, CheckSkipped, Kit, fail, show_order, verify_fills

__all__ = [
    "check_attached_exits",
    "check_margin",
    "check_no_unclaimed_exits",
    "check_stop_orders",
    "check_take_profit_orders",
]


async def _trigger(kit: Kit, kind: OrderType, cap: Capability) -> None:
    await kit.quote()
    await kit.take(Side.BUY)  # a long to protect, so the exit has something to close
    stop = kind is OrderType.STOP_LOSS
    level = kit.price(-10 if stop else 10)
    # Reduce-only, as the kernel sends every protective order.
    order = kit.order(Side.SELL, kind, price=level, reduce_only=True)
    state = await kit.place(order)
    if state.status is not OrderStatus.NEW:
        raise fail(f"{show_order(order)} away from the market came back {state.status.value}")
    await kit.quote(-3 if stop else 3)
    if (await kit.fetch(order.client_order_id)).status is not OrderStatus.NEW:
        raise fail(f"{show_order(order)} triggered although the bid never reached {level}")
    await kit.quote(-12 if stop else 12)
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED:
        await kit.quote(-12 if stop else 12)
        state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED:
        raise fail(
            f"{show_order(order)} is {state.status.value} after the bid went through {level}; a "
            f"triggered {kind.value} executes as a market order{kit.claims(cap)}"
        )
    await verify_fills(kit, state)
    wrong = kit.order(Side.SELL, kind, price=kit.price(12 if stop else -12))
    await kit.expect_refused(
        f"place_order of {show_order(wrong)} on the wrong side of the bid",
        kit.ex.place_order(wrong),
        InvalidOrder,
        "it would trigger at once",
    )


async def check_stop_orders(kit: Kit) -> None:
    """A sell stop rests until the bid falls to it, then fills."""
    await _trigger(kit, OrderType.STOP_LOSS, CAP.STOP_ORDERS)


async def check_take_profit_orders(kit: Kit) -> None:
    """A sell take-profit rests until the bid rises to it, then fills."""
    await _trigger(kit, OrderType.TAKE_PROFIT, CAP.TAKE_PROFIT_ORDERS)


async def check_attached_exits(kit: Kit) -> None:
    """An order with stop_loss/take_profit gets reduce-only exits sized to the fill."""
    await kit.quote()
    state = await kit.take(Side.BUY, stop_loss=kit.price(-20), take_profit=kit.price(20))
    await kit.quote()
    exits = await kit.call("fetch_open_orders()", kit.ex.fetch_open_orders(kit.symbol))
    kinds = {
        (s.order.type, s.order.price)
        for s in exits
        if s.order.reduce_only and s.order.side is Side.SELL and s.order.qty == state.filled_qty
    }
    want = {(OrderType.STOP_LOSS, kit.price(-20)), (OrderType.TAKE_PROFIT, kit.price(20))}
    if not want <= kinds:
        raise fail(
            f"after a buy with stop_loss {kit.price(-20)} and take_profit {kit.price(20)} "
            f"filled, the open orders are {[show_order(s.order) for s in exits]}; "
            f"Capability.ATTACHED_EXITS means the venue keeps a reduce-only sell STOP_LOSS and "
            f"TAKE_PROFIT of the filled qty {state.filled_qty}"
        )
    await kit.quote(25)  # the take-profit fires; the stop must go with the position
    left = [s for s in await kit.ex.fetch_open_orders(kit.symbol) if s.order.reduce_only]
    if left:
        raise fail(
            "the position closed at its take-profit but exits "
            f"{[show_order(s.order) for s in left]} are still open; when a position goes flat "
            "its exits are cancelled"
        )


async def check_no_unclaimed_exits(kit: Kit) -> None:
    """Without ATTACHED_EXITS, an order's stop_loss/take_profit create no orders."""
    if CAP.ATTACHED_EXITS in kit.caps:
        raise CheckSkipped(f"{kit.name} claims Capability.ATTACHED_EXITS")
    await kit.quote()
    await kit.take(Side.BUY, stop_loss=kit.price(-20), take_profit=kit.price(20))
    await kit.quote()
    exits = await kit.call("fetch_open_orders()", kit.ex.fetch_open_orders(kit.symbol))
    if exits:
        raise fail(
            f"{kit.name} does not claim Capability.ATTACHED_EXITS, yet a filled buy with "
            "stop_loss and take_profit left the open orders "
            f"{[show_order(s.order) for s in exits]}; "
            "without the claim the kernel protects the position itself, and exits the venue "
            "adds too would close it twice. Claim ATTACHED_EXITS, or ignore the two fields"
        )


async def check_margin(kit: Kit) -> None:
    """A leveraged position holds notional / leverage of margin."""
    await kit.quote()
    lev = Decimal(5)
    state = await kit.take(Side.BUY, leverage=lev)
    bal = await kit.balance()
    assert state.avg_price is not None
    margin = state.filled_qty * state.avg_price / lev
    if abs(bal.used - margin) > kit.step:
        raise fail(
            f"with {state.filled_qty} {kit.symbol} held at {state.avg_price} and leverage {lev},"
            f" fetch_balance().used is {bal.used}; the margin is notional / leverage = {margin}"
        )
