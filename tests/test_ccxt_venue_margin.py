"""The margin desk reads a ccxt venue's positions (``fetch_positions`` through
the plugin's ``fetch_margin_positions``) in a real ``bot4 run --exchange
ccxt`` against the local fake perpetual venues, both wire formats: the
recorded answers carry the venue's liquidation price and margin for the
position bot4 holds, and nothing fails."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from bot4_ccxt.dryrun import dry_run, sine_ticks

from bot4.recording_read import read_records

# (fake venue, ccxt exchange id)
VENUES = {"binanceusdm-perp": ("usdm", "binanceusdm"), "bybit-perp": ("bybit", "bybit")}
SYMBOL = "BTC-USDT-PERP"


@pytest.mark.parametrize("venue", sorted(VENUES))
def test_the_desk_reads_the_ccxt_venues_liquidation_price(tmp_path: Path, venue: str) -> None:
    wire, exchange = VENUES[venue]
    data = tmp_path / "ticks.csv"
    sine_ticks(data, SYMBOL)
    run = dry_run(
        tmp_path / "out",
        data=data,
        wire=wire,
        exchange=exchange,
        kind="swap",
        symbol=SYMBOL,
        leverage="3",
    )
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
