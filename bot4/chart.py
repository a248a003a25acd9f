"""A one-page PNG of a session: prices with fills and breaker trips, equity,
drawdown.

matplotlib is an optional dependency (``pip install 'bot4[chart]'``), so it is
imported inside :func:`write_chart`, never when bot4 is imported. The figure
is drawn on an explicit Agg canvas instead of through ``pyplot``: that picks
the Agg backend for this figure alone, without changing the process-wide
backend of a program (a notebook, a GUI) that imported bot4.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot4.model import RiskActionKind, Side
from bot4.report import SessionReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["write_chart"]

WIDTH_IN, HEIGHT_IN, DPI = 12, 9, 100

_BUY = "#1a9641"
_SELL = "#d7191c"
_BREAKER = "#d7191c"
_EMERGENCY = "#7b3294"
_LINE = "#2b5c8a"
_BAND = "#9ecae1"
_THRESHOLD = "#404040"


def _times(ts: Sequence[int]) -> Any:
    """Event times (int ns) as numpy datetime64, which matplotlib plots as
    dates directly (no timezone conversion: the axis is UTC)."""
    import numpy as np

    return np.array(ts, dtype="datetime64[ns]")


def write_chart(
    report: SessionReport,
    path: Path,
    *,
    title: str = "bot4 paper session",
    breaker_drawdown: float | None = None,
) -> Path:
    """Draw ``report`` to a PNG at ``path`` (12 x 9 inches at 100 dpi) and
    return the path. ``breaker_drawdown`` is the drawdown fraction at which the
    circuit breaker trips (0.1 for 10 %); when given it is drawn on the
    drawdown panel. Raises ImportError naming the extra when matplotlib is
    missing."""
    try:
        import matplotlib.dates as mdates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the chart needs matplotlib: pip install 'bot4[chart]'") from exc

    symbols = report.symbols
    equity = report.equity_samples()
    ratios = [3.0] * len(symbols) + [2.0, 1.5]
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    price_axes, eq_ax, dd_ax = list(axes[: len(symbols)]), axes[-2], axes[-1]

    fig.suptitle(
        f"{title}\nPnL {report.pnl:+,.2f}   return {report.return_pct:+.2f}%   "
        f"max drawdown {report.max_drawdown * 100:.2f}%",
        fontsize=13,
    )

    trips = report.breaker_trips
    trip_times = _times(trips)
    actions = report.risk_actions
    fills = report.fills

    for ax, symbol in zip(price_axes, symbols, strict=True):
        samples = report.price_samples(symbol)
        x = _times([s.ts for s in samples])
        ax.fill_between(
            x,
            [s.low for s in samples],
            [s.high for s in samples],
            color=_BAND,
            alpha=0.5,
            linewidth=0,
            label="bucket low-high",
        )
        ax.plot(x, [s.last for s in samples], color=_LINE, linewidth=1.0, label=symbol)
        for side, marker, color, label in (
            (Side.BUY, "^", _BUY, "buy"),
            (Side.SELL, "v", _SELL, "sell"),
        ):
            mine = [f for f in fills if f.symbol == symbol and f.side is side]
            if mine:
                # Thousands of full-size markers would hide the price line.
                size = max(8.0, min(40.0, 4000.0 / len(mine)))
                ax.scatter(
                    _times([f.ts for f in mine]),
                    [float(f.price) for f in mine],
                    marker=marker,
                    color=color,
                    s=size,
                    zorder=3,
                    alpha=0.85,
                    edgecolors="black",
                    linewidths=0.3,
                    label=f"{label} ({len(mine)})",
                )
        closes = [
            (a.ts, float(a.price))
            for a in actions
            if a.kind is RiskActionKind.EMERGENCY_CLOSE
            and a.symbol == symbol
            and a.price is not None
        ]
        if closes:
            ax.scatter(
                _times([ts for ts, _ in closes]),
                [price for _, price in closes],
                marker="X",
                color=_EMERGENCY,
                s=90,
                zorder=4,
                edgecolors="white",
                linewidths=0.6,
                label=f"emergency close ({len(closes)})",
            )
        liquidated = [f for f in fills if f.symbol == symbol and f.liquidity == "liquidation"]
        if liquidated:
            ax.scatter(
                _times([f.ts for f in liquidated]),
                [float(f.price) for f in liquidated],
                marker="P",
                color=_EMERGENCY,
                s=110,
                zorder=5,
                edgecolors="black",
                linewidths=0.8,
                label=f"liquidation ({len(liquidated)})",
            )
        _trip_lines(ax, trip_times)
        ax.set_ylabel(f"{symbol}\nprice")
        _legend(ax, ncols=3)
        ax.grid(alpha=0.3)

    ex = _times([s.ts for s in equity])
    if equity:
        eq_ax.fill_between(
            ex,
            [s.low for s in equity],
            [s.high for s in equity],
            color=_BAND,
            alpha=0.5,
            linewidth=0,
            label="bucket low-high",
        )
        eq_ax.plot(ex, [s.equity for s in equity], color=_LINE, linewidth=1.2, label="equity")
    eq_ax.axhline(
        float(report.tracker.starting_cash),
        color="grey",
        linestyle=":",
        linewidth=1,
        label="starting cash",
    )
    _trip_lines(eq_ax, trip_times, label=False)
    eq_ax.set_ylabel("equity")
    _legend(eq_ax, ncols=3)
    eq_ax.grid(alpha=0.3)

    dd = [-s.drawdown * 100 for s in equity]
    if equity:
        dd_ax.fill_between(ex, dd, 0, color=_SELL, alpha=0.35, linewidth=0)
        dd_ax.plot(ex, dd, color=_SELL, linewidth=0.8, label="drawdown (worst per bucket)")
    if breaker_drawdown is not None:
        dd_ax.axhline(
            -breaker_drawdown * 100,
            color=_THRESHOLD,
            linestyle="-.",
            linewidth=1.2,
            label=f"breaker threshold {breaker_drawdown * 100:.2f}%",
        )
    _trip_lines(dd_ax, trip_times, label=False)
    low = min([*dd, -(breaker_drawdown or 0) * 100, -1.0])
    dd_ax.set_ylim(low * 1.15, 0.5)
    dd_ax.set_ylabel("drawdown %")
    _legend(dd_ax, ncols=2)
    dd_ax.grid(alpha=0.3)

    if not equity:
        eq_ax.text(0.5, 0.5, "no market data", transform=eq_ax.transAxes, ha="center")
    else:
        # Concise labels (the date once, then hours) stay short at any span.
        # matplotlib.dates ships without annotations on these constructors.
        locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
        dd_ax.xaxis.set_major_locator(locator)
        dd_ax.xaxis.set_major_formatter(
            mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
        )
    dd_ax.set_xlabel("time (UTC)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _trip_lines(ax: Axes, trip_times: Any, *, label: bool = True) -> None:
    """Breaker trips as dashed vertical lines; one legend entry however many
    (and none on the lower panels, whose legends would only repeat it)."""
    for i, t in enumerate(trip_times):
        ax.axvline(
            t,
            color=_BREAKER,
            linestyle="--",
            linewidth=1.2,
            alpha=0.9,
            label=f"breaker trip ({len(trip_times)})" if label and i == 0 else None,
        )


def _legend(ax: Axes, *, ncols: int) -> None:
    """A legend when the panel has labelled artists (matplotlib warns on an
    empty one, e.g. the drawdown panel of a run without market data)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, ncols=ncols, framealpha=0.85)
