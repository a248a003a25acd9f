"""The catalog's PostgreSQL tables (bot4.data.catalog_pg) on the real test
server, each test in a schema of its own: merges, gaps, trades by id, the
BRIN (or hypertable) layout, all-or-nothing writes, and ``bot4 data list``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import numpy as np
import psycopg
import pyarrow as pa
import pytest

from bot4.cli import main
from bot4.data.catalog import SeriesKey, parse_time
from bot4.data.catalog_pg import PgStore
from tests.journalkit import fresh_schema

pytestmark = pytest.mark.postgres

MINUTE = 60_000
T0 = parse_time("2024-03-01", "t")
KEY = SeriesKey.of("binance", "BTC-USDT", "1m")
TRADES = SeriesKey.of("binance", "ETH-USDT-PERP", "trades")


@pytest.fixture
def url() -> Iterator[str]:
    for schema in fresh_schema():
        from tests.journalkit import PG_URL

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"


def candles(times: list[int], base: float = 100.0) -> pa.Table:
    n = len(times)
    o = base + np.arange(n, dtype=np.float64)
    return pa.table(
        {
            "time": pa.array(times, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "open": o,
            "high": o + 2,
            "low": o - 1,
            "close": o + 1,
            "volume": np.full(n, 0.5),
        }
    )


def trades(ids: list[int], side: str = "buy") -> pa.Table:
    return pa.table(
        {
            "time": pa.array([T0 + i * 250 for i in ids], pa.int64()).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "id": pa.array(ids, pa.int64()),
            "price": [3000.25 + i for i in ids],
            "amount": [0.001 * (i + 1) for i in ids],
            "side": [side] * len(ids),
        }
    )


def test_candles_merge_newer_wins_and_gaps_are_counted(url: str) -> None:
    with PgStore(url) as store:
        assert store.layout in ("brin", "hypertable")
        times = [T0 + i * MINUTE for i in range(20) if i not in (5, 6, 7)]
        assert store.write(KEY, candles(times)) == 17
        assert store.write(KEY, candles([T0 + 10 * MINUTE, T0 + 30 * MINUTE], 900.0)) == 1
        info = store.info(KEY)
        assert info is not None
        assert (info.first, info.last, info.rows) == (T0, T0 + 30 * MINUTE, 18)
        assert (info.gap_count, info.missing) == (2, 3 + 10)
        assert (info.gaps[0].start, info.gaps[0].end) == (T0 + 5 * MINUTE, T0 + 7 * MINUTE)
        assert list(store.times(KEY)) == [*times, T0 + 30 * MINUTE]
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT open FROM bot4_ohlcv WHERE time = to_timestamp(%s / 1000.0)",
                (T0 + 10 * MINUTE,),
            ).fetchone()
            assert row == (900.0,)  # the newer candle won
            if store.layout == "brin":
                indexes = conn.execute(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'bot4_ohlcv'"
                ).fetchall()
                assert any("USING brin" in i[0] for i in indexes)


def test_trades_are_one_row_per_id_and_a_failed_write_stores_nothing(url: str) -> None:
    with PgStore(url) as store:
        assert store.write(TRADES, trades([1, 2, 3])) == 3
        assert store.write(TRADES, trades([2, 3, 4, 4], side="sell")) == 1
        info = store.info(TRADES)
        assert info is not None
        assert info.rows == 4
        assert info.gap_count == 0
        bad = trades([5, 6, 7])
        bad = bad.set_column(4, "side", pa.array(["buy", "sell\x00", "buy"]))
        with pytest.raises(psycopg.Error):
            store.write(TRADES, bad)  # PostgreSQL text holds no NUL: the COPY fails
        again = store.info(TRADES)
        assert again is not None
        assert again.rows == 4  # nothing of the failed batch, not even trade 5
        assert [str(s.key) for s in store.series()] == ["binance/ETH-USDT-PERP/trades"]


def test_data_list_reads_the_database(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with PgStore(url) as store:
        store.write(KEY, candles([T0, T0 + MINUTE, T0 + 3 * MINUTE]))
    assert main(["data", "list", "--catalog", url]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["EXCHANGE", "TYPE", "SYMBOL", "TIMEFRAME"]
    assert row.split()[:4] == ["binance", "spot", "BTC-USDT", "1m"]
    assert row.endswith("1 (1 missing)")
    assert main(["data", "list", "--catalog", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["series"][0]["rows"] == 3


def test_a_database_that_cannot_be_reached_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["data", "list", "--catalog", "postgresql://nobody:s3cret@127.0.0.1:1/x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("bot4: postgresql://nobody:***@127.0.0.1:1/x: cannot connect")
    assert "s3cret" not in err
    assert len(err.strip().splitlines()) == 1


def test_download_to_the_database_resumes_like_the_catalog(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fakehistory = pytest.importorskip("bot4_ccxt.fakehistory", reason="bot4-plugin-ccxt")
    with fakehistory.FakeHistory() as venue:
        argv = [
            "data",
            "download",
            "--exchange",
            "binance",
            "--symbols",
            "BTC-USDT,ETH-USDT-PERP",
            "--since",
            "2024-03-01",
            "--until",
            "2024-03-01T20:00",
            "--to",
            url,
            "--api-url",
            venue.url,
            "--rate-limit",
            "0",
            "--json",
        ]
        assert main(argv) == 0
        first = json.loads(capsys.readouterr().out)["series"]
        assert [(s["new_rows"], s["rows"]) for s in first] == [(1200, 1200), (1200, 1200)]
        before = len(venue.hits_of("GET", "/api/v3/klines"))
        assert main(argv) == 0
        again = json.loads(capsys.readouterr().out)["series"]
        assert [s["new_rows"] for s in again] == [0, 0]
        assert len(venue.hits_of("GET", "/api/v3/klines")) == before  # nothing missing
    with PgStore(url) as store:
        perp = store.info(SeriesKey.of("binance", "ETH-USDT-PERP", "1m"))
        assert perp is not None
        assert perp.key.market_type == "swap"
        assert perp.rows == 1200
