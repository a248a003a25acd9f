"""What the kernel does with an exchange's margin account (one that claims
``Capability.MARGIN``): set leverage and margin mode before entries, and carry
out the liquidation ladder's ADD_MARGIN.

* **Before an entry** (an order that is not reduce-only) in a symbol, the
  first time and whenever its leverage differs from the one the venue
  accepted last: ``set_margin_mode(symbol, mode)`` once per symbol (mode:
  :attr:`MarginDesk.mode` when set, else the mode the exchange was configured
  with, ``settings.margin_mode`` as the ccxt plugin has it, else isolated), then
  ``set_leverage(symbol, order.leverage)``. The entry is refused (a Rejected,
  rule ``exchange-leverage`` or ``exchange-margin-mode``) when the venue
  refuses, fails, or accepts another leverage than the order's: the risk
  policy sized and measured the order at its leverage, so trading it at
  another would trade a position the policy never saw.
* **ADD_MARGIN** moves ``fraction`` (the ladder rule's parameter) of the
  position's initial margin from the free balance into the isolated position
  (``add_margin(symbol, amount)``), capped by the free balance, rounded down
  to 1e-8. With no free balance, or when the venue refuses, the rung
  escalates: the action becomes the next rung, REDUCE_POSITION by half
  (:data:`ESCALATED_FRACTION`, the bundled ladder's halving).

* **The venue's figures** (an exchange that claims MARGIN and offers
  ``fetch_margin_positions()``, as the paper venue and the ccxt plugin do):
  the desk reads every held position's margin from the venue and keeps one
  checked view per symbol (:class:`bot4.venue_margin.VenueMargin`) in
  :attr:`MarginDesk.views`, a mapping it shares with the risk policy
  (``RiskPolicy.venue_margins``): the liquidation price, margin, margin
  ratio, mark and funding facts come from it (:mod:`bot4.risk.facts`). It is
  read at a bounded rate, never per tick: on the first tick after a fill (the
  fills of one order are read once), after ADD_MARGIN, at each funding time
  (every 8 h from 00:00 UTC) and otherwise every :data:`REFRESH_SECONDS` of
  event time while a position is held (event time, so a replay reads at the
  same ticks). A fill retires its symbol's view at once (the view is of the
  position object the fill replaced). A venue that fails, refuses or answers
  something odd leaves no view for the symbols it did not answer well, so
  those facts fall back to the formula, as they would with no venue at all;
  nothing the venue says can raise here.

An exchange that does not claim MARGIN is left alone: entries go as they
are, and ADD_MARGIN is only published (for a person or a plugin to act on).
"""

from __future__ import annotations

import logging
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING

from bot4.contracts import Capability
from bot4.errors import ExchangeFailed, ExchangeRefused
from bot4.margin import next_funding_ns
from bot4.model import ZERO, Order, Rejected, RiskAction, RiskActionKind
from bot4.secrets import redact
from bot4.venue_margin import MARGIN_TOPIC, VenueMargin, as_record, read_venue_margin

if TYPE_CHECKING:
    from bot4.kernel import Kernel
    from bot4.kernel_types import KernelStats

__all__ = ["ESCALATED_FRACTION", "LEVERAGE_RULE", "MODE_RULE", "REFRESH_SECONDS", "MarginDesk"]

log = logging.getLogger("bot4.margin")

LEVERAGE_RULE = "exchange-leverage"
MODE_RULE = "exchange-margin-mode"
ESCALATED_FRACTION = Decimal("0.5")
_AMOUNT_STEP = Decimal("0.00000001")
# Event seconds between two reads of the venue's margin while a position is
# held and nothing else (a fill, ADD_MARGIN, a funding time) asks sooner.
REFRESH_SECONDS = 60
_NS = 10**9


class MarginDesk:
    """The kernel's side of the margin account (see the module docstring)."""

    def __init__(self, kernel: Kernel, mode: str | None = None) -> None:
        self._kernel = kernel
        self.mode = mode
        self._leverage: dict[str, Decimal] = {}  # symbol -> leverage the venue accepted
        self._moded: set[str] = set()
        self.added = ZERO  # collateral moved into positions this session
        self.escalations = 0
        self._active: bool | None = None
        # symbol -> the venue's checked view of the held position's margin.
        self.views: dict[str, VenueMargin] = {}
        self.refreshes = 0  # reads of the venue's margin positions
        self.refresh_failures = 0
        self.refresh_seconds = REFRESH_SECONDS
        # Event time (ns) of the next read; None: no read planned (no
        # position, or a venue without margin positions).
        self.due_ns: int | None = None
        self._reports: bool | None = None
        self._failing = False

    @property
    def active(self) -> bool:
        # Looked up once: the hash of an Enum member is Python code, and this
        # is on every entry's path.
        if self._active is None:
            self._active = Capability.MARGIN in self._kernel.exchange.capabilities
        return self._active

    @property
    def reports(self) -> bool:
        """The exchange claims MARGIN and reports margin positions."""
        if self._reports is None:
            fetch = getattr(self._kernel.exchange, "fetch_margin_positions", None)
            self._reports = self.active and callable(fetch)
        return self._reports

    def start(self) -> None:
        """The session starts: read the venue on the first tick (a resumed
        book may already hold positions)."""
        if self.reports:
            self.due_ns = 0

    def filled(self, symbol: str) -> None:
        """A fill in ``symbol``: its view is of the position the fill replaced
        (retired now), and the venue is read on the next tick."""
        self.views.pop(symbol, None)
        if self.reports:
            self.due_ns = 0

    def _share(self) -> None:
        """Hand :attr:`views` to every policy that reads venue margins: the
        kernel's, the gate's and the shadow's (each may be replaced)."""
        kernel = self._kernel
        shadow = getattr(kernel, "shadow", None)
        for policy in (
            kernel.policy,
            getattr(kernel.gate, "policy", None),
            getattr(shadow, "policy", None),
        ):
            if getattr(policy, "venue_margins", self.views) is not self.views:
                policy.venue_margins = self.views  # type: ignore[union-attr]

    async def refresh(self, now_ns: int) -> None:
        """Read the venue's margin positions and replace :attr:`views` (see
        the module docstring). Never raises; plans the next read."""
        kernel = self._kernel
        self._share()
        tracker = kernel.tracker
        self.refreshes += 1
        fresh: dict[str, VenueMargin] = {}
        seen: set[str] = set()
        error = ""
        try:
            fetch = kernel.exchange.fetch_margin_positions  # type: ignore[attr-defined]
            rows = await fetch()
            for row in rows:
                symbol = getattr(row, "symbol", None)
                if not isinstance(symbol, str):
                    continue
                if symbol in seen:  # two answers for one position: trust neither
                    fresh.pop(symbol, None)
                    continue
                seen.add(symbol)
                position = tracker.position(symbol)
                if position is None or position.qty == 0:
                    continue
                last = kernel.last_tick(symbol)
                view = read_venue_margin(row, position, last.mid if last is not None else None)
                if view is not None:
                    fresh[symbol] = view
        except Exception as exc:  # a venue's failure or odd answer: the formula stands
            self.refresh_failures += 1
            error = redact(f"{type(exc).__name__}: {exc}")
            if not self._failing:  # once until a read succeeds again
                log.warning(
                    "could not read %s's margin positions (the formula stands in): %s",
                    kernel.exchange.name,
                    error,
                )
            self._failing = True
            fresh = {}
        else:
            self._failing = False
        self.views.clear()
        self.views.update(fresh)
        self._plan(now_ns)
        # Recorded, so that a replay against the recording answers the same
        # (bot4.replayvenue); a failure as the error, which replays as one.
        payload = {"error": error} if error else {"rows": [as_record(v) for v in fresh.values()]}
        await kernel.bus.publish(MARGIN_TOPIC, payload, ts=now_ns)

    def _plan(self, now_ns: int) -> None:
        tracker = self._kernel.tracker
        holds_any = getattr(tracker, "holds_any", None)  # PortfolioTracker's, no snapshot built
        if not (
            holds_any()
            if holds_any is not None
            else any(p.qty for p in tracker.snapshot().positions.values())
        ):
            self.due_ns = None
            return
        step = self.refresh_seconds * _NS
        self.due_ns = min(now_ns + step, next_funding_ns(now_ns))

    def margin_mode(self) -> str:
        """The mode entries use (see the module docstring)."""
        if self.mode is not None:
            return self.mode
        settings = getattr(self._kernel.exchange, "settings", None)
        configured = getattr(settings, "margin_mode", None)
        return configured if configured in ("isolated", "cross") else "isolated"

    def settle(self, stats: KernelStats) -> None:
        """Copy the session's margin figures into ``stats`` (at the end of a
        run): what was added, escalated, and the funding the venue reports
        (an exchange's ``funding_paid`` attribute; the paper venue has one)."""
        stats.margin_added = self.added
        stats.margin_escalations = self.escalations
        funding = getattr(self._kernel.exchange, "funding_paid", None)
        if isinstance(funding, Decimal):
            stats.funding_paid = funding

    async def before_entry(self, order: Order) -> Rejected | None:
        """Set mode and leverage for ``order``'s symbol if needed; a Rejected
        when the venue does not take the order's leverage."""
        if order.reduce_only or not self.active:
            return None
        symbol = order.symbol
        if self._leverage.get(symbol) == order.leverage:
            return None
        exchange = self._kernel.exchange
        if symbol not in self._moded:
            mode = self.margin_mode()
            try:
                await exchange.set_margin_mode(symbol, mode)
            except (ExchangeRefused, ExchangeFailed) as exc:
                return Rejected(
                    rule=MODE_RULE,
                    reason=f"{exchange.name} did not set {symbol} to {mode} margin: {exc}",
                )
            self._moded.add(symbol)
        try:
            accepted = await exchange.set_leverage(symbol, order.leverage)
        except (ExchangeRefused, ExchangeFailed) as exc:
            self._leverage.pop(symbol, None)
            return Rejected(
                rule=LEVERAGE_RULE,
                reason=f"{exchange.name} refused leverage {order.leverage} on {symbol}: {exc}",
            )
        if accepted != order.leverage:
            # The venue's leverage is now ``accepted``: remembered, so an
            # order at that leverage goes without asking again.
            self._leverage[symbol] = accepted
            return Rejected(
                rule=LEVERAGE_RULE,
                reason=(
                    f"{exchange.name} set {symbol} to leverage {accepted}, "
                    f"not the order's {order.leverage}"
                ),
            )
        self._leverage[symbol] = accepted
        return None

    async def add_margin(self, action: RiskAction) -> RiskAction | None:
        """Carry out ADD_MARGIN; returns the escalated action (the next rung)
        when no margin could be added, else None."""
        kernel = self._kernel
        symbol = action.symbol
        if symbol is None or not self.active:
            return None
        position = kernel.tracker.position(symbol)
        if position is None or position.qty == 0:
            return None
        want = position.margin() * action.fraction
        why = ""
        try:
            balance = await kernel.exchange.fetch_balance()
            amount = min(want, balance.free).quantize(_AMOUNT_STEP, rounding=ROUND_DOWN)
            if amount <= 0:
                why = f"no free margin (free {balance.free})"
            else:
                await kernel.exchange.add_margin(symbol, amount)
                self.added += amount
                if self.reports:
                    await self.refresh(kernel.now_ns)  # the liquidation price moved
                return None
        except (ExchangeRefused, ExchangeFailed) as exc:
            why = f"{kernel.exchange.name} did not add margin: {exc}"
        self.escalations += 1
        return RiskAction(
            kind=RiskActionKind.REDUCE_POSITION,
            symbol=symbol,
            rule=action.rule,
            reason=f"{action.reason}; escalated: {why}",
            fraction=ESCALATED_FRACTION,
            values=action.values,
        )
