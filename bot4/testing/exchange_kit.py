"""The machinery every exchange check runs on: :class:`Check` (one check and the
capabilities it needs claimed), :func:`run_check` (one check on a fresh
harness, skipped with the reason when the claims fall short) and :class:`Kit`,
one check's view of the harness, which builds quotes and orders on the grid of
the harness symbol and turns any surprise from the exchange into a
:class:`ConformanceError` saying what to fix.

It also holds the helpers several checks share: :func:`show_order` (an order
as messages print it), :func:`verify_state` (a call returned the state of the
order asked for), :func:`verify_fills` (an order's fills add up to it) and
:func:`on_grid`.

The checks live in the ``*_checks`` modules, grouped by subject, and
:mod:`bot4.testing.exchange` lists them in the order they run. This module
imports none of them, so every check module builds on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import attrs
import trio

from bot4.contracts import Capability, MarketInfo
from bot4.errors import ExchangeFailed, ExchangeRefused
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
    "CAP",
    "Check",
    "CheckSkipped",
    "HarnessFactory",
    "Kit",
    "fail",
    "on_grid",
    "run_check",
    "show_order",
    "verify_fills",
    "verify_state",
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
        state = await self.call(
            f"place_order({show_order(order)}){why}", self.ex.place_order(order)
        )
        verify_state(self, state, order, "place_order")
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
                f"{show_order(order)} against a book with ample size is {state.status.value} "
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


def show_order(order: Order) -> str:
    price = f" @ {order.price}" if order.price is not None else ""
    return (
        f"{order.type.value} {order.side.value} {order.qty} {order.symbol}{price} "
        f"id={order.client_order_id!r}"
    )


def verify_state(kit: Kit, state: object, order: Order, call: str) -> None:
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
            f"{show_order(order)}; the side and type must be the ones placed"
        )


def on_grid(value: Decimal, step: Decimal) -> bool:
    return (value / step) == (value / step).to_integral_value()


async def verify_fills(kit: Kit, state: OrderState) -> list[Fill]:
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
        if not on_grid(f.qty, kit.market.qty_increment) or not on_grid(f.price, kit.step):
            raise fail(
                f"fill {f.fill_id}: qty {f.qty} / price {f.price} are off the market grid "
                f"(qty_increment {kit.market.qty_increment}, price_increment {kit.step}); "
                "report what the venue executed, on its grid"
            )
    return fills
