"""Exchange checks of calls that do not complete normally: a ``close()`` then
``connect()``, a dropped link (with a harness that can disconnect) and a call
cancelled by trio. After each, the account is unchanged and a place retried
with the same ``client_order_id`` is one order, since that retry is how the
kernel recovers from all three.

Each check is a coroutine taking a :class:`~bot4.testing.exchange_kit.Kit`;
:mod:`bot4.testing.exchange` registers them with the capabilities each needs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from bot4.errors import ExchangeFailed, ExchangeRefused
from bot4.model import ZERO, OrderStatus, OrderType, Side
from bot4.testing.exchange_kit import CAP, Kit, fail, show_order
from bot4.testing.harness import STEP_TIMEOUT

__all__ = [
    "check_disconnect",
    "check_reconnect",
    "check_trio_cancellation",
]


async def check_reconnect(kit: Kit) -> None:
    """close() then connect() keeps orders, fills and balance; a retry after it is no double."""
    await kit.quote()
    await kit.take(Side.BUY)
    resting = None
    if CAP.LIMIT_ORDERS in kit.caps:
        resting = kit.order(Side.BUY, OrderType.LIMIT, price=kit.price(-10))
        await kit.place(resting)
    before = (await kit.balance(), await kit.open_ids(), await kit.all_fills())
    await kit.call("close()", kit.ex.close())
    await kit.call("connect()", kit.ex.connect())
    after = (await kit.balance(), await kit.open_ids(), await kit.all_fills())
    for what, b, a in zip(("balance", "open orders", "fills"), before, after, strict=True):
        if a != b:
            raise fail(
                f"{what} changed across close() and connect(): {b!r} became {a!r}; a "
                "reconnect must neither lose nor replay the account's state"
            )
    if resting is not None:
        again = await kit.place(resting, " (a retry after reconnecting)")
        if again.status is not OrderStatus.NEW or await kit.open_ids() != after[1]:
            raise fail(
                f"retrying {resting.client_order_id!r} after a reconnect changed the open "
                "orders; the existing order's state must come back"
            )


async def check_disconnect(kit: Kit) -> None:
    """With the link down, calls raise ExchangeFailed; after it, a retried place is no double."""
    await kit.quote()
    order = kit.resting_or_market()
    await kit.h.disconnect()
    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("fetch_balance()", kit.ex.fetch_balance),
        ("fetch_open_orders()", kit.ex.fetch_open_orders),
        (f"place_order({show_order(order)})", lambda: kit.ex.place_order(order)),
    ]
    for what, make in calls:
        try:
            with trio.fail_after(STEP_TIMEOUT):
                await make()
        except ExchangeFailed:
            continue
        except trio.TooSlowError:
            raise fail(
                f"{what} with the link down hung for {STEP_TIMEOUT:g} s; time out and raise "
                "ExchangeTimeout (an ExchangeFailed)"
            ) from None
        except ExchangeRefused as exc:
            raise fail(
                f"{what} with the link down raised {type(exc).__name__}: {exc}; a dropped link "
                "is not a refusal: raise ExchangeUnavailable or ExchangeTimeout (ExchangeFailed)"
                " so the kernel retries with the same client_order_id"
            ) from exc
        except Exception as exc:
            raise fail(
                f"{what} with the link down raised {type(exc).__name__}: {exc}; translate "
                "network errors into ExchangeUnavailable or ExchangeTimeout (ExchangeFailed), "
                "which the kernel may retry"
            ) from exc
        else:
            raise fail(f"{what} succeeded with the link down; the harness did not disconnect")
    await kit.h.reconnect()
    await kit.call("connect()", kit.ex.connect())
    await kit.place(order, " (the retry after the link came back)")
    await kit.place(order, " (a second retry)")
    mine = [i for i in await kit.open_ids() if i == order.client_order_id]
    fills = await kit.fills_of(order.client_order_id)
    if len(mine) > 1 or sum((f.qty for f in fills), ZERO) > order.qty:
        raise fail(f"retries of {order.client_order_id!r} after a disconnect doubled the order")


async def check_trio_cancellation(kit: Kit) -> None:
    """Calls are cancellable by trio, and a cancelled place retried is one order."""
    await kit.quote()
    reads: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("fetch_balance()", kit.ex.fetch_balance),
        ("fetch_open_orders()", kit.ex.fetch_open_orders),
        ("fetch_fills()", kit.ex.fetch_fills),
        ("fetch_markets()", kit.ex.fetch_markets),
    ]
    for what, make in reads:
        with trio.CancelScope() as scope:
            scope.cancel()
            await make()
        if not scope.cancelled_caught:
            raise fail(
                f"{what} ran to completion inside a cancelled trio scope: it never reached a "
                "checkpoint. Await something cancellable (I/O, or trio.lowlevel.checkpoint()) "
                "so a hung venue can always be timed out"
            )
    order = kit.resting_or_market()
    with trio.CancelScope() as scope:
        scope.cancel()
        await kit.ex.place_order(order)
    await kit.place(order, " (the retry of a place cancelled by trio)")
    await kit.place(order, " (a second retry)")
    ids = [i for i in await kit.open_ids() if i == order.client_order_id]
    fills = await kit.fills_of(order.client_order_id)
    if len(ids) > 1 or sum((f.qty for f in fills), ZERO) > order.qty:
        raise fail(
            f"a place_order cancelled by trio and retried with the same id doubled "
            f"{order.client_order_id!r}"
        )
    await kit.balance()  # still usable after cancellations
