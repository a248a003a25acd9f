"""The PNG of ``bot4 rules diff``: prices, with every changed decision marked.

One panel per symbol: the recorded price (sampled, at most a few thousand
points) and a marker per changed decision, shaped and coloured by kind (a
red cross where the new policy refuses what the old approved, a green dot
where it approves what the old refused, ...), and a line at the first
change, after which the new side is re-simulated. matplotlib is optional, as
for the session chart (:mod:`bot4.chart`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bot4.recording_read import read_stream
from bot4.whatif import DiffResult

_STYLE = {
    "approved->rejected": ("x", "#d7191c", "approved -> rejected"),
    "rejected->approved": ("o", "#1a9641", "rejected -> approved"),
    "resized": ("s", "#fdae61", "resized"),
    "rule": ("D", "#7b3294", "another rule"),
    "only-old": ("v", "#404040", "only the old run"),
    "only-new": ("^", "#2b83ba", "only the new run"),
    "action-added": ("P", "#e66101", "risk action added"),
    "action-removed": ("X", "#5e3c99", "risk action removed"),
}
_MAX_POINTS = 4000


def write_diff_chart(result: DiffResult, path: Path) -> Path:
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the chart needs matplotlib: pip install 'bot4[chart]'") from exc

    prices: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for _, topic, tick in read_stream(result.recording, ticks="models"):
        if topic.startswith("market."):
            ts, last = prices[tick.symbol]
            ts.append(
                tick.ts_ns if hasattr(tick, "ts_ns") else int(tick.timestamp.timestamp() * 1e9)
            )
            last.append(float(tick.last))
    symbols = sorted(prices)
    fig = Figure(figsize=(12, 3.2 * max(1, len(symbols)) + 1), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(symbols)), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(
        f"bot4 rules diff: {len(result.changes)} changed decisions\n"
        f"old: {result.old_label}   new: {result.new_label}",
        fontsize=12,
    )
    first = result.first_change_ns
    for ax, symbol in zip(axes, symbols, strict=False):
        ts, last = prices[symbol]
        step = max(1, len(ts) // _MAX_POINTS)
        x = np.array(ts[::step], dtype="datetime64[ns]")
        ax.plot(x, last[::step], color="#2b5c8a", linewidth=0.9, label=symbol)
        index = {t: p for t, p in zip(ts, last, strict=True)}
        for kind, (marker, color, label) in _STYLE.items():
            mine = [c for c in result.changes if c.kind == kind and c.symbol == symbol]
            if not mine:
                continue
            ax.scatter(
                np.array([c.ts_ns for c in mine], dtype="datetime64[ns]"),
                [index.get(c.ts_ns, float("nan")) for c in mine],
                marker=marker,
                color=color,
                s=36,
                zorder=3,
                label=f"{label} ({len(mine)})",
            )
        if first is not None:
            ax.axvline(np.datetime64(first, "ns"), color="#404040", linestyle="--", linewidth=0.8)
        ax.legend(loc="upper left", fontsize=8, ncols=3)
        ax.set_ylabel(symbol)
    fig.savefig(path)
    return path
