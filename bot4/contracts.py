"""The contracts a plugin implements: an exchange, a strategy, a risk-rule pack.

Plugins hand the kernel objects of these types through the registration hooks
in :mod:`bot4.hookspecs`. The hooks are synchronous and cheap (pluggy has no
async support); the objects they register have the async interface below,
which the kernel awaits inside trio. The kernel cannot tell a paper exchange
from a live one: both implement :class:`Exchange`.

An exchange raises :class:`bot4.errors.ExchangeRefused` (never retried) when
the venue says no, and :class:`bot4.errors.ExchangeFailed` (may be retried,
with the same client order id) when the request may not have arrived.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from bot4.errors import ExchangeRefused
from bot4.model import Balance, Fill, MarketData, Order, OrderState, Portfolio, Position, Signal

# Bumped when a contract here changes incompatibly. A plugin module declares the
# version it targets as ``BOT4_API = 1``; the plugin manager refuses others.
API_VERSION = 1


class Capability(enum.Enum):
    """What an exchange claims to support. The conformance kit tests every
    claimed capability and skips, with the reason, those not claimed."""

    MARKET_ORDERS = "market_orders"
    LIMIT_ORDERS = "limit_orders"
    STOP_ORDERS = "stop_orders"
    TAKE_PROFIT_ORDERS = "take_profit_orders"
    MARGIN = "margin"
    POSITIONS = "positions"
    STREAMING = "streaming"
    PARTIAL_FILLS = "partial_fills"
    # The exchange turns an order's stop_loss/take_profit into reduce-only exit
    # orders and keeps them sized to the position (brackets). Without it the
    # kernel places and maintains the protective orders itself.
    ATTACHED_EXITS = "attached_exits"


@attrs.frozen(slots=True)
class MarketInfo:
    """Trading rules of one symbol: quantities and prices are rounded to these."""

    symbol: str
    price_increment: Decimal
    qty_increment: Decimal
    min_qty: Decimal
    quote_currency: str = "USDT"


ExchangeEvent = MarketData | Fill | OrderState


class Exchange(abc.ABC):
    """A venue. Every method may raise ExchangeRefused or ExchangeFailed."""

    name: str
    capabilities: frozenset[Capability] = frozenset()

    async def connect(self) -> None:  # noqa: B027 - optional hook, default is no-op
        """Open connections; called once before anything else."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default is no-op
        """Release connections; called once at shutdown, also after errors."""

    @abc.abstractmethod
    async def fetch_markets(self) -> Mapping[str, MarketInfo]:
        """Symbols traded here with their precision."""

    @abc.abstractmethod
    async def place_order(self, order: Order) -> OrderState:
        """Place an order. Idempotent on ``order.client_order_id``: placing the
        same id again returns the existing order's state, never a second order."""

    @abc.abstractmethod
    async def cancel_order(self, symbol: str, client_order_id: str) -> OrderState:
        """Cancel an open order; cancelling a filled or unknown order is refused
        (OrderNotFound for unknown, InvalidOrder for one no longer open)."""

    @abc.abstractmethod
    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        """The current state of one order (OrderNotFound if unknown)."""

    @abc.abstractmethod
    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        """Orders still open, oldest first."""

    @abc.abstractmethod
    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        """Fills at or after ``since`` (all when None), in execution order."""

    @abc.abstractmethod
    async def fetch_balance(self) -> Balance:
        """Balance in the quote currency."""

    @abc.abstractmethod
    async def fetch_positions(self) -> Sequence[Position]:
        """Open positions (non-zero quantity)."""

    @abc.abstractmethod
    def stream(self, symbols: Sequence[str]) -> AsyncIterator[ExchangeEvent]:
        """Market data, fills and order updates as they happen, in venue order.
        Ends when the venue's feed ends (a replay or a paper session's data)."""

    # Optional, for exchanges that claim Capability.MARGIN (the default refuses).

    async def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        """Use ``leverage`` for later orders in ``symbol``; returns the leverage
        the venue accepted (it may round, e.g. down to a whole number).
        Raises ExchangeRefused when the venue does not accept it."""
        raise ExchangeRefused(f"{self.name}: set_leverage needs Capability.MARGIN")

    async def set_margin_mode(self, symbol: str, mode: str) -> None:
        """Use margin ``mode`` ("isolated" or "cross") for ``symbol``.
        Raises ExchangeRefused when the venue does not accept it."""
        raise ExchangeRefused(f"{self.name}: set_margin_mode needs Capability.MARGIN")

    async def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        """Move ``amount`` (quote currency) of free balance into the isolated
        position in ``symbol``; returns its new liquidation price (None when
        it can no longer be liquidated or the venue does not say).
        Raises ExchangeRefused when the venue does not (no such position,
        cross margin, not enough free balance)."""
        raise ExchangeRefused(f"{self.name}: add_margin is not supported")


class Strategy(abc.ABC):
    """Turns market data into signals. It never places orders: the kernel sends
    every signal through the risk policy first. It must be deterministic given
    the same events (replay depends on it).

    A strategy that never waits on a tick may also define
    ``on_market_data_sync(self, tick) -> Sequence[Signal]``, the same answer
    as a plain call: the kernel then calls it instead of awaiting
    :meth:`on_market_data` (no coroutine per tick), so both must give the
    same signals for the same ticks (``bot4.testing``'s ``StrategySuite``
    checks it; usually ``on_market_data`` returns its result). Found on the
    class, as a stream's optional ``poll()`` is: :func:`sync_hook`."""

    name: str

    @abc.abstractmethod
    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        """Signals in response to one tick (usually none)."""

    async def on_fill(self, fill: Fill) -> Sequence[Signal]:
        """Signals in response to one of our fills (default: none)."""
        return ()


def sync_hook(strategy: Strategy) -> Callable[[MarketData], Sequence[Signal]] | None:
    """The strategy's optional ``on_market_data_sync(tick)`` (see
    :class:`Strategy`) when its class defines one, else None.

    Also None when ``on_market_data`` is overridden below the class that
    defines the hook: a subclass of a strategy that only overrides
    ``on_market_data`` means that method, and the kernel awaits it."""
    mro = type(strategy).__mro__
    owner = next((k for k in mro if "on_market_data_sync" in vars(k)), None)
    if owner is None:
        return None
    awaited = next((k for k in mro if "on_market_data" in vars(k)), Strategy)
    if not issubclass(owner, awaited):
        return None
    hook = getattr(strategy, "on_market_data_sync", None)
    return hook if callable(hook) else None


@attrs.frozen(slots=True)
class FactContext:
    """What a risk-rule plugin sees when it adds facts for an order."""

    order: Order
    portfolio: Portfolio
    market: MarketData | None


class RiskRules(abc.ABC):
    """A risk-rule pack: facts for the rule files, and optionally rule files.
    Plugins add facts and actions; rule files decide."""

    name: str

    def rule_files(self) -> Sequence[Path]:
        """Extra rule files this pack ships (default: none)."""
        return ()

    @abc.abstractmethod
    def fact_names(self) -> frozenset[str]:
        """Names of the facts :meth:`facts` returns, declared up front so a rule
        file that uses an unknown fact fails to compile."""

    def fact_types(self) -> Mapping[str, str]:
        """The type of each fact: ``"number"``, ``"bool"`` or ``"string"``
        (default: every fact is a number). A ``bool`` fact can stand alone
        as a condition (``when: mypack.blocked``); a value of another type
        than declared rejects the order."""
        return {}

    def fact_docs(self) -> Mapping[str, str]:
        """One line per fact saying what it means (and its unit), shown by
        ``bot4 rules facts``. Optional."""
        return {}

    @abc.abstractmethod
    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        """Facts about one order (numbers, booleans, strings). Synchronous and
        cheap: it runs on the pre-trade path. Raising rejects the order."""

    def on_market_data(self, tick: MarketData) -> None:  # noqa: B027 - optional hook, default ignores ticks
        """Observe market data (e.g. to keep a price history)."""
