"""Deliberately wrong exchanges: each wraps the paper exchange and breaks one
rule of the contract, so the kit's tests can show it is caught and named."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
import trio
from bot4_paper import PaperEngine, PaperExchange

from bot4.contracts import Capability
from bot4.errors import ExchangeRefused, ExchangeUnavailable, InvalidOrder
from bot4.model import Balance, MarketData, Order, OrderState, OrderStatus, OrderType, Position
from bot4.testing import FeedHarness


class DoubleFill(PaperExchange):
    """A retried place becomes a second order (no idempotency on client ids)."""

    name = "doublefill"

    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed)
        self._retries = 0

    async def place_order(self, order: Order) -> OrderState:
        try:
            await self.fetch_order(order.symbol, order.client_order_id)
        except ExchangeRefused:
            return await super().place_order(order)
        self._retries += 1
        again = attrs.evolve(order, client_order_id=f"{order.client_order_id}-r{self._retries}")
        state = await super().place_order(again)
        return attrs.evolve(state, order=order)


class FeeBlindBalance(PaperExchange):
    """Reports a balance that ignores the fees it charged."""

    name = "feeblind"

    async def fetch_balance(self) -> Balance:
        bal = await super().fetch_balance()
        fees = sum((f.fee for f in await self.fetch_fills()), bal.used * 0)
        return Balance(bal.currency, bal.total + fees, bal.free + fees, bal.used)


class BareErrors(PaperExchange):
    """Raises a bare Exception when the venue refuses an order."""

    name = "bareerrors"

    async def place_order(self, order: Order) -> OrderState:
        try:
            return await super().place_order(order)
        except ExchangeRefused as exc:
            raise Exception(f"rejected: {exc}") from None  # noqa: TRY002 - the bug under test


class NoCheckpoint(PaperExchange):
    """fetch_balance never yields to trio, so it cannot be cancelled."""

    name = "nocheckpoint"

    async def fetch_balance(self) -> Balance:
        return self.engine.balance()


class ClaimsStops(PaperExchange):
    """Claims stop orders but refuses them."""

    name = "claimsstops"

    async def place_order(self, order: Order) -> OrderState:
        if order.type is OrderType.STOP_LOSS:
            raise InvalidOrder("stop orders are not supported")
        return await super().place_order(order)


class ClaimsAttachedExits(PaperExchange):
    """Claims ATTACHED_EXITS but its venue never creates the exits (the
    kernel would then leave every position without a stop)."""

    name = "claimsexits"

    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed, PaperEngine(attached_exits=False))
        self.capabilities = frozenset(Capability)


class ClaimsTakeProfits(PaperExchange):
    """Claims take-profit orders, acknowledges them, and never triggers them."""

    name = "claimstakeprofits"

    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed)
        self._dropped: dict[str, Order] = {}

    async def place_order(self, order: Order) -> OrderState:
        if order.type is OrderType.TAKE_PROFIT:
            self._dropped[order.client_order_id] = order
            return OrderState(order, OrderStatus.NEW)
        return await super().place_order(order)

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        dropped = self._dropped.get(client_order_id)
        if dropped is not None:
            return OrderState(dropped, OrderStatus.NEW)
        return await super().fetch_order(symbol, client_order_id)


class SilentExits(PaperExchange):
    """Does not claim ATTACHED_EXITS but attaches exits anyway (what a
    scaffolded plugin over the default paper venue used to do): the kernel's
    own protection would then close every position twice."""

    name = "silentexits"
    capabilities = frozenset(Capability) - {Capability.ATTACHED_EXITS}


class LimitOnly(PaperExchange):
    """Honest limit-only venue: claims LIMIT_ORDERS and refuses the rest."""

    name = "limitonly"
    capabilities = frozenset({Capability.LIMIT_ORDERS, Capability.STREAMING})

    async def place_order(self, order: Order) -> OrderState:
        if order.type is not OrderType.LIMIT:
            raise InvalidOrder(f"{order.type.value} orders are not supported here")
        return await super().place_order(order)


class QuietlyAcceptsMarket(LimitOnly):
    """Claims only limits but executes market orders anyway."""

    name = "quietmarket"

    async def place_order(self, order: Order) -> OrderState:
        return await PaperExchange.place_order(self, order)


class ShortAsLong(PaperExchange):
    """Reports positions with the sign lost (a short shows as a long)."""

    name = "shortaslong"

    async def fetch_positions(self) -> Sequence[Position]:
        return [attrs.evolve(p, qty=abs(p.qty)) for p in await super().fetch_positions()]


class SkipsFilledUpdate(PaperExchange):
    """Cancelling a filled order 'succeeds' instead of being refused."""

    name = "cancelsfilled"

    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        state = await self.fetch_order(symbol, client_order_id)
        if not state.status.is_open:
            return state
        return await super().cancel_order(symbol, client_order_id)


class TwiceTheFee(PaperExchange):
    """Consistent with itself but charges twice the paper taker fee: only the
    comparison with the reference can tell."""

    name = "twicefee"

    def __init__(self, feed: Iterable[MarketData]) -> None:
        super().__init__(feed)
        self.engine.taker_fee *= 2


class Link:
    """A simulated network link in front of a paper exchange."""

    up = True


class Networked(PaperExchange):
    """A paper exchange reached over a link that can drop; a down link raises
    ExchangeUnavailable (correct) or, with ``wrong``, a bare ConnectionError."""

    name = "networked"
    wrong = False

    def __init__(self, feed: Iterable[MarketData], link: Link) -> None:
        super().__init__(feed)
        self.link = link

    async def _wire(self) -> None:
        await trio.lowlevel.checkpoint()
        if not self.link.up:
            if self.wrong:
                raise ConnectionError("connection reset by peer")
            raise ExchangeUnavailable("link down")

    async def fetch_balance(self) -> Balance:
        await self._wire()
        return await super().fetch_balance()

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        await self._wire()
        return await super().fetch_open_orders(symbol)

    async def place_order(self, order: Order) -> OrderState:
        await self._wire()
        return await super().place_order(order)


class WrongNetworked(Networked):
    name = "wrongnetworked"
    wrong = True


class LinkHarness(FeedHarness):
    """The harness a networked plugin writes: it can drop the link."""

    def __init__(self, cls: type[Networked]) -> None:
        self.link = Link()
        super().__init__(lambda feed: cls(feed, self.link))

    @property
    def can_disconnect(self) -> bool:
        return True

    async def disconnect(self) -> None:
        self.link.up = False

    async def reconnect(self) -> None:
        self.link.up = True
