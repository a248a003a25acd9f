"""Exchange checks of what a venue states and how it says no: well-formed
trading rules from ``fetch_markets()``, quantities and prices rounded to the
market grid (and below ``min_qty`` refused), a stream of well-formed ticks in
time order with each Fill before its FILLED update, refusals raised as
ExchangeRefused of the right class, and order types not claimed refused.

Each check is a coroutine taking a :class:`~bot4.testing.exchange_kit.Kit`;
:mod:`bot4.testing.exchange` registers them with the capabilities each needs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bot4.contracts import Capability, MarketInfo
from bot4.errors import ExchangeRefused, InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.model import Fill, MarketData, OrderState, OrderStatus, OrderType, Side
from bot4.testing.exchange_kit import CAP, CheckSkipped, Kit, fail, on_grid, show_order

__all__ = [
    "check_error_classes",
    "check_market_data",
    "check_markets",
    "check_precision",
    "check_unclaimed_order_types",
]


async def check_markets(kit: Kit) -> None:
    """fetch_markets() maps each symbol to well-formed trading rules."""
    markets = await kit.call("fetch_markets()", kit.ex.fetch_markets())
    for symbol, info in markets.items():
        if not isinstance(info, MarketInfo) or info.symbol != symbol:
            raise fail(
                f"fetch_markets()[{symbol!r}] is {info!r}; each value must be a "
                f"bot4.contracts.MarketInfo whose symbol is its key"
            )
        for field in ("price_increment", "qty_increment", "min_qty"):
            value = getattr(info, field)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise fail(
                    f"fetch_markets()[{symbol!r}].{field} is {value!r}; it must be a positive "
                    "Decimal (never a float: 0.1 is not exact in binary)"
                )
    if not isinstance(kit.ex.capabilities, frozenset) or not all(
        isinstance(c, Capability) for c in kit.ex.capabilities
    ):
        raise fail(
            f"{kit.name}.capabilities is {kit.ex.capabilities!r}; declare a frozenset of "
            "bot4.contracts.Capability"
        )


async def check_precision(kit: Kit) -> None:
    """Quantities round down and prices round to the grid; below min_qty is refused."""
    await kit.quote()
    m = kit.market
    ragged_qty = kit.qty + m.qty_increment / 3
    if CAP.LIMIT_ORDERS in kit.caps:
        ragged_price = kit.price(-10) + kit.step / 4
        order = kit.order(Side.BUY, OrderType.LIMIT, ragged_qty, ragged_price)
    else:
        order = kit.order(Side.BUY, OrderType.MARKET, ragged_qty)
    state = await kit.place(order)
    q = state.order.qty
    if not isinstance(q, Decimal) or not on_grid(q, m.qty_increment) or q > ragged_qty:
        raise fail(
            f"{show_order(order)} was accepted as qty {q!r}; quantities are rounded DOWN to "
            f"qty_increment {m.qty_increment} (expected {kit.qty}): never trade more than asked"
        )
    if q <= ragged_qty - m.qty_increment:
        raise fail(f"qty {ragged_qty} became {q}: round down by less than one increment")
    if order.price is not None:
        p = state.order.price
        if p is None or not on_grid(p, kit.step) or abs(p - order.price) > kit.step / 2:
            raise fail(
                f"limit price {order.price} was accepted as {p!r}; prices round to the nearest "
                f"price_increment {kit.step} (half-even), on the grid"
            )
    for f in await kit.fills_of(order.client_order_id):
        if not all(isinstance(v, Decimal) for v in (f.qty, f.price, f.fee)):
            raise fail(f"fill {f.fill_id} carries non-Decimal numbers; money is Decimal")
    tiny = m.min_qty - m.qty_increment if m.min_qty > m.qty_increment else m.qty_increment / 2
    small = kit.order(
        Side.BUY,
        OrderType.LIMIT if order.price is not None else OrderType.MARKET,
        tiny,
        kit.price(-10) if order.price is not None else None,
    )
    await kit.expect_refused(
        f"place_order of {tiny} {kit.symbol} (below min_qty {m.min_qty} after rounding)",
        kit.ex.place_order(small),
        InvalidOrder,
        "the quantity is below the market's minimum",
    )


async def check_market_data(kit: Kit) -> None:
    """The stream delivers well-formed ticks in time order, and fills before their update."""
    events: list[Any] = []
    for steps in (0, 1, -1, 2):
        events += await kit.quote(steps)
    order = kit.order(Side.BUY, OrderType.LIMIT, price=kit.price(-5))
    await kit.place(order)
    events += await kit.quote(-8)
    ticks = [e for e in events if isinstance(e, MarketData)]
    if len(ticks) != 5:
        raise fail(f"the stream delivered {len(ticks)} tick(s) for 5 fed; deliver each tick once")
    stamps = [t.timestamp for t in ticks]
    if stamps != sorted(stamps):
        raise fail(f"the stream's ticks are out of time order: {stamps}")
    for t in ticks:
        if t.symbol != kit.symbol or not t.exchange:
            raise fail(f"stream tick {t!r} must carry the symbol and the exchange name")
    unknown = [e for e in events if not isinstance(e, (MarketData, Fill, OrderState))]
    if unknown:
        raise fail(f"the stream yielded {unknown[:3]!r}; it yields MarketData, Fill, OrderState")
    fill_at = [i for i, e in enumerate(events) if isinstance(e, Fill)]
    done_at = [
        i
        for i, e in enumerate(events)
        if isinstance(e, OrderState)
        and e.order.client_order_id == order.client_order_id
        and e.status is OrderStatus.FILLED
    ]
    if not fill_at or not done_at:
        raise fail(
            f"the stream did not deliver the Fill and the FILLED update of "
            f"{order.client_order_id!r} when a tick crossed it{kit.claims(CAP.STREAMING)}"
        )
    if max(fill_at) > min(done_at):
        raise fail(
            "the stream delivered an order's FILLED update before its Fill; send the Fill "
            "first so a consumer never sees a filled order without its execution"
        )
    streamed = {e.fill_id for e in events if isinstance(e, Fill)}
    fetched = {f.fill_id for f in await kit.all_fills()}
    if streamed != fetched:
        raise fail(
            f"fills from the stream {sorted(streamed)} differ from fetch_fills() "
            f"{sorted(fetched)}; both report the same executions"
        )


async def check_error_classes(kit: Kit) -> None:
    """A refusal raises ExchangeRefused (never retried); funds, size, ids are refusals."""
    await kit.quote()
    bal = await kit.balance()
    assert kit.last is not None
    huge_qty = (bal.total * 1000 / kit.last.ask / kit.market.qty_increment).to_integral_value()
    huge = huge_qty * kit.market.qty_increment
    if CAP.LIMIT_ORDERS in kit.caps:
        big = kit.order(Side.BUY, OrderType.LIMIT, huge, kit.price(-1))
    else:
        big = kit.order(Side.BUY, OrderType.MARKET, huge)
    await kit.expect_refused(
        f"place_order of {huge} {kit.symbol} (a thousand times the balance)",
        kit.ex.place_order(big),
        InsufficientFunds,
        "the account cannot pay for it",
    )
    await kit.expect_refused(
        "fetch_order of an unknown id",
        kit.ex.fetch_order(kit.symbol, "kit-unknown"),
        OrderNotFound,
        "no order has that id",
    )
    if (await kit.open_ids()) or await kit.all_fills():
        raise fail("a refused order left an open order or a fill behind")


async def check_unclaimed_order_types(kit: Kit) -> None:
    """An order type the exchange does not claim is refused, not half-done."""
    await kit.quote()
    kinds = {
        OrderType.MARKET: (CAP.MARKET_ORDERS, None),
        OrderType.LIMIT: (CAP.LIMIT_ORDERS, kit.price(-10)),
        OrderType.STOP_LOSS: (CAP.STOP_ORDERS, kit.price(-10)),
        OrderType.TAKE_PROFIT: (CAP.TAKE_PROFIT_ORDERS, kit.price(10)),
    }
    unclaimed = [(k, v) for k, v in kinds.items() if v[0] not in kit.caps]
    if not unclaimed:
        raise CheckSkipped(f"{kit.name} claims every order type")
    for kind, (cap, price) in unclaimed:
        await kit.expect_refused(
            f"place_order of a {kind.value} order",
            kit.ex.place_order(kit.order(Side.SELL, kind, price=price)),
            ExchangeRefused,
            f"{kit.name} does not claim Capability.{cap.name}",
        )
