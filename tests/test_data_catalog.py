"""The Parquet market-data catalog: layout, merges, gaps, manifest, hostile
names and crashes mid-write, the CSV import's all-or-nothing errors, and
candles turned into ticks (bot4.data.catalog*, bot4 data list/import)."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from bot4_paper import PaperEngine

from bot4.cli import main
from bot4.data.catalog import (
    OHLCV_SCHEMA,
    Catalog,
    SeriesKey,
    exact_float,
    parse_time,
)
from bot4.data.catalog_feed import (
    candle_tick_arrays,
    iter_catalog_ticks,
    parse_spec,
)
from bot4.errors import ConfigError
from bot4.model import Fill, Order

MINUTE = 60_000
T0 = parse_time("2024-03-01", "t")
KEY = SeriesKey.of("binance", "BTC-USDT", "1m")


def candles(times: list[int] | np.ndarray[Any, Any], base: float = 100.0) -> pa.Table:
    t = np.asarray(times, dtype=np.int64)
    n = len(t)
    o = base + np.arange(n, dtype=np.float64)
    return pa.table(
        {
            "time": pa.array(t).cast(pa.timestamp("ms", tz="UTC")),
            "open": o,
            "high": o + 2,
            "low": o - 1,
            "close": o + 1,
            "volume": np.full(n, 4.0),
        }
    )


def test_rows_land_in_day_partitions_readable_as_one_hive_dataset(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    times = T0 + np.arange(0, 3 * 1440) * MINUTE
    assert cat.write(KEY, candles(times)) == 3 * 1440
    base = tmp_path / "exchange=binance/type=spot/symbol=BTC-USDT/timeframe=1m"
    days = sorted(p.name for p in base.iterdir())
    assert days == ["date=2024-03-01", "date=2024-03-02", "date=2024-03-03"]
    meta = pq.ParquetFile(base / "date=2024-03-02/data.parquet")
    assert meta.schema_arrow.equals(OHLCV_SCHEMA, check_metadata=False)
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"
    table = ds.dataset(tmp_path, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 3 * 1440
    assert set(table.column("symbol").to_pylist()) == {"BTC-USDT"}


def test_merge_drops_duplicates_and_the_newer_candle_wins(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.write(KEY, candles(T0 + np.arange(10) * MINUTE))
    again = candles(T0 + np.arange(5, 15) * MINUTE, base=500.0)  # overlaps 5..9
    assert cat.write(KEY, again) == 5
    rows = pa.Table.from_batches(list(cat.batches(KEY)))
    assert rows.num_rows == 15
    assert rows.column("open").to_pylist()[:6] == [100.0, 101.0, 102.0, 103.0, 104.0, 500.0]
    ts = rows.column("time").cast(pa.int64()).to_numpy()
    assert (np.diff(ts) == MINUTE).all()


def test_unsorted_rows_across_midnight_are_sorted_per_day(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    times = [T0 + 1440 * MINUTE + MINUTE, T0 + 5 * MINUTE, T0 + 1440 * MINUTE, T0]
    cat.write(KEY, candles(times))
    assert list(cat.times(KEY)) == sorted(times)


def test_manifest_reports_rows_first_last_and_gaps(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    times = [T0 + i * MINUTE for i in range(100) if not 10 <= i < 13 and i != 50]
    cat.write(KEY, candles(times))
    (info,) = cat.series()
    assert (info.first, info.last, info.rows) == (T0, T0 + 99 * MINUTE, 96)
    assert info.gap_count == 2
    assert info.missing == 4
    assert (info.gaps[0].start, info.gaps[0].end) == (T0 + 10 * MINUTE, T0 + 12 * MINUTE)
    manifest = json.loads((tmp_path / "_manifest.json").read_text())
    assert manifest["series"][0]["gaps"] == 2
    # Rebuilt from the files when the manifest is gone.
    (tmp_path / "_manifest.json").unlink()
    assert cat.series() == [info]


def test_batches_stream_a_time_range(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    cat.write(KEY, candles(T0 + np.arange(3 * 1440) * MINUTE))
    start, end = T0 + 1000 * MINUTE, T0 + 2000 * MINUTE
    got = np.concatenate(
        [b.column(0).cast(pa.int64()).to_numpy() for b in cat.batches(KEY, start, end)]
    )
    assert got[0] == start
    assert got[-1] == end - MINUTE
    assert len(got) == 1000
    assert len(cat.day_files(KEY, start, end)) == 2


@pytest.mark.parametrize(
    ("exchange", "symbol", "timeframe"),
    [
        ("../etc", "BTC-USDT", "1m"),
        ("binance", "../../BTC-USDT", "1m"),
        ("binance", "BTC-USDT/..", "1m"),
        ("binance", "BTC-USDT", "1m/../../x"),
        ("binance", "BTC-USDT", "0m"),
        ("Binance", "BTC-USDT", "1m"),
    ],
)
def test_names_that_could_leave_the_catalog_are_refused(
    exchange: str, symbol: str, timeframe: str
) -> None:
    with pytest.raises(ConfigError):
        SeriesKey.of(exchange, symbol, timeframe)


def test_a_crash_while_writing_leaves_the_old_day_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Catalog(tmp_path)
    cat.write(KEY, candles(T0 + np.arange(10) * MINUTE))

    def half_written(table: pa.Table, where: Path, **kw: Any) -> None:
        Path(where).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_written)
    with pytest.raises(OSError, match="disk full"):
        cat.write(KEY, candles(T0 + np.arange(5, 20) * MINUTE))
    monkeypatch.undo()
    assert len(cat.times(KEY)) == 10  # the old file, whole
    assert cat.series()[0].rows == 10


def test_floats_are_stored_only_when_they_give_the_decimal_back() -> None:
    assert exact_float("62345.12") == 62345.12
    assert exact_float("0.00001234") == 0.00001234
    assert exact_float("1e-8") == 1e-8
    assert exact_float("0.12345678901234567") is None  # 17 digits: would be rounded
    assert exact_float("nan") is None
    assert exact_float("inf") is None
    assert exact_float("abc") is None


# --- import ------------------------------------------------------------------------


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_then_list_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "BTCUSDT-1m-2024-03.csv"
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(120):
        if i in (30, 31):
            continue  # two missing minutes
        lines.append(f"2024-03-01T{i // 60:02d}:{i % 60:02d}:00Z,100.5,101,100,100.25,1.5")
    csv_path.write_text("\n".join(lines) + "\n")
    cat = str(tmp_path / "cat")
    code, out, err = _run(capsys, "data", "import", str(csv_path), "--catalog", cat)
    assert code == 0, err
    assert "imported 118 rows" in out
    assert "csv/BTC-USDT/1m" in out
    code, out, _ = _run(capsys, "data", "list", "--catalog", cat)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "EXCHANGE", "TYPE", "SYMBOL", "TIMEFRAME", "FIRST", "LAST", "ROWS", "GAPS"
    ]  # fmt: skip
    assert row.split()[:4] == ["csv", "spot", "BTC-USDT", "1m"]
    assert "2024-03-01 00:00" in row
    assert "2024-03-01 01:59" in row
    assert "1 (2 missing)" in row
    code, out, _ = _run(capsys, "data", "list", "--catalog", cat, "--json")
    doc = json.loads(out)["series"][0]
    assert (doc["rows"], doc["gaps"], doc["missing"]) == (118, 1, 2)
    assert doc["first"] == "2024-03-01T00:00:00Z"


def test_import_binance_klines_and_trades(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "cat")
    klines = tmp_path / "ETHUSDT-5m-2024-03-01.csv"
    start = T0
    klines.write_text(
        "".join(
            f"{start + i * 300_000},3000.1,3001,2999.5,3000.7,12.5,{start + i * 300_000 + 299_999},"
            "0,10,0,0,0\n"
            for i in range(12)
        )
    )
    from bot4.data.catalog_import import import_csv

    res = import_csv(cat, klines, exchange="binance")
    assert str(res.key) == "binance/ETH-USDT/5m"
    assert res.rows == 12
    trades = tmp_path / "trades.csv"
    trades.write_text(
        "time,id,price,qty,side\n"
        "2024-03-01T00:00:00.250Z,7,50000.5,0.01,buy\n"
        "2024-03-01T00:00:00.250Z,8,50000.4,0.02,sell\n"
        "2024-03-01T00:00:01Z,9,50001,0.5,buy\n"
    )
    res = import_csv(cat, trades, exchange="binance", symbol="BTC-USDT")
    assert str(res.key) == "binance/BTC-USDT/trades"
    assert res.new_rows == 3
    again = import_csv(cat, trades, exchange="binance", symbol="BTC-USDT")
    assert again.new_rows == 0  # same trade ids: duplicates dropped
    table = pa.Table.from_batches(list(cat.batches(res.key)))
    assert table.column("id").to_pylist() == [7, 8, 9]
    assert table.column("side").to_pylist() == ["buy", "sell", "buy"]


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ("2024-03-01T00:02:00Z,100,99,98,99.5,1", ":4: column 'high': '99' is below"),
        ("2024-03-01T00:02:00Z,100,101,98,abc,1", ":4: column 'close': 'abc' is not a number"),
        ("2024-03-01T00:02:00Z,100,101,98,NaN,1", ":4: column 'close': 'NaN' is not a finite"),
        ("2024-03-01T00:02:00Z,100,101,98,99,-1", ":4: column 'volume': '-1' must not be neg"),
        ("2024-03-01T00:01:00Z,100,101,98,99,1", ":4: column 'timestamp': '2024-03-01T00:01:00Z"),
        ("2024-03-01T00:02:00Z,0.12345678901234567,101,0.1,99,1", ":4: column 'open'"),
        ("yesterday,100,101,98,99,1", ":4: column 'timestamp': 'yesterday' is not an ISO"),
        ("2024-03-01T00:02:00Z,100,101", ":4: expected 6 columns, found 3"),
    ],
)
def test_a_bad_row_is_one_line_with_file_line_column_and_nothing_is_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], row: str, where: str
) -> None:
    good = tmp_path / "BTC-USDT.csv"
    good.write_text("timestamp,open,high,low,close,volume\n2024-03-01T00:00:00Z,1,2,1,2,1\n")
    cat = str(tmp_path / "cat")
    assert _run(capsys, "data", "import", str(good), "--catalog", cat, "--timeframe", "1m")[0] == 0
    bad = tmp_path / "BTC-USDT-bad.csv"
    bad.write_text(
        "timestamp,open,high,low,close,volume\n"
        "2024-03-01T00:00:00Z,100,101,98,99,1\n"
        "2024-03-01T00:01:00Z,100,101,98,99,1\n" + row + "\n"
        "2024-03-01T00:03:00Z,100,101,98,99,1\n"
    )
    code, _out, err = _run(
        capsys, "data", "import", str(bad), "--catalog", cat, "--symbol", "BTC-USDT"
    )
    assert code == 2
    assert err.startswith(f"bot4: {bad}{where}"), err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    # The last good state stays: the one candle of the good file.
    info = Catalog(cat).series()
    assert [(s.rows, s.first) for s in info] == [(1, T0)]
    assert len(Catalog(cat).times(info[0].key)) == 1


def test_a_tick_file_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ticks = tmp_path / "BTC-USDT.csv"
    ticks.write_text("timestamp,bid,ask,last,volume\n2024-03-01T00:00:00Z,1,2,1,1\n")
    code, _, err = _run(capsys, "data", "import", str(ticks), "--catalog", str(tmp_path / "c"))
    assert code == 2
    assert "bid/ask" in err
    assert f"{ticks}:1:" in err


# --- candles as ticks --------------------------------------------------------------


def test_candles_become_four_ticks_in_the_order_their_direction_implies(tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    table = pa.table(
        {
            "time": pa.array([T0, T0 + MINUTE], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "open": [100.0, 103.0],
            "high": [105.0, 104.0],
            "low": [95.0, 99.5],
            "close": [103.0, 100.0],
            "volume": [2.0, 1.0],
        }
    )
    cat.write(KEY, table)
    ticks = list(iter_catalog_ticks(cat, parse_spec("catalog:binance/BTC-USDT/1m")))
    # Rising: open, low, high, close. Falling: open, high, low, close.
    assert [t.last for t in ticks] == [
        Decimal(x) for x in ("100", "95", "105", "103", "103", "104", "99.5", "100")
    ]
    assert [int(t.timestamp.timestamp()) - T0 // 1000 for t in ticks] == [
        0, 15, 30, 45, 60, 75, 90, 105,
    ]  # fmt: skip
    assert all(t.bid == t.ask == t.last for t in ticks)
    assert ticks[0].volume == Decimal("0.5")
    assert ticks[4].volume == Decimal("0.25")
    # The columnar form is the same rule.
    batch = next(cat.batches(KEY))
    times, prices, sizes = candle_tick_arrays(batch, MINUTE)
    assert [Decimal(repr(float(p))) for p in prices] == [t.last for t in ticks]
    assert [int(x) // 1000 for x in times] == [
        int(t.timestamp.timestamp() * 1_000_000) for t in ticks
    ]
    assert list(sizes) == [0.5] * 4 + [0.25] * 4


def test_a_paper_stop_inside_a_candle_fires_although_the_candle_closes_above_it(
    tmp_path: Path,
) -> None:
    cat = Catalog(tmp_path)
    table = pa.table(
        {
            "time": pa.array([T0, T0 + MINUTE], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            "open": [100.0, 100.0],
            "high": [100.5, 101.0],
            "low": [99.8, 94.0],  # the second candle dips to 94 and closes at 100.5
            "close": [100.0, 100.5],
            "volume": [400.0, 400.0],
        }
    )
    cat.write(KEY, table)
    engine = PaperEngine(None, balance=Decimal(100000), slippage_bps=Decimal(0))
    ticks = iter_catalog_ticks(cat, parse_spec("catalog:binance/BTC-USDT/1m"), exchange="paper")
    first = next(ticks)
    engine.on_tick(first)
    engine.place(Order("buy1", "BTC-USDT", "buy", "market", Decimal(1)), first.timestamp)
    engine.place(Order("stop1", "BTC-USDT", "sell", "stop_loss", Decimal(1), Decimal(95)))
    fills: list[Fill] = []
    for tick in ticks:
        fills += [e for e in engine.on_tick(tick) if isinstance(e, Fill)]
    stop_fills = [f for f in fills if f.client_order_id == "stop1"]
    assert stop_fills, "the stop at 95 must fire on the candle whose low is 94"
    # Rising candle: open, low (94, at +15 s), high, close: the stop fires on the low.
    assert stop_fills[0].timestamp == first.timestamp + timedelta(seconds=75)


def test_spec_parsing_and_its_errors() -> None:
    spec = parse_spec("catalog:binance/BTC-USDT,ETH-USDT-PERP/1m?from=2024-03-01&to=2024-03-02")
    assert [str(k) for k in spec.keys] == ["binance/BTC-USDT/1m", "binance/ETH-USDT-PERP/1m"]
    assert spec.keys[1].market_type == "swap"
    assert (spec.start, spec.end) == (T0, T0 + 1440 * MINUTE)
    assert parse_spec(spec.text()) == spec
    over = parse_spec(spec.text(), start="2024-03-01T12:00")
    assert over.start == T0 + 720 * MINUTE
    for bad in (
        "catalog:binance/BTC-USDT",
        "catalog:binance/BTC-USDT/1m?since=2024",
        "catalog:binance/BTC-USDT/1m?from=2024-03-02&to=2024-03-01",
        "catalog:binance/BTC-USDT/1m?from=soon",
    ):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_a_damaged_day_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cat = Catalog(tmp_path)
    cat.write(KEY, candles(T0 + np.arange(3 * 1440) * MINUTE))
    (victim,) = cat.day_files(KEY, T0 + 1440 * MINUTE, T0 + 2 * 1440 * MINUTE)
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: no footer
    code, _, err = _run(capsys, "data", "list", "--catalog", str(tmp_path), "--rescan")
    assert code == 2
    assert err.startswith(f"bot4: {victim}: not a readable Parquet file")
    assert len(err.strip().splitlines()) == 1
    code, _, err = _run(
        capsys,
        "run",
        "--catalog",
        str(tmp_path),
        "--data",
        "catalog:binance/BTC-USDT/1m",
        "--no-chart",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 2
    assert f"bot4: {victim}: not a readable Parquet file" in err
    assert "Traceback" not in err


def test_a_file_that_is_not_gzip_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "BTC-USDT.csv.gz"
    junk.write_bytes(b"\xc7\x0c not gzip at all" * 10)
    code, _, err = _run(capsys, "data", "import", str(junk), "--catalog", str(tmp_path / "c"))
    assert code == 2
    assert err.startswith(f"bot4: {junk}:1: unreadable: Not a gzipped file")


def _reference_ticks(table: pa.Table, spread_bps: int) -> list[Any]:
    """The candle rule, tick by tick through MarketData's validators."""
    from datetime import UTC, datetime

    from bot4.model import MarketData

    def dec(x: float) -> Decimal:
        d = Decimal(repr(x))
        return d.quantize(Decimal(1)) if d == d.to_integral_value() else d

    half = Decimal(spread_bps) / Decimal(20000)
    out = []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows = table.to_pylist()
    for row in rows:
        ms = int(row["time"].timestamp() * 1000)
        o, h, lo, c = row["open"], row["high"], row["low"], row["close"]
        for k, x in enumerate((o, lo, h, c) if c >= o else (o, h, lo, c)):
            p = dec(x)
            out.append(
                MarketData(
                    symbol="BTC-USDT",
                    exchange="data",
                    bid=p - p * half if half else p,
                    ask=p + p * half if half else p,
                    last=p,
                    volume=dec(row["volume"]) / 4,
                    timestamp=epoch + timedelta(microseconds=ms * 1000 + k * MINUTE * 250),
                )
            )
    return out


@pytest.mark.parametrize("spread_bps", [0, 25, 15_000])
def test_catalog_ticks_are_what_the_validators_build(
    tmp_path: Path, spread_bps: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog's ticks are built without MarketData's validators for a
    batch checked whole (finite prices above zero, sizes not negative, the
    first tick validated): equal, tick for tick, to the validated ones, with
    the same nanoseconds and the stored double as ``last_float``."""
    rng = np.random.default_rng(7)
    n = 3_000
    digits = rng.integers(0, 6, n)
    prices = rng.uniform(0.5, 70_000, n)
    base = np.array([round(x, int(d)) for x, d in zip(prices, digits, strict=True)])
    base[::7] = np.round(base[::7])  # whole numbers: "50000", not "50000.0"
    base[5] = 0.1 + 0.2  # a double with a long repr
    wiggle = np.round(rng.uniform(0, 3, (4, n)), 2)
    table = pa.table(
        {
            "time": pa.array(T0 + MINUTE * np.arange(n, dtype=np.int64)).cast(
                pa.timestamp("ms", tz="UTC")
            ),
            "open": base,
            "high": base + wiggle[0] + wiggle[1],
            "low": np.maximum(base - wiggle[2], 0.01),
            "close": base + wiggle[3] - 1.5,
            "volume": np.where(np.arange(n) % 11 == 0, 0.0, np.round(rng.uniform(0, 9, n), 3)),
        }
    )
    table = table.set_column(4, "close", pa.array(np.maximum(table["close"].to_numpy(), 0.01)))
    cat = Catalog(tmp_path)
    cat.write(KEY, table)
    spec = parse_spec("catalog:binance/BTC-USDT/1m")
    from bot4.model import MarketData

    validated = []
    check = MarketData.__attrs_post_init__

    def counting(self: MarketData) -> None:
        validated.append(1)
        check(self)

    monkeypatch.setattr(MarketData, "__attrs_post_init__", counting)
    ticks = list(iter_catalog_ticks(cat, spec, spread_bps=spread_bps))
    batches = len(list(cat.batches(KEY)))
    # One validated tick a batch; every tick past 10,000 bps of spread.
    assert len(validated) == (batches if spread_bps <= 10_000 else 4 * n)
    monkeypatch.undo()
    want = _reference_ticks(table, spread_bps)
    assert len(ticks) == len(want) == 4 * n
    for got, ref in zip(ticks, want, strict=True):
        assert got == ref
        assert repr(got) == repr(ref)
        assert str(got.last) == str(ref.last)
        assert str(got.bid) == str(ref.bid)
        assert got.ts_ns == ref.ts_ns
        assert got.last_float == float(ref.last)


def test_a_stored_price_the_validators_refuse_is_refused_as_before(tmp_path: Path) -> None:
    """A day file with a price no tick may have (written past the import's
    checks) is not taken on trust: the tick is built by MarketData, which
    refuses it as it did."""
    from bot4.errors import Bot4Error

    cat = Catalog(tmp_path)
    table = candles([T0, T0 + MINUTE, T0 + 2 * MINUTE])
    cat.write(KEY, table)
    (day,) = list(tmp_path.rglob("*.parquet"))
    bad = pq.read_table(day)
    low = bad["low"].to_numpy().copy()
    low[2] = -5.0
    pq.write_table(bad.set_column(bad.schema.get_field_index("low"), "low", pa.array(low)), day)
    with pytest.raises(Bot4Error, match="bid"):
        list(iter_catalog_ticks(Catalog(tmp_path), parse_spec("catalog:binance/BTC-USDT/1m")))
