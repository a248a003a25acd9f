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

An exchange that does not claim MARGIN is left alone: entries go as they
are, and ADD_MARGIN is only published (for a person or a plugin to act on).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING

from bot4.contracts import Capability
from bot4.errors import ExchangeFailed, ExchangeRefused
from bot4.model import ZERO, Order, Rejected, RiskAction, RiskActionKind

if TYPE_CHECKING:
    from bot4.kernel import Kernel, KernelStats

__all__ = ["ESCALATED_FRACTION", "LEVERAGE_RULE", "MODE_RULE", "MarginDesk"]

LEVERAGE_RULE = "exchange-leverage"
MODE_RULE = "exchange-margin-mode"
ESCALATED_FRACTION = Decimal("0.5")
_AMOUNT_STEP = Decimal("0.00000001")


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

    @property
    def active(self) -> bool:
        # Looked up once: the hash of an Enum member is Python code, and this
        # is on every entry's path.
        if self._active is None:
            self._active = Capability.MARGIN in self._kernel.exchange.capabilities
        return self._active

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
