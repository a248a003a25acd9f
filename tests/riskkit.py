"""Shared builders for the risk tests (not a test module)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot4.contracts import FactContext, RiskRules
from bot4.model import MarketData, Order, Portfolio, Position

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"
TS = datetime(2024, 1, 1, tzinfo=UTC)
SEC = 1_000_000_000


class FixedCorrelation(RiskRules):
    """A risk pack whose correlation.max is whatever the test sets."""

    name = "correlation"

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def fact_names(self) -> frozenset[str]:
        return frozenset({"correlation.max"})

    def facts(self, ctx: FactContext) -> Mapping[str, Any]:
        return {"correlation.max": self.value}


def market(symbol: str = "BTC-USDT", last: str | int = 50000, spread: str = "10") -> MarketData:
    p = Decimal(str(last))
    s = Decimal(spread)
    return MarketData(symbol, "test", p - s, p + s, p, Decimal(1), TS)


def order(
    qty: str | float = "0.01",
    price: str | int | None = 50000,
    side: str = "buy",
    stop_loss: str | int | None = "auto",
    leverage: str | int = 1,
    reduce_only: bool = False,
    symbol: str = "BTC-USDT",
    cid: str = "c1",
) -> Order:
    if stop_loss == "auto":
        base = Decimal(str(price if price is not None else 50000))
        stop_loss = str(base * (Decimal("0.98") if side == "buy" else Decimal("1.02")))
    return Order(
        client_order_id=cid,
        symbol=symbol,
        side=side,
        type="limit" if price is not None else "market",
        qty=Decimal(str(qty)),
        price=None if price is None else Decimal(str(price)),
        stop_loss=None if stop_loss is None else Decimal(str(stop_loss)),
        leverage=Decimal(str(leverage)),
        reduce_only=reduce_only,
    )


def portfolio(
    equity: str | int = 100000,
    peak: str | int | None = None,
    positions: Mapping[str, Position] | None = None,
    marks: Mapping[str, str | int] | None = None,
) -> Portfolio:
    return Portfolio(
        cash=Decimal(str(equity)),
        positions=dict(positions or {}),
        marks={k: Decimal(str(v)) for k, v in (marks or {}).items()},
        peak_equity=Decimal(str(peak if peak is not None else equity)),
    )
