"""Exchange conformance checks: each one drives a fresh :class:`Harness` through
the Exchange interface and raises :class:`ConformanceError` with what to fix.

The checks hold an exchange to the behaviour of the reference,
:class:`bot4_paper.PaperExchange`, where the contract leaves no room (states,
error classes, idempotency, arithmetic of balances and positions) and stay
loose where venues legitimately differ (fees, slippage, ids). They never reach
behind the interface, so a networked plugin runs the same checks through its
own harness.

Use them through :class:`bot4.testing.ExchangeSuite`, or call one directly::

    await run_check(CHECKS["idempotent_place"], lambda: FeedHarness(AcmeExchange))
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import trio

from bot4.contracts import Capability, MarketInfo
from bot4.errors import (
    ExchangeFailed,
    ExchangeRefused,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
)
from bot4.model import (
    ZERO,
    Balance,
    Fill,
    MarketData,
    Order,
    OrderState,
    OrderStatus,
    OrderType,
    Side,
)
from bot4.testing.harness import STEP_TIMEOUT, ConformanceError, Harness

__all__ = [
    "CHECKS",
    "Check",
    "CheckSkipped",
    "HarnessFactory",
    "Kit",
    "run_check",
]

T = TypeVar("T")
HarnessFactory = Callable[[], Harness]
START = datetime(2024, 1, 1, tzinfo=UTC)
CAP = Capability


class CheckSkipped(Exception):
    """The check does not apply; ``str()`` is the reason shown to the author."""


@attrs.frozen
class Check:
    """One conformance check. ``requires``: every capability must be claimed;
    ``requires_any``: at least one of them (e.g. some way to trade)."""

    name: str
    func: Callable[[Kit], Awaitable[None]]
    requires: frozenset[Capability] = frozenset()
    requires_any: frozenset[Capability] = frozenset()
    needs_disconnect: bool = False

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]

    def skip_reason(self, harness: Harness) -> str | None:
        caps = harness.exchange.capabilities
        name = harness.exchange.name
        missing = sorted(c.name for c in self.requires - caps)
        if missing:
            return (
                f"{name} does not claim Capability.{', Capability.'.join(missing)} "
                f"(add it to `capabilities` once supported, and this check runs)"
            )
        if self.requires_any and not self.requires_any & caps:
            wanted = " or ".join(f"Capability.{c.name}" for c in sorted(self.requires_any, key=str))
            return f"{name} claims neither {wanted}"
        if self.needs_disconnect and not harness.can_disconnect:
            return (
                f"the harness of {name} cannot simulate a disconnect (an in-process venue "
                "has no link to drop); give a Harness with disconnect()/reconnect() to check "
                "that calls then fail with ExchangeFailed"
            )
        return None


async def run_check(check: Check, make_harness: HarnessFactory) -> None:
    """Run one check on a fresh harness. Raises CheckSkipped (with the reason)
    when the exchange does not claim what the check needs, ConformanceError
    when it breaks the contract."""
    harness = make_harness()
    reason = check.skip_reason(harness)
    if reason is not None:
        raise CheckSkipped(reason)
    with trio.fail_after(STEP_TIMEOUT * 30):
        await harness.start()
        try:
            kit = Kit(harness, check.name)
            await kit.setup()
            # Claims may narrow once connected (a venue whose symbols lack an
            # order type): what is not claimed then is skipped too.
            reason = check.skip_reason(harness)
            if reason is not None:
                raise CheckSkipped(reason)
            kit.caps = harness.exchange.capabilities
            await check.func(kit)
        finally:
            with trio.CancelScope(shield=True):
                await harness.aclose()


def fail(message: str) -> ConformanceError:
    return ConformanceError(message)


# --- the kit: quotes, orders and calls with explained failures ---------------------------


class Kit:
    """One check's view of the harness: builds quotes and orders on the grid of
    the harness symbol, and turns a surprise from the exchange into a message."""

    def __init__(self, harness: Harness, check: str) -> None:
        self.h = harness
        self.ex = harness.exchange
        self.check = check
        self.symbol = harness.symbol
        self.caps = harness.exchange.capabilities
        self._n = 0
        self._t = START
        self.last: MarketData | None = None
        self.market = MarketInfo(self.symbol, Decimal("0.01"), Decimal(1), Decimal(1))

    async def setup(self) -> None:
        markets = await self.call("fetch_markets()", self.ex.fetch_markets())
        if not isinstance(markets, Mapping) or self.symbol not in markets:
            known = sorted(markets) if isinstance(markets, Mapping) else markets
            raise fail(
                f"fetch_markets() has no {self.symbol!r} (it returned {known!r}); the kit "
                f"trades Harness.symbol: set it to a symbol your exchange lists"
            )
        self.market = markets[self.symbol]
        m = self.market
        self.unit = max(m.min_qty, m.qty_increment)
        self.qty = self.unit * 10
        self.step = m.price_increment
        self.base = (
            Decimal(self.h.base_price).quantize(self.step)
            if self.step < 1
            else Decimal(self.h.base_price)
        )

    @property
    def name(self) -> str:
        return self.ex.name

    def claims(self, cap: Capability) -> str:
        return f" ({self.name} claims Capability.{cap.name})" if cap in self.caps else ""

    def coid(self, tag: str = "") -> str:
        self._n += 1
        return f"kit-{self.check.replace('_', '-')}-{self._n}{'-' + tag if tag else ''}"

    def price(self, steps: int) -> Decimal:
        """The base price moved by a whole number of price increments."""
        return self.base + self.step * steps

    async def quote(
        self, bid_steps: int = 0, *, spread: int = 2, volume: Decimal | None = None
    ) -> list[Any]:
        """Feed one tick: bid ``base + bid_steps`` increments, ask ``spread``
        increments above; volume (the size at bid and at ask) ample by default."""
        self._t += timedelta(seconds=1)
        bid = self.price(bid_steps)
        md = MarketData(
            symbol=self.symbol,
            exchange=self.name,
            bid=bid,
            ask=bid + self.step * spread,
            last=bid,
            volume=self.qty * 1000 if volume is None else volume,
            timestamp=self._t,
        )
        self.last = md
        return await self.h.tick(md)

    def order(
        self,
        side: Side,
        kind: OrderType,
        qty: Decimal | None = None,
        price: Decimal | None = None,
        **extra: Any,
    ) -> Order:
        return Order(
            client_order_id=extra.pop("client_order_id", None) or self.coid(),
            symbol=self.symbol,
            side=side,
            type=kind,
            qty=self.qty if qty is None else qty,
            price=price,
            strategy="conformance",
            **extra,
        )

    def resting_or_market(self) -> Order:
        """A buy limit well below the market when limits are claimed (it rests),
        else a market buy."""
        if CAP.LIMIT_ORDERS in self.caps:
            return self.order(Side.BUY, OrderType.LIMIT, price=self.price(-10))
        return self.order(Side.BUY, OrderType.MARKET)

    async def call(self, what: str, awaitable: Awaitable[T]) -> T:
        """Await one exchange call; anything but a result becomes a message."""
        try:
            with trio.fail_after(STEP_TIMEOUT):
                return await awaitable
        except trio.TooSlowError:
            raise fail(
                f"{what} did not return within {STEP_TIMEOUT:g} s; every exchange call must "
                "finish or raise ExchangeTimeout (an ExchangeFailed) in bounded time"
            ) from None
        except ExchangeRefused as exc:
            raise fail(
                f"{what} was refused with {type(exc).__name__}: {exc}; the check expected "
                "it to succeed"
            ) from exc
        except ExchangeFailed as exc:
            raise fail(
                f"{what} failed with {type(exc).__name__}: {exc}; nothing was wrong with the "
                "link, so it should have succeeded"
            ) from exc
        except ConformanceError:
            raise
        except Exception as exc:
            raise fail(
                f"{what} raised {type(exc).__name__}: {exc}. An exchange raises only "
                "bot4.errors.ExchangeRefused (the venue said no) or ExchangeFailed (the "
                "request may not have arrived); translate everything else into one of them"
            ) from exc

    async def place(self, order: Order, why: str = "") -> OrderState:
        state = await self.call(f"place_order({_show(order)}){why}", self.ex.place_order(order))
        _check_state_of(self, state, order, "place_order")
        return state

    async def fetch(self, coid: str) -> OrderState:
        return await self.call(
            f"fetch_order({self.symbol!r}, {coid!r})", self.ex.fetch_order(self.symbol, coid)
        )

    async def fills_of(self, coid: str) -> list[Fill]:
        fills = await self.call("fetch_fills()", self.ex.fetch_fills())
        return [f for f in fills if f.client_order_id == coid]

    async def all_fills(self) -> list[Fill]:
        return list(await self.call("fetch_fills()", self.ex.fetch_fills()))

    async def balance(self) -> Balance:
        bal = await self.call("fetch_balance()", self.ex.fetch_balance())
        if not isinstance(bal, Balance):
            raise fail(f"fetch_balance() returned {type(bal).__name__}, not bot4.model.Balance")
        if bal.free + bal.used != bal.total:
            raise fail(
                f"fetch_balance() says total {bal.total} but free {bal.free} + used {bal.used} "
                f"= {bal.free + bal.used}; keep total = free + used"
            )
        return bal

    async def open_ids(self) -> list[str]:
        states = await self.call("fetch_open_orders()", self.ex.fetch_open_orders())
        for s in states:
            if not s.status.is_open:
                raise fail(
                    f"fetch_open_orders() returned {s.order.client_order_id!r} with status "
                    f"{s.status.value}; only NEW and PARTIALLY_FILLED orders are open"
                )
        return [s.order.client_order_id for s in states]

    async def take(self, side: Side, qty: Decimal | None = None, **extra: Any) -> OrderState:
        """Trade at once: a market order, or a limit through the book when only
        limits are claimed; one more tick if the venue fills on ticks only."""
        if CAP.MARKET_ORDERS in self.caps:
            order = self.order(side, OrderType.MARKET, qty, **extra)
        else:
            assert self.last is not None
            far = (
                self.last.ask + self.step * 20
                if side is Side.BUY
                else self.last.bid - self.step * 20
            )
            order = self.order(side, OrderType.LIMIT, qty, far, **extra)
        state = await self.place(order)
        if state.status is not OrderStatus.FILLED:
            await self.quote()
            state = await self.fetch(order.client_order_id)
        if state.status is not OrderStatus.FILLED:
            raise fail(
                f"{_show(order)} against a book with ample size is {state.status.value} "
                f"(filled {state.filled_qty}) after a tick; an order that crosses the book "
                "must fill"
            )
        return state

    async def expect_refused(
        self,
        what: str,
        awaitable: Awaitable[object],
        expected: type[ExchangeRefused],
        why: str,
    ) -> ExchangeRefused:
        """The call must raise ``expected`` (an ExchangeRefused)."""
        try:
            with trio.fail_after(STEP_TIMEOUT):
                result = await awaitable
        except expected as exc:
            return exc
        except ExchangeRefused as exc:
            if expected is ExchangeRefused:
                return exc
            raise fail(
                f"{what} raised {type(exc).__name__}: {exc}; {why}, which must raise "
                f"bot4.errors.{expected.__name__}"
            ) from exc
        except ExchangeFailed as exc:
            raise fail(
                f"{what} raised {type(exc).__name__} (an ExchangeFailed, which the kernel "
                f"retries): {exc}; {why}: that is a refusal, raise bot4.errors."
                f"{expected.__name__} (an ExchangeRefused, never retried)"
            ) from exc
        except trio.TooSlowError:
            raise fail(f"{what} did not return within {STEP_TIMEOUT:g} s") from None
        except Exception as exc:
            raise fail(
                f"{what} raised a bare {type(exc).__name__}: {exc}; {why}, so raise "
                f"bot4.errors.{expected.__name__} (an ExchangeRefused): the kernel then "
                "knows the venue said no and never retries it. Any other exception "
                "leaves it unable to tell a refusal from a dropped connection"
            ) from exc
        raise fail(f"{what} returned {result!r}; {why}, so it must raise {expected.__name__}")


def _show(order: Order) -> str:
    price = f" @ {order.price}" if order.price is not None else ""
    return (
        f"{order.type.value} {order.side.value} {order.qty} {order.symbol}{price} "
        f"id={order.client_order_id!r}"
    )


def _check_state_of(kit: Kit, state: object, order: Order, call: str) -> None:
    if not isinstance(state, OrderState):
        raise fail(f"{call} returned {type(state).__name__}, not bot4.model.OrderState")
    if state.order.client_order_id != order.client_order_id:
        raise fail(
            f"{call}({order.client_order_id!r}) returned the state of "
            f"{state.order.client_order_id!r}; return the state of the order asked for"
        )
    if state.order.side is not order.side or state.order.type is not order.type:
        raise fail(
            f"{call} returned {state.order.side.value} {state.order.type.value} for "
            f"{_show(order)}; the side and type must be the ones placed"
        )


def _on_grid(value: Decimal, step: Decimal) -> bool:
    return (value / step) == (value / step).to_integral_value()


async def _check_fills_match(kit: Kit, state: OrderState) -> list[Fill]:
    """The fills of an order add up to its filled quantity and average price."""
    coid = state.order.client_order_id
    fills = await kit.fills_of(coid)
    total = sum((f.qty for f in fills), ZERO)
    if total != state.filled_qty:
        raise fail(
            f"order {coid!r} reports filled_qty {state.filled_qty} but fetch_fills() has "
            f"{len(fills)} fill(s) for it totalling {total}; every fill must be reported once "
            "and filled_qty must be their sum"
        )
    ids = [f.fill_id for f in fills]
    if len(set(ids)) != len(ids):
        raise fail(f"fetch_fills() repeats fill ids {ids} for {coid!r}; fill ids must be unique")
    if fills:
        vwap = sum((f.qty * f.price for f in fills), ZERO) / total
        if state.avg_price is None or abs(state.avg_price - vwap) > kit.step:
            raise fail(
                f"order {coid!r} reports avg_price {state.avg_price} but its fills average "
                f"{vwap}; avg_price is the quantity-weighted mean of the fill prices"
            )
    for f in fills:
        if f.side is not state.order.side or f.symbol != state.order.symbol:
            raise fail(
                f"fill {f.fill_id} of {coid!r} is a {f.side.value} of {f.symbol}; it must "
                "have the order's side and symbol"
            )
        if not _on_grid(f.qty, kit.market.qty_increment) or not _on_grid(f.price, kit.step):
            raise fail(
                f"fill {f.fill_id}: qty {f.qty} / price {f.price} are off the market grid "
                f"(qty_increment {kit.market.qty_increment}, price_increment {kit.step}); "
                "report what the venue executed, on its grid"
            )
    return fills


# --- the checks -------------------------------------------------------------------------


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
                f"{_show(order)} against ample size is {state.status.value} with filled_qty "
                f"{state.filled_qty} after a tick; a market order must fill completely"
                f"{kit.claims(CAP.MARKET_ORDERS)}"
            )
        fills = await _check_fills_match(kit, state)
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
            f"{_show(order)} below the bid {kit.last.bid if kit.last else ''} came back "
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
            f"{_show(order)} is {state.status.value} after a tick whose ask "
            f"{kit.price(-11)} is below the limit; a crossed limit fills"
            f"{kit.claims(CAP.LIMIT_ORDERS)}"
        )
    fills = await _check_fills_match(kit, state)
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
    _check_state_of(kit, state, order, "cancel_order")
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
            f"{_show(order)} crossed by a tick with only {part} at the ask is "
            f"{state.status.value} with filled_qty {state.filled_qty}; expected "
            f"partially_filled with {part}: a tick's volume is the size at the quote"
            f"{kit.claims(CAP.PARTIAL_FILLS)}"
        )
    if order.client_order_id not in await kit.open_ids():
        raise fail("a partially filled order must stay in fetch_open_orders()")
    await _check_fills_match(kit, state)
    await kit.quote(-13)
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED or state.filled_qty != order.qty:
        raise fail(
            f"the rest of {_show(order)} did not fill on the next tick with ample size "
            f"({state.status.value}, filled {state.filled_qty})"
        )
    await _check_fills_match(kit, state)


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
    if not isinstance(q, Decimal) or not _on_grid(q, m.qty_increment) or q > ragged_qty:
        raise fail(
            f"{_show(order)} was accepted as qty {q!r}; quantities are rounded DOWN to "
            f"qty_increment {m.qty_increment} (expected {kit.qty}): never trade more than asked"
        )
    if q <= ragged_qty - m.qty_increment:
        raise fail(f"qty {ragged_qty} became {q}: round down by less than one increment")
    if order.price is not None:
        p = state.order.price
        if p is None or not _on_grid(p, kit.step) or abs(p - order.price) > kit.step / 2:
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


async def _trigger(kit: Kit, kind: OrderType, cap: Capability) -> None:
    await kit.quote()
    await kit.take(Side.BUY)  # a long to protect, so the exit has something to close
    stop = kind is OrderType.STOP_LOSS
    level = kit.price(-10 if stop else 10)
    # Reduce-only, as the kernel sends every protective order.
    order = kit.order(Side.SELL, kind, price=level, reduce_only=True)
    state = await kit.place(order)
    if state.status is not OrderStatus.NEW:
        raise fail(f"{_show(order)} away from the market came back {state.status.value}")
    await kit.quote(-3 if stop else 3)
    if (await kit.fetch(order.client_order_id)).status is not OrderStatus.NEW:
        raise fail(f"{_show(order)} triggered although the bid never reached {level}")
    await kit.quote(-12 if stop else 12)
    state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED:
        await kit.quote(-12 if stop else 12)
        state = await kit.fetch(order.client_order_id)
    if state.status is not OrderStatus.FILLED:
        raise fail(
            f"{_show(order)} is {state.status.value} after the bid went through {level}; a "
            f"triggered {kind.value} executes as a market order{kit.claims(cap)}"
        )
    await _check_fills_match(kit, state)
    wrong = kit.order(Side.SELL, kind, price=kit.price(12 if stop else -12))
    await kit.expect_refused(
        f"place_order of {_show(wrong)} on the wrong side of the bid",
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
            f"filled, the open orders are {[_show(s.order) for s in exits]}; "
            f"Capability.ATTACHED_EXITS means the venue keeps a reduce-only sell STOP_LOSS and "
            f"TAKE_PROFIT of the filled qty {state.filled_qty}"
        )
    await kit.quote(25)  # the take-profit fires; the stop must go with the position
    left = [s for s in await kit.ex.fetch_open_orders(kit.symbol) if s.order.reduce_only]
    if left:
        raise fail(
            f"the position closed at its take-profit but exits {[_show(s.order) for s in left]}"
            " are still open; when a position goes flat its exits are cancelled"
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
            f"stop_loss and take_profit left the open orders {[_show(s.order) for s in exits]}; "
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
        (f"place_order({_show(order)})", lambda: kit.ex.place_order(order)),
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


_TRADE = frozenset({CAP.MARKET_ORDERS, CAP.LIMIT_ORDERS})


def _margin_checks() -> Sequence[tuple[str, Callable[[Kit], Awaitable[None]]]]:
    # Imported here: the margin checks build on this module's Kit.
    from bot4.testing.margin_checks import MARGIN_CHECKS

    return MARGIN_CHECKS


def _checks() -> dict[str, Check]:
    table = [
        Check("markets", check_markets),
        Check("market_order_fills", check_market_order_fills, frozenset({CAP.MARKET_ORDERS})),
        Check("limit_order_lifecycle", check_limit_order_lifecycle, frozenset({CAP.LIMIT_ORDERS})),
        Check("cancel", check_cancel, frozenset({CAP.LIMIT_ORDERS})),
        Check("unknown_order_id", check_unknown_order_id),
        Check("partial_fill", check_partial_fill, frozenset({CAP.LIMIT_ORDERS, CAP.PARTIAL_FILLS})),
        Check("idempotent_place", check_idempotent_place, requires_any=_TRADE),
        Check("balance_fees", check_balance_fees, requires_any=_TRADE),
        Check("positions", check_positions, frozenset({CAP.POSITIONS}), _TRADE),
        Check("precision", check_precision, requires_any=_TRADE),
        Check("market_data", check_market_data, frozenset({CAP.STREAMING, CAP.LIMIT_ORDERS})),
        Check("error_classes", check_error_classes, requires_any=_TRADE),
        Check("unclaimed_order_types", check_unclaimed_order_types),
        Check("stop_orders", check_stop_orders, frozenset({CAP.STOP_ORDERS}), _TRADE),
        Check(
            "take_profit_orders",
            check_take_profit_orders,
            frozenset({CAP.TAKE_PROFIT_ORDERS}),
            _TRADE,
        ),
        Check("attached_exits", check_attached_exits, frozenset({CAP.ATTACHED_EXITS}), _TRADE),
        Check("no_unclaimed_exits", check_no_unclaimed_exits, requires_any=_TRADE),
        Check("margin", check_margin, frozenset({CAP.MARGIN}), _TRADE),
        *(Check(name, func, frozenset({CAP.MARGIN}), _TRADE) for name, func in _margin_checks()),
        Check("reconnect", check_reconnect, requires_any=_TRADE),
        Check("disconnect", check_disconnect, requires_any=_TRADE, needs_disconnect=True),
        Check("trio_cancellation", check_trio_cancellation, requires_any=_TRADE),
    ]
    return {c.name: c for c in table}


CHECKS: Mapping[str, Check] = _checks()


def describe() -> Sequence[tuple[str, str]]:
    """(name, what it verifies) of every check, for docs and listings."""
    return [(c.name, c.doc) for c in CHECKS.values()]
