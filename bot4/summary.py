"""What a session report gives: the samples and records it keeps for the
chart and for inspection, and :class:`Summary`, the session in figures with
its text and JSON forms. Built by :class:`bot4.report.SessionReport` (see its
module for how each figure is worked out); kept apart so that a reader of
the figures (the summary file, the chart, ``bot4 rules diff``) needs none of
the accounting.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs

from bot4.model import RiskActionKind, Side

__all__ = [
    "ActionRecord",
    "EquitySample",
    "FillRecord",
    "PriceSample",
    "Summary",
    "TradeRecord",
    "ns_to_datetime",
]

_NS = 1_000_000_000


def ns_to_datetime(ts: int) -> datetime:
    """Event time (int ns since the epoch) as an aware UTC datetime."""
    seconds, ns = divmod(ts, _NS)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=ns // 1000)


# --- records kept for the chart and for inspection -------------------------------
# Samples are floats: they only feed a plot, and a float is a quarter of the
# memory of a Decimal. Fills, trades and every figure of the Summary stay exact.


@attrs.frozen(slots=True)
class PriceSample:
    """One bucket of one symbol: ``ts`` is the time of its last tick."""

    ts: int
    last: float
    low: float
    high: float


@attrs.frozen(slots=True)
class EquitySample:
    """One bucket of the account. ``drawdown`` is the worst in the bucket, as a
    fraction of the peak (0.1 is 10 % below the high-water mark)."""

    ts: int
    equity: float
    low: float
    high: float
    drawdown: float


@attrs.frozen(slots=True)
class FillRecord:
    ts: int
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    liquidity: str = "taker"  # "liquidation": the venue closed the position


@attrs.frozen(slots=True)
class ActionRecord:
    """A risk action; ``price`` is the symbol's last price when it was taken
    (None for book-wide actions or a symbol not yet seen)."""

    ts: int
    kind: RiskActionKind
    symbol: str | None
    rule: str
    reason: str
    price: Decimal | None


@attrs.frozen(slots=True)
class TradeRecord:
    """A closed round trip; ``pnl`` is net of fees."""

    symbol: str
    opened: int
    closed: int
    pnl: Decimal


# --- accumulators ----------------------------------------------------------------


# --- the summary -------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.2f}%"


def _span(seconds: float) -> str:
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _counts(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@attrs.define(kw_only=True)
class Summary:
    """The session in figures. Money is Decimal (quote currency); ``win_rate``,
    ``max_drawdown`` and ``exposure`` are fractions; ``return_pct`` is in
    percent; ``duration`` and ``wall_seconds`` are seconds. Mutable so that a
    caller can fill in ``wall_seconds`` after :meth:`SessionReport.finish`."""

    ticks: int
    fills: int
    trades: int
    wins: int
    win_rate: float
    pnl: Decimal
    return_pct: float
    max_drawdown: float
    fees: Decimal
    starting_cash: Decimal
    final_equity: Decimal
    exposure: float
    avg_gross_exposure: float
    orders_approved: int
    orders_rejected: int
    orders_resized: int
    rejections_by_rule: dict[str, int]
    risk_actions: dict[str, int]
    breaker_trips: int
    strategy_errors: int
    exchange_refusals: int
    protection: str = ""  # the protection mode (bot4.protection)
    protection_failures: int = 0  # protective orders or closes that failed
    liquidations: int = 0  # positions the venue liquidated
    margin_added: Decimal = Decimal(0)  # collateral ADD_MARGIN moved into positions
    funding_paid: Decimal = Decimal(0)  # funding the account paid (negative: received)
    start: datetime | None
    end: datetime | None
    duration: float
    wall_seconds: float = 0.0

    @property
    def ticks_per_second(self) -> float:
        return self.ticks / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: Decimals as strings (exact), datetimes as ISO 8601."""
        out: dict[str, Any] = {}
        for field in attrs.fields(Summary):
            value = getattr(self, field.name)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, dict):
                value = dict(sorted(value.items()))
            out[field.name] = value
        out["ticks_per_second"] = self.ticks_per_second
        return out

    def as_text(self) -> str:
        """A block for the terminal: one figure per line, labels aligned."""
        if self.start is not None and self.end is not None:
            period = (
                f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"
                f" ({_span(self.duration)})"
            )
        else:
            period = "no market data"
        speed = (
            f" ({self.ticks_per_second:,.0f} ticks/s, {self.wall_seconds:.2f} s wall)"
            if self.wall_seconds > 0
            else ""
        )
        win = f"{self.wins} won, win rate {_pct(self.win_rate)}" if self.trades else "none closed"
        rows = [
            ("period", period),
            ("ticks", f"{self.ticks:,}{speed}"),
            ("starting cash", _money(self.starting_cash)),
            ("final equity", _money(self.final_equity)),
            ("PnL", f"{self.pnl:+,.2f} ({self.return_pct:+.2f}%)"),
            ("fees", _money(self.fees)),
            ("max drawdown", _pct(self.max_drawdown)),
            ("trades", f"{self.trades:,} ({win})"),
            ("fills", f"{self.fills:,}"),
            (
                "exposure",
                f"{_pct(self.exposure)} of the time, "
                f"average gross {self.avg_gross_exposure:.2f}x equity",
            ),
            (
                "orders",
                f"{self.orders_approved:,} approved, {self.orders_rejected:,} rejected, "
                f"{self.orders_resized:,} resized",
            ),
            ("rejections", _counts(self.rejections_by_rule)),
            ("risk actions", _counts(self.risk_actions)),
            ("breaker trips", f"{self.breaker_trips:,}"),
            (
                "protection",
                f"{self.protection or 'none'}, {self.protection_failures:,} failures",
            ),
            (
                "errors",
                f"{self.strategy_errors:,} strategy, {self.exchange_refusals:,} exchange refusals",
            ),
        ]
        if self.liquidations or self.margin_added or self.funding_paid:
            # Only for a session whose venue has a margin account that acted.
            rows.insert(
                -3,
                (
                    "margin",
                    f"{self.liquidations:,} liquidations, {_money(self.margin_added)} added, "
                    f"funding paid {self.funding_paid:+,.2f}",
                ),
            )
        width = max(len(label) for label, _ in rows)
        return "\n".join(["bot4 session summary"] + [f"  {k:<{width}}  {v}" for k, v in rows])


# --- the report ------------------------------------------------------------------
