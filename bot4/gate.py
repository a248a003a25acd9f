"""The pre-trade gate: every order passes here, and it fails closed.

The gate asks the rule policy (synchronous, on the kernel's thread) and then
any asynchronous checks (a shared risk budget in Redis, say), each under a
deadline. Anything but a clean :class:`~bot4.model.Approved` from all of them
is a rejection that names what went wrong: no policy loaded, a check that
raised, a check that timed out, an answer of the wrong type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import trio

from bot4.model import Approved, Decision, MarketData, Order, Portfolio, Rejected
from bot4.secrets import redact


class OrderPolicy(Protocol):
    """What the gate needs of the rule policy (:class:`bot4.risk.RiskPolicy`)."""

    def check_order(
        self, order: Order, portfolio: Portfolio, market: MarketData | None, now_ns: int
    ) -> Decision: ...


class AsyncRiskCheck(Protocol):
    """An extra check with I/O (e.g. reserving shared budget). Returns None to
    let the order through, or a Rejected saying why not."""

    name: str

    async def check(self, order: Order, portfolio: Portfolio) -> Rejected | None: ...


def _fail_closed(order: Order, why: str) -> Rejected:
    return Rejected(rule="fail-closed", reason=redact(why), order=order)


class RiskGate:
    def __init__(
        self,
        policy: OrderPolicy | None,
        checks: Sequence[AsyncRiskCheck] = (),
        *,
        timeout: float = 2.0,
    ) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(
                f"risk gate timeout must be a positive number of seconds, not {timeout!r}"
            )
        self.policy = policy
        self.checks = tuple(checks)
        self.timeout = timeout

    async def check(
        self, order: Order, portfolio: Portfolio, market: MarketData | None, now_ns: int
    ) -> Decision:
        if self.policy is None:
            return _fail_closed(order, "no risk policy is loaded")
        try:
            # Typed as a Decision, but a plugin-built policy may answer anything.
            decision: object = self.policy.check_order(order, portfolio, market, now_ns)
        except Exception as exc:  # any error in the risk path means reject
            return _fail_closed(order, f"risk policy raised {type(exc).__name__}: {exc}")
        if isinstance(decision, Rejected):
            return decision
        if not isinstance(decision, Approved):
            return _fail_closed(
                order, f"risk policy answered {type(decision).__name__}, not a decision"
            )
        for check in self.checks:
            name = getattr(check, "name", type(check).__name__)
            try:
                with trio.move_on_after(self.timeout) as scope:
                    verdict: object = await check.check(order, portfolio)
            except Exception as exc:  # any error in the risk path means reject
                return _fail_closed(order, f"risk check {name} raised {type(exc).__name__}: {exc}")
            if scope.cancelled_caught:
                return _fail_closed(
                    order, f"risk check {name} gave no answer within {self.timeout:g}s"
                )
            if verdict is not None:
                if isinstance(verdict, Rejected):
                    return verdict
                return _fail_closed(order, f"risk check {name} answered {type(verdict).__name__}")
        return decision
