"""The margin desk reads a ccxt venue's positions (``fetch_positions`` through
the plugin's ``fetch_margin_positions``) in a real ``bot4 run --exchange
ccxt`` against the local fake perpetual venues, both wire formats: the
recorded answers carry the venue's liquidation price and margin for the
position bot4 holds, and nothing fails."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from bot4_ccxt.fakebinance import API_KEY, SECRET

from bot4.recording import read_records

# (fake venue, ccxt exchange id)
VENUES = {"binanceusdm-perp": ("usdm", "binanceusdm"), "bybit-perp": ("bybit", "bybit")}
SYMBOL = "BTC-USDT-PERP"


def _ticks(path: Path, count: int = 120) -> None:
    rows = ["timestamp,symbol,bid,ask,last,volume"]
    for i in range(count):
        price = 100 + 5 * math.sin(i / 6)
        rows.append(
            f"2024-03-01T00:{i // 60:02d}:{i % 60:02d}Z,{SYMBOL},"
            f"{price:.2f},{price + 0.02:.2f},{price:.2f},5"
        )
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("venue", sorted(VENUES))
def test_the_desk_reads_the_ccxt_venues_liquidation_price(tmp_path: Path, venue: str) -> None:
    wire, exchange = VENUES[venue]
    data = tmp_path / "ticks.csv"
    _ticks(data)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot4_ccxt.fakebinance",
            "--venue",
            wire,
            "--port",
            "0",
            "--data",
            str(data),
            "--interval",
            "0.05",
            "--start-on-request",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        config = tmp_path / "session.yaml"
        config.write_text(
            "exchange:\n"
            "  name: ccxt\n"
            f"  exchange: {exchange}\n"
            "  type: swap\n"
            f"  api_url: {url}\n"
            "  api_key_env: DRY_RUN_API_KEY\n"
            "  secret_env: DRY_RUN_SECRET\n"
            f"  symbols: [{SYMBOL}]\n"
            "  poll_interval: 0.02\n"
            "  max_idle: 1.5\n"
            "strategies:\n"
            "  - name: sma_cross\n"
            "    params: {fast: 3, slow: 8, size: '0.5', leverage: '3', "
            f"symbols: [{SYMBOL}],\n"
            "             stop_loss_pct: '20', take_profit_pct: '20'}\n"
        )
        env = {**os.environ, "DRY_RUN_API_KEY": API_KEY, "DRY_RUN_SECRET": SECRET}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "bot4",
                "run",
                "--exchange",
                "ccxt",
                "--config",
                str(config),
                "--out",
                str(tmp_path / "out"),
                "--no-chart",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
    assert run.returncode == 0, run.stderr
    records = [r for _, r in read_records(tmp_path / "out" / "recording.jsonl.gz")]
    assert [r for r in records if r["topic"] == "kernel.error"] == []
    answers = [r["payload"] for r in records if r["topic"] == "exchange.margin"]
    assert answers
    assert not [a for a in answers if a.get("error")]
    rows = [row for a in answers for row in a["rows"]]
    assert rows, "the desk never saw the held position in the venue's answer"
    for row in rows:
        assert row["symbol"] == SYMBOL
        qty, liq = Decimal(row["qty"]), Decimal(row["liquidation_price"])
        # 3x isolated: a long's liquidation price about a third below, a short's above.
        assert (liq < 100) if qty > 0 else (liq > 100)
        assert Decimal(row["margin"]) > 0
