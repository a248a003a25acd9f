"""iter_ticks: formats, merging, and errors that name file, line and column."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from bot4.data import DataError, iter_batches, iter_ticks, symbol_from_filename
from bot4.errors import ConfigError

D = Decimal
HEADER = "timestamp,symbol,bid,ask,last,volume\n"


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_tick_csv_with_iso_and_epoch_timestamps(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ticks.csv",
        HEADER
        + "2024-03-01T00:00:00Z,BTC-USDT,100.5,100.6,100.55,1.5\n"
        + "\n"  # blank lines are ignored
        + "2024-03-01T01:00:00+01:00,ETH-USDT,10,10.1,10,0\n"  # same instant, other offset
        + "1709251201000,BTC-USDT,100.4,100.5,100.4,2\n"  # epoch milliseconds
        + "1709251202,BTC-USDT,100.3,100.4,100.3,2\n"  # epoch seconds
        + "2024-03-01 00:00:03,BTC-USDT,100.3,100.4,100.3,2\n",  # naive: taken as UTC
    )
    ticks = list(iter_ticks(path, exchange="replay"))
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    assert [t.timestamp for t in ticks] == [
        t0,
        t0,
        t0 + timedelta(seconds=1),
        t0 + timedelta(seconds=2),
        t0 + timedelta(seconds=3),
    ]
    first = ticks[0]
    assert (first.symbol, first.bid, first.ask, first.last, first.volume) == (
        "BTC-USDT",
        D("100.5"),
        D("100.6"),
        D("100.55"),
        D("1.5"),
    )
    assert first.exchange == "replay"
    assert ticks[1].symbol == "ETH-USDT"


def test_columns_in_any_order_and_symbol_from_option(tmp_path: Path) -> None:
    path = write(tmp_path / "quotes.csv", "volume,ask,bid,timestamp,last\n3,11,10,1709251200,10\n")
    (tick,) = iter_ticks(path, symbol="SOL-USDT")
    assert (tick.symbol, tick.bid, tick.ask, tick.volume) == ("SOL-USDT", D(10), D(11), D(3))


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "2024-03-01T00:00:01Z,BTC-USDT,abc,1,1,1",
            "ticks.csv:3: column 'bid': 'abc' is not a number",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,2,1,1,1",
            "ticks.csv:3: column 'bid': '2': bid must not be above ask",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,1,1,1,-5",
            "ticks.csv:3: column 'volume': '-5': must not be negative",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,NaN,1,1,1",
            "ticks.csv:3: column 'bid': 'NaN' is not a finite number",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,1,inf,1,1",
            "ticks.csv:3: column 'ask': 'inf' is not a finite number",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,0,1,1,1",
            "ticks.csv:3: column 'bid': '0': must be greater than zero",
        ),
        (
            "2024-03-01T00:00:01Z,BTC-USDT,1,1,x,1",
            "ticks.csv:3: column 'last': 'x' is not a number",
        ),
        (
            "2024-02-29T23:59:59Z,BTC-USDT,1,1,1,1",
            "ticks.csv:3: column 'timestamp': '2024-02-29T23:59:59Z' is earlier than the previous",
        ),
        (
            "yesterday,BTC-USDT,1,1,1,1",
            "ticks.csv:3: column 'timestamp': 'yesterday' is not an ISO-8601 time or an epoch",
        ),
        (
            "2024-03-01T00:00:01Z,btc-usdt,1,1,1,1",
            "ticks.csv:3: column 'symbol': 'btc-usdt': must look like BASE-QUOTE",
        ),
        ("2024-03-01T00:00:01Z,BTC-USDT,1,1,1", "ticks.csv:3: expected 6 columns, found 5"),
    ],
)
def test_garbage_rows_are_errors_with_file_line_and_column(
    tmp_path: Path, row: str, expected: str
) -> None:
    path = write(
        tmp_path / "ticks.csv", HEADER + "2024-03-01T00:00:00Z,BTC-USDT,1,1,1,1\n" + row + "\n"
    )
    with pytest.raises(DataError) as err:
        list(iter_ticks(path))
    assert str(err.value).startswith(str(tmp_path / expected.split(":")[0]))
    assert str(err.value).removeprefix(str(tmp_path) + "/").startswith(expected)
    assert err.value.line == 3
    assert isinstance(err.value, ConfigError)


def test_error_attributes(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", HEADER + "2024-03-01T00:00:00Z,BTC-USDT,1,abc,1,1\n")
    with pytest.raises(DataError) as err:
        list(iter_ticks(path))
    assert (err.value.path, err.value.line, err.value.column) == (str(path), 2, "ask")


def test_errors_are_raised_where_the_row_is_not_before(tmp_path: Path) -> None:
    rows = "".join(f"{1709251200 + i},BTC-USDT,1,1,1,1\n" for i in range(5))
    path = write(tmp_path / "t.csv", HEADER + rows + "1709251300,BTC-USDT,1,oops,1,1\n")
    stream = iter_ticks(path)
    assert len([next(stream) for _ in range(5)]) == 5  # streamed, not loaded at once
    with pytest.raises(DataError, match=r"t.csv:7: column 'ask'"):
        next(stream)


def test_missing_columns_and_unknown_layouts(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "timestamp,symbol,bid,ask,volume\n")
    with pytest.raises(DataError, match=r"a.csv:1: missing column 'last'"):
        list(iter_ticks(path))
    path = write(tmp_path / "b.csv", "when,what\n1,2\n")
    with pytest.raises(DataError, match=r"b.csv:1: cannot tell the format"):
        list(iter_ticks(path))
    path = write(tmp_path / "ticks.csv", "timestamp,bid,ask,last,volume\n1709251200,1,1,1,1\n")
    with pytest.raises(DataError, match="no 'symbol' column"):
        list(iter_ticks(path))
    with pytest.raises(DataError, match="no such file"):
        list(iter_ticks(tmp_path / "missing.csv"))
    with pytest.raises(ConfigError, match="format"):
        iter_ticks(path, format="parquet")


def test_files_merge_by_time_and_gzip_and_directories(tmp_path: Path) -> None:
    write(
        tmp_path / "BTC-USDT.csv.gz",
        "timestamp,bid,ask,last,volume\n1709251200,1,2,1,1\n1709251202,1,2,1,1\n",
    )
    write(
        tmp_path / "eth_usdt.csv",
        "timestamp,bid,ask,last,volume\n1709251201,3,4,3,1\n1709251202,3,4,3,1\n",
    )
    got = [(t.timestamp.second, t.symbol) for t in iter_ticks(tmp_path)]
    # Sorted file order breaks the tie at second 2.
    assert got == [(0, "BTC-USDT"), (1, "ETH-USDT"), (2, "BTC-USDT"), (2, "ETH-USDT")]
    explicit = list(iter_ticks([tmp_path / "eth_usdt.csv", tmp_path / "BTC-USDT.csv.gz"]))
    assert [t.symbol for t in explicit][-2:] == ["ETH-USDT", "BTC-USDT"]


def test_binance_klines_become_four_ticks_per_candle(tmp_path: Path) -> None:
    path = write(
        tmp_path / "BTCUSDT-1m-2024-03-01.csv",
        # rising candle, then a falling one (Binance layout, no header)
        "1709251200000,100,105,99,104,8,1709251259999,0,0,0,0,0\n"
        "1709251260000,104,104.5,101,102,4,1709251319999,0,0,0,0,0\n",
    )
    ticks = list(iter_ticks(path))
    assert {t.symbol for t in ticks} == {"BTC-USDT"}
    assert [t.last for t in ticks] == [
        D(x) for x in ("100", "99", "105", "104", "104", "104.5", "101", "102")
    ]
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    assert [t.timestamp - t0 for t in ticks[:5]] == [
        timedelta(seconds=s) for s in (0, 15, 30, 45, 60)
    ]
    assert all(t.bid == t.ask == t.last for t in ticks)
    assert ticks[0].volume == D(2)
    wide = list(iter_ticks(path, spread_bps=20))
    assert (wide[0].bid, wide[0].ask) == (D("99.9"), D("100.1"))


def test_binance_microsecond_timestamps_and_header(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ETHUSDT-1s.csv",
        "open_time,open,high,low,close,volume,close_time,quote_volume,count,a,b,ignore\n"
        "1735689600000000,10,10,10,10,1,1735689600999999,0,0,0,0,0\n",
    )
    (first, *_rest) = iter_ticks(path)
    assert first.timestamp == datetime(2025, 1, 1, tzinfo=UTC)
    assert first.symbol == "ETH-USDT"


def test_generic_ohlcv_uses_the_gap_between_candles(tmp_path: Path) -> None:
    path = write(
        tmp_path / "candles.csv",
        "date,open,high,low,close,volume\n"
        "2024-03-01T00:00:00Z,10,12,9,11,4\n"
        "2024-03-01T01:00:00Z,11,11,8,9,4\n",
    )
    ticks = list(iter_ticks(path, symbol="ABC-USD"))
    assert len(ticks) == 8
    assert ticks[1].timestamp == datetime(2024, 3, 1, 0, 15, tzinfo=UTC)
    assert ticks[5].timestamp == datetime(2024, 3, 1, 1, 15, tzinfo=UTC)  # last reuses the gap
    assert [t.last for t in ticks[4:]] == [D(11), D(11), D(8), D(9)]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "1709251260000,100,99,98,100,1,1709251319999",
            "column 'high': '99' is below open, close or low",
        ),
        (
            "1709251260000,100,105,101,104,1,1709251319999",
            "column 'low': '101' is above open or close",
        ),
        (
            "1709251260000,100,105,99,104,-1,1709251319999",
            "column 'volume': '-1' must not be negative",
        ),
        ("1709251260000,x,105,99,104,1,1709251319999", "column 'open': 'x' is not a number"),
        (
            "1709251200000,100,105,99,104,1,1709251259999",
            "column 'open_time': '1709251200000' is not after",
        ),
        ("1709251260000,100,105", "expected at least 6 columns, found 3"),
    ],
)
def test_bad_candles(tmp_path: Path, row: str, expected: str) -> None:
    path = write(
        tmp_path / "BTCUSDT-1m.csv",
        "1709251200000,100,105,99,104,8,1709251259999\n" + row + "\n",
    )
    with pytest.raises(DataError) as err:
        list(iter_ticks(path))
    assert str(err.value) == f"{path}:2: {expected}" or str(err.value).startswith(
        f"{path}:2: {expected}"
    )


def test_candles_need_a_symbol(tmp_path: Path) -> None:
    path = write(tmp_path / "candles.csv", "1709251200000,100,105,99,104,8,1709251259999\n")
    with pytest.raises(DataError, match="carry no symbol"):
        list(iter_ticks(path))
    assert len(list(iter_ticks(path, symbol="BTC-USDT"))) == 4


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTC-USDT.csv", "BTC-USDT"),
        ("BTC-USDT-PERP.csv", "BTC-USDT-PERP"),
        ("BTC-USDT-1m.csv", "BTC-USDT"),
        ("BTCUSDT-1m-2024-03.csv", "BTC-USDT"),
        ("eth_usdt.csv.gz", "ETH-USDT"),
        ("SOLUSDC-trades.csv", "SOL-USDC"),
        ("ticks.csv", None),
        ("USDT.csv", None),
    ],
)
def test_symbol_from_filename(name: str, symbol: str | None) -> None:
    assert symbol_from_filename(name) == symbol


PERP_HEADER = "timestamp,symbol,bid,ask,last,volume,mark,funding_rate\n"


@pytest.mark.parametrize("columnar", [True, False])
def test_mark_and_funding_rate_columns_reach_the_ticks(tmp_path: Path, columnar: bool) -> None:
    path = write(
        tmp_path / "perp.csv",
        PERP_HEADER
        + "2024-03-01T00:00:00Z,BTC-USDT-PERP,100.5,100.6,100.55,1.5,100.52,0.0001\n"
        + "2024-03-01T00:00:01Z,BTC-USDT-PERP,100.5,100.6,100.55,1.5,,-0.00025\n"  # no mark
        + "2024-03-01T00:00:02Z,BTC-USDT-PERP,100.5,100.6,100.55,1.5,100.49,\n",  # no rate
    )
    ticks = list(iter_ticks(path, columnar=columnar))
    assert [(t.mark, t.funding_rate) for t in ticks] == [
        (D("100.52"), D("0.0001")),
        (None, D("-0.00025")),
        (D("100.49"), None),
    ]
    assert str(ticks[0].mark) == "100.52"  # the file's text, as for the other prices
    assert ticks[1].mid == D("100.55")


def test_a_file_with_marks_is_still_read_in_columns_and_one_without_has_none(
    tmp_path: Path,
) -> None:
    rows = "".join(f"{1709251200 + i},BTC-USDT,100,100.1,100,1,100.05,0.0001\n" for i in range(50))
    path = write(tmp_path / "perp.csv", PERP_HEADER + rows)
    (batch,) = iter_batches(path)
    assert batch.columnar
    assert {(t.mark, t.funding_rate) for t in batch.ticks} == {(D("100.05"), D("0.0001"))}
    plain = write(tmp_path / "spot.csv", HEADER + "1709251200,BTC-USDT,100,100.1,100,1\n")
    (tick,) = iter_ticks(plain)
    assert (tick.mark, tick.funding_rate) == (None, None)


def test_the_optional_columns_go_by_other_names(tmp_path: Path) -> None:
    path = write(
        tmp_path / "perp.csv",
        "timestamp,symbol,bid,ask,last,volume,mark_price,funding\n"
        "1709251200,ETH-USDT,10,10.1,10,1,10.02,0.0003\n",
    )
    (tick,) = iter_ticks(path)
    assert (tick.mark, tick.funding_rate) == (D("10.02"), D("0.0003"))


@pytest.mark.parametrize("columnar", [True, False])
@pytest.mark.parametrize(
    ("header", "cells", "expected"),
    [
        (PERP_HEADER, "abc,0.0001", "perp.csv:3: column 'mark': 'abc' is not a number"),
        (PERP_HEADER, "0,0.0001", "perp.csv:3: column 'mark': '0': must be greater than zero"),
        (PERP_HEADER, "-5,0.0001", "perp.csv:3: column 'mark': '-5': must be greater than zero"),
        (PERP_HEADER, "NaN,0.0001", "perp.csv:3: column 'mark': 'NaN' is not a finite number"),
        (PERP_HEADER, "100,x", "perp.csv:3: column 'funding_rate': 'x' is not a number"),
        (
            PERP_HEADER,
            "100,inf",
            "perp.csv:3: column 'funding_rate': 'inf' is not a finite number",
        ),
        (
            PERP_HEADER,
            "100,1.5",
            "perp.csv:3: column 'funding_rate': '1.5': must be a fraction between -1 and 1",
        ),
        (
            PERP_HEADER.replace("mark,funding_rate", "mark_price,funding"),
            "100,-1",
            "perp.csv:3: column 'funding': '-1': must be a fraction between -1 and 1",
        ),
        (
            PERP_HEADER.replace("mark,funding_rate", "mark_price,funding"),
            "1e,0",
            "perp.csv:3: column 'mark_price': '1e' is not a number",
        ),
    ],
)
def test_a_bad_mark_or_funding_rate_cell_names_file_line_and_column(
    tmp_path: Path, header: str, cells: str, expected: str, columnar: bool
) -> None:
    path = write(
        tmp_path / "perp.csv",
        header
        + "2024-03-01T00:00:00Z,BTC-USDT,100,100,100,1,100,0.0001\n"
        + f"2024-03-01T00:00:01Z,BTC-USDT,100,100,100,1,{cells}\n",
    )
    stream = iter_ticks(path, columnar=columnar)
    assert next(stream).mark == D(100)  # the row before the bad one still goes out
    with pytest.raises(DataError) as err:
        next(stream)
    assert str(err.value).removeprefix(str(tmp_path) + "/").startswith(expected)
    assert (err.value.line, err.value.column) == (3, expected.split("'")[1])
