"""The shared figures as facts for the rule files: the ``shared`` risk pack.

Rules run synchronously on the pre-trade path, so they cannot ask Redis;
the session's service refreshes a cached :class:`SharedFigures` every
``refresh`` seconds (0.5 s by default) and the pack serves that copy. The
figures are therefore up to one refresh old (plus what other processes
reserve meanwhile): use them for policy (how much of the shared book may go
to one strategy, soft limits), while the hard limits are the budget's
atomic reservation. A copy older than ``max_age`` (5 s), or none at all
(Redis unreachable since the start), makes :meth:`facts` raise, so a rule
that reads ``shared.*`` rejects the order (fail closed).

Facts: ``shared.exposure``, ``shared.reserved``, ``shared.used`` (both),
``shared.used_after`` (plus this order's notional), ``shared.symbol_used``
(exposure and reservations in the order's symbol), ``shared.equity`` (summed
equity of live processes), ``shared.leverage`` (used / equity; 0 without
equity), ``shared.processes`` and ``shared.age`` (seconds since the read).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from bot4.contracts import FactContext, RiskRules
from bot4.model import ZERO
from bot4.shared.budget import SharedFigures
from bot4.shared.connection import SharedUnavailable

FACTS = frozenset(
    {
        "shared.exposure",
        "shared.reserved",
        "shared.used",
        "shared.used_after",
        "shared.symbol_used",
        "shared.equity",
        "shared.leverage",
        "shared.processes",
        "shared.age",
    }
)

DOCS: Mapping[str, str] = {
    "shared.exposure": "filled exposure of every process (quote currency)",
    "shared.reserved": "exposure reserved by open orders of every process (quote currency)",
    "shared.used": "exposure + reserved (quote currency)",
    "shared.used_after": "used + this order's notional (quote currency)",
    "shared.symbol_used": "exposure and reservations in the order's symbol (quote currency)",
    "shared.equity": "summed equity of the live processes (quote currency)",
    "shared.leverage": "used / equity (x; 0 without equity)",
    "shared.processes": "live processes sharing the budget (count)",
    "shared.age": "seconds since the figures were read from Redis",
}


class SharedFacts(RiskRules):
    """The ``shared`` pack: facts from the last read of the shared budget."""

    name = "shared"

    def __init__(self, *, max_age: float = 5.0) -> None:
        self.max_age = max_age
        self.figures: SharedFigures | None = None
        self.error = "no shared risk figures read yet (is Redis reachable?)"

    def update(self, figures: SharedFigures) -> None:
        self.figures = figures

    def unavailable(self, error: str) -> None:
        self.error = error

    def fact_names(self) -> frozenset[str]:
        return FACTS

    def fact_docs(self) -> Mapping[str, str]:
        return DOCS

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        figures = self.figures
        if figures is None:
            raise SharedUnavailable(self.error)
        age = time.monotonic() - figures.taken_at
        if age > self.max_age:
            raise SharedUnavailable(
                f"shared risk figures are {age:.1f}s old (limit {self.max_age:g}s): {self.error}"
            )
        order = ctx.order
        price = order.price
        if price is None:
            price = ctx.market.last if ctx.market is not None else ctx.portfolio.mark(order.symbol)
        here = figures.symbol(order.symbol)
        used = figures.used
        return {
            "shared.exposure": figures.exposure,
            "shared.reserved": figures.reserved,
            "shared.used": used,
            "shared.used_after": used + order.qty * price,
            "shared.symbol_used": here.exposure + here.reserved,
            "shared.equity": figures.equity,
            "shared.leverage": used / figures.equity if figures.equity > 0 else ZERO,
            "shared.processes": figures.processes,
            "shared.age": age,
        }
