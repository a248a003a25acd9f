"""``bot4 run --data catalog:...``: the same kernel over stored candles, the same
ticks as the same candles in a CSV file, and the range options."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from bot4.cli import main
from bot4.recording_read import read_records

ROWS = 1500  # 25 hours of one-minute candles


def _write_candles(path: Path) -> None:
    rng = random.Random(7)
    price = 5000000  # cents
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(ROWS):
        o = price
        c = max(100, o + rng.randint(-400, 400) * 25)
        h = max(o, c) + rng.randint(0, 3000)
        lo = min(o, c) - rng.randint(0, 3000)
        price = c
        day, minute = divmod(i, 1440)
        stamp = f"2024-03-{1 + day:02d}T{minute // 60:02d}:{minute % 60:02d}:00Z"
        lines.append(
            f"{stamp},{o / 100:g},{h / 100:g},{lo / 100:g},{c / 100:g},{rng.randint(1, 90) / 10:g}"
        )
    path.write_text("\n".join(lines) + "\n")


# What the session decided and did. Not max_drawdown and the exposure figures:
# the report reads the book when an event is delivered, which varies between
# two runs of the same file (by a few parts in a million).
DECIDED = (
    "ticks",
    "fills",
    "trades",
    "wins",
    "pnl",
    "fees",
    "final_equity",
    "orders_approved",
    "orders_rejected",
    "orders_resized",
    "rejections_by_rule",
    "risk_actions",
    "start",
    "end",
)


def _summary(out: Path) -> dict[str, Any]:
    doc = json.loads((out / "summary.json").read_text())
    return {k: doc[k] for k in DECIDED}


def test_a_catalog_backtest_sees_what_the_same_candles_in_a_csv_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "BTC-USDT.csv"
    _write_candles(csv_path)
    cat = str(tmp_path / "cat")
    assert main(["data", "import", str(csv_path), "--catalog", cat]) == 0
    common = ["--no-chart", "--json"]
    assert main(["run", "--data", str(csv_path), "--out", str(tmp_path / "a"), *common]) == 0
    code = main(
        [
            "run",
            "--data",
            "catalog:csv/BTC-USDT/1m",
            "--catalog",
            cat,
            "--out",
            str(tmp_path / "b"),
            *common,
        ]
    )
    assert code == 0
    capsys.readouterr()
    a, b = _summary(tmp_path / "a"), _summary(tmp_path / "b")
    assert a["ticks"] == ROWS * 4
    # Trades, fills, PnL and fees to the last digit, rejections by rule.
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["fills"] > 0  # the comparison compares trades, not two empty runs


def test_from_and_to_bound_the_run_and_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "BTC-USDT.csv"
    _write_candles(csv_path)
    cat = str(tmp_path / "cat")
    assert main(["data", "import", str(csv_path), "--catalog", cat]) == 0
    out = tmp_path / "r"
    argv = ["run", "--data", "catalog:csv/BTC-USDT/1m", "--catalog", cat, "--out", str(out)]
    window = ["--from", "2024-03-01T10:00", "--to", "2024-03-01T12:00"]
    assert main([*argv, *window, "--no-chart", "--json"]) == 0
    capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == 120 * 4
    _, header = next(iter(read_records(out / "recording.jsonl.gz")))
    assert "catalog:csv/BTC-USDT/1m?from=2024-03-01T10:00:00Z&to=2024-03-01T12:00:00Z" in (
        json.dumps(header)
    )
    # A range with nothing stored is the user's error: one line, exit 2.
    code = main([*argv, "--from", "2025-01-01", "--no-chart"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds no csv/BTC-USDT/1m in the range" in err
