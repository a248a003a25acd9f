"""`bot4 run --exchange ccxt --config FILE` against the fake Binance started as
its own process from a data file: the dry-run recipe of the README, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bot4_ccxt.dryrun import dry_run, sine_ticks
from bot4_ccxt.fakebinance import API_KEY, SECRET

from bot4.recording_read import read_records

# (fake venue, ccxt exchange id, type, symbol, leverage)
VENUES = {
    "binance-spot": ("spot", "binance", "spot", "BTC-USDT", "1"),
    "binanceusdm-perp": ("usdm", "binanceusdm", "swap", "BTC-USDT-PERP", "3"),
    "bybit-perp": ("bybit", "bybit", "swap", "BTC-USDT-PERP", "3"),
    "bybit-spot": ("bybit-spot", "bybit", "spot", "BTC-USDT", "1"),
}


@pytest.mark.parametrize("venue", sorted(VENUES))
def test_bot4_run_against_the_fake_binance(tmp_path: Path, venue: str) -> None:
    """Each fake venue: the run ends by itself at the data's end (max_idle)."""
    wire, exchange, kind, symbol, leverage = VENUES[venue]
    data = tmp_path / "ticks.csv"
    sine_ticks(data, symbol)
    run = dry_run(
        tmp_path / "out",
        data=data,
        wire=wire,
        exchange=exchange,
        kind=kind,
        symbol=symbol,
        leverage=leverage,
        hold=["BTC=100"],  # a spot account holding BTC: the strategy's sells are not refused
    )
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
