"""`bot4 run --exchange ccxt --config FILE` against the fake Binance started as
its own process from a data file: the dry-run recipe of the README, end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bot4_ccxt.fakebinance import API_KEY, SECRET

from bot4.recording import read_records

# (fake venue, ccxt exchange id, type, symbol, leverage)
VENUES = {
    "binance-spot": ("spot", "binance", "spot", "BTC-USDT", "1"),
    "binanceusdm-perp": ("usdm", "binanceusdm", "swap", "BTC-USDT-PERP", "3"),
    "bybit-perp": ("bybit", "bybit", "swap", "BTC-USDT-PERP", "3"),
    "bybit-spot": ("bybit-spot", "bybit", "spot", "BTC-USDT", "1"),
}


def _ticks(path: Path, count: int = 120, symbol: str = "BTC-USDT") -> None:
    rows = ["timestamp,symbol,bid,ask,last,volume"]
    for i in range(count):
        price = 100 + 5 * math.sin(i / 6)
        rows.append(
            f"2024-03-01T00:{i // 60:02d}:{i % 60:02d}Z,{symbol},"
            f"{price:.2f},{price + 0.02:.2f},{price:.2f},5"
        )
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("venue", sorted(VENUES))
def test_bot4_run_against_the_fake_binance(tmp_path: Path, venue: str) -> None:
    """Each fake venue: the run ends by itself at the data's end (max_idle)."""
    wire, exchange, kind, symbol, leverage = VENUES[venue]
    data = tmp_path / "ticks.csv"
    _ticks(data, symbol=symbol)
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
            # The ticks start when bot4 first asks for a quote: a bot4 slow to
            # start on a loaded machine would otherwise miss them.
            "--start-on-request",
            # A spot account holding BTC: the strategy's sells are not refused.
            "--hold",
            "BTC=100",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        config = tmp_path / "session.yaml"
        config.write_text(
            "exchange:\n"
            "  name: ccxt\n"
            f"  exchange: {exchange}\n"
            f"  type: {kind}\n"
            f"  api_url: {url}\n"
            "  api_key_env: DRY_RUN_API_KEY\n"
            "  secret_env: DRY_RUN_SECRET\n"
            f"  symbols: [{symbol}]\n"
            "  poll_interval: 0.02\n"
            "  max_idle: 1.5\n"
            "strategies:\n"
            "  - name: sma_cross\n"
            f"    params: {{fast: 3, slow: 8, size: '0.5', leverage: '{leverage}', "
            f"symbols: [{symbol}],\n"
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
    summary = json.loads(run.stdout)
    assert summary["ticks"] > 10
    assert summary["orders_approved"] >= 1
    assert summary["fills"] >= 1
    errors = [
        record
        for _, record in read_records(tmp_path / "out" / "recording.jsonl.gz")
        if record["topic"] == "kernel.error"
    ]
    assert errors == []
    assert summary["exchange_refusals"] == 0
    assert API_KEY not in run.stdout + run.stderr
    assert SECRET not in run.stdout + run.stderr


def test_exchange_option_keeps_the_config_settings(tmp_path: Path) -> None:
    from bot4.session import load_config

    path = tmp_path / "c.yaml"
    path.write_text("exchange:\n  name: ccxt\n  exchange: binance\n  symbols: [BTC-USDT]\n")
    config = load_config(path, {"exchange": "ccxt"})
    assert config.exchange == "ccxt"
    assert config.exchange_params == {"exchange": "binance", "symbols": ["BTC-USDT"]}
    other = load_config(path, {"exchange": "paper"})  # another plugin: its settings do not apply
    assert other.exchange == "paper"
    assert other.exchange_params == {}
