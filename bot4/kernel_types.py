"""What the kernel needs of its collaborators, and the counters it keeps.

The kernel (:mod:`bot4.kernel`) is written against these protocols, not the
classes that implement them, so a test or a benchmark can hand it a smaller
part, and so that the modules that only read its counters (the report, the
metrics, the margin desk) need not import the kernel:

* :class:`Policy`: the monitoring half of :class:`bot4.risk.RiskPolicy` (the
  order half is the gate's, :mod:`bot4.gate`);
* :class:`WriteAhead`: the journal's pre-trade hook, awaited with each order
  before it is sent;
* :class:`RiskJournal`: where risk state that must survive a restart goes;
* :class:`Tracker`: the book, :class:`bot4.portfolio.PortfolioTracker`;
* :class:`KernelStats`: the session's counters, for the summary and metrics.

This module imports only the model: everything may import it.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import Any, Protocol

import attrs

from bot4.model import ZERO, Fill, MarketData, Order, Portfolio, Position, RiskAction

__all__ = ["KernelStats", "Policy", "RiskJournal", "Tracker", "WriteAhead"]


class Policy(Protocol):
    """What the kernel needs of :class:`bot4.risk.RiskPolicy` besides the gate."""

    def on_market_data(
        self, tick: MarketData, portfolio: Portfolio, now_ns: int
    ) -> list[RiskAction]: ...

    def on_fill(
        self, fill: Fill, portfolio: Portfolio, now_ns: int, stop_out: bool
    ) -> list[RiskAction]: ...

    def reload_if_changed(self) -> object | None: ...


class WriteAhead(Protocol):
    """The journal's pre-trade hook (:mod:`bot4.journal.writer`), awaited with
    each order before ``place_order``; if it raises, the order is rejected
    (rule ``journal``) and never sent. What returning means depends on the
    venue's kind, which the session sets explicitly from the exchange
    (``bot4.journal.writer.venue_kind``):

    * live (the venue's orders outlive the process): the intent is committed,
      durably, before it returns, so a crash between the two is recovered by
      client order id, never by placing again;
    * paper (the in-memory paper and replay venues, which die with the
      process): the intent is queued and rides the journal's next batch; a
      crash may lose it, with the venue's own memory of the order.

    Everything else the journal keeps, it takes from the bus."""

    async def write_ahead(self, order: Order) -> None: ...


class RiskJournal(Protocol):
    """Where the kernel keeps risk state that must survive a restart
    (:mod:`bot4.journal.riskstate`): ``note`` queues the new value of a key,
    ``checkpoint`` commits everything queued, durably, before the kernel
    takes its next step (after a breaker trip, a stop-out, a ladder rung)."""

    def note(self, key: str, value: Any, ts_ns: int, symbol: str | None = None) -> None: ...

    async def checkpoint(self) -> None: ...


class Tracker(Protocol):
    """What the kernel needs of :class:`bot4.portfolio.PortfolioTracker`."""

    def apply(
        self, fill: Fill, *, leverage: Decimal | None = None, stop_loss: Decimal | None = None
    ) -> Any: ...

    def mark(self, symbol: str, price: Decimal) -> None: ...

    def snapshot(self) -> Portfolio: ...

    def position(self, symbol: str) -> Position | None: ...


@attrs.define
class KernelStats:
    """Counters for the session summary and metrics."""

    ticks: int = 0
    signals: int = 0
    approved: int = 0
    rejected: int = 0
    resized: int = 0
    fills: int = 0
    exchange_refusals: int = 0
    strategy_errors: int = 0
    breaker_trips: int = 0
    reloads: int = 0
    reload_failures: int = 0
    protection: str = ""  # the protection mode (bot4.protection.ProtectionMode)
    protection_failures: int = 0  # protective orders or closes that failed
    liquidations: int = 0  # fills the exchange marked as liquidations (liquidity "liquidation")
    margin_added: Decimal = ZERO  # collateral ADD_MARGIN moved into positions
    margin_escalations: int = 0  # ADD_MARGIN rungs that became the next rung
    funding_paid: Decimal = ZERO  # what funding took from the account (the venue's figure)
    rejections_by_rule: Counter[str] = attrs.field(factory=Counter)
    actions: Counter[str] = attrs.field(factory=Counter)
