"""bot4 risk pack ``correlation``: the fact ``correlation.max``.

Returns are simple returns of the ``last`` price between consecutive ticks of
a symbol, kept in a bounded window (``window`` returns, default 200) so memory
and the cost of one computation stay fixed. Correlation is Pearson's over the
most recent returns both symbols have (aligned by position from the newest,
which assumes similar tick cadence; bot4 feeds bars or ticks of one venue).

Floats are fine here: a correlation is a statistic compared against a
threshold like 0.7, not money; inputs are converted with ``float()`` (nearest
double) and the result is clamped to [-1, 1] against rounding.

``correlation.max`` is 0 when there is nothing to correlate with (no other
position in the same direction) or not enough data (fewer than
``min_samples`` common returns, or a flat series with zero variance): the
absence of evidence is not treated as correlation, so a fresh session is not
blocked. Rule authors who want the opposite can add a rule on their own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import bot4
from bot4.contracts import FactContext, RiskRules
from bot4.hookspecs import RegisterRiskRules
from bot4.model import MarketData

BOT4_API = 1
FACT = "correlation.max"


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation, or None when undefined (too short or no variance)."""
    n = min(len(xs), len(ys))
    if n < 2:
        return None
    xs, ys = xs[-n:], ys[-n:]
    mx = math.fsum(xs) / n
    my = math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    syy = math.fsum((y - my) ** 2 for y in ys)
    if sxx <= 0.0 or syy <= 0.0:
        return None
    sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    r = sxy / math.sqrt(sxx * syy)
    if not math.isfinite(r):
        return None
    return max(-1.0, min(1.0, r))


class CorrelationPack(RiskRules):
    name = "correlation"

    def __init__(self, window: int = 200, min_samples: int = 20) -> None:
        if window < 2 or min_samples < 2 or min_samples > window:
            raise ValueError("need 2 <= min_samples <= window")
        self.window = window
        self.min_samples = min_samples
        self._returns: dict[str, deque[float]] = {}
        # Per symbol: [last price, its returns] (the deque is _returns' own):
        # one look-up a tick, the cost of which every tick of a session pays.
        self._last: dict[str, list[Any]] = {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CorrelationPack:
        return cls(
            window=int(config.get("window", 200)), min_samples=int(config.get("min_samples", 20))
        )

    def fact_names(self) -> frozenset[str]:
        return frozenset({FACT})

    def fact_types(self) -> Mapping[str, str]:
        return {FACT: "number"}

    def fact_docs(self) -> Mapping[str, str]:
        return {
            FACT: "highest Pearson correlation (-1..1) of the order's symbol's returns with "
            "a position held in the same direction; 0 without enough data"
        }

    def on_market_data(self, tick: MarketData) -> None:
        price = tick.last_float  # float(tick.last), filled by the loader where it can be
        state = self._last.get(tick.symbol)
        if state is None:  # the symbol's first tick: no return yet
            series: deque[float] = deque(maxlen=self.window)
            self._returns[tick.symbol] = series
            self._last[tick.symbol] = [price, series]
            return
        previous = state[0]
        state[0] = price
        if previous > 0.0:
            state[1].append(price / previous - 1.0)

    def correlation(self, a: str, b: str) -> float | None:
        xs, ys = self._returns.get(a), self._returns.get(b)
        if xs is None or ys is None or min(len(xs), len(ys)) < self.min_samples:
            return None
        return pearson(list(xs), list(ys))

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        order = ctx.order
        worst = 0.0
        for symbol, position in ctx.portfolio.positions.items():
            if symbol == order.symbol or position.qty == 0:
                continue
            same_direction = (position.qty > 0) == (order.side.sign > 0)
            if not same_direction:
                continue
            r = self.correlation(order.symbol, symbol)
            if r is not None and r > worst:
                worst = r
        return {FACT: worst}

    def rule_files(self) -> tuple[()]:
        # The correlation rule is part of bot4's default policy
        # (rules/30-correlation.yaml); this pack only provides the fact.
        return ()


def factory(config: Mapping[str, Any]) -> CorrelationPack:
    return CorrelationPack.from_config(config)


@bot4.hookimpl
def register_risk_rules(register: RegisterRiskRules) -> None:
    register(
        "correlation",
        factory,
        description="correlation.max: largest return correlation with positions held the same way",
    )
