"""Market history through ccxt from the fake Binance: its klines and aggTrades
in the venue's wire format and limits, and ``bot4 data download`` /
``bot4 markets list`` / ``bot4 exchanges list`` against it (no network:
ccxt's real binance client over HTTP to 127.0.0.1)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bot4_ccxt.fakehistory import FakeHistory
from bot4_ccxt.venues import PROFILES

from bot4.cli import main
from bot4.data.catalog import Catalog, SeriesKey, parse_time
from bot4.data.catalog_download import download, make_client, missing_ranges
from bot4.errors import ExchangeRefused, ExchangeUnavailable

MINUTE = 60_000
T0 = parse_time("2024-03-01", "t")
OUTAGE = (parse_time("2024-03-01T10:00Z", "t"), parse_time("2024-03-01T10:30Z", "t"))


@pytest.fixture
def history() -> Iterator[FakeHistory]:
    with FakeHistory(outages=[OUTAGE]) as venue:
        yield venue


def client(venue: FakeHistory, rate_limit_ms: float = 0) -> Any:
    return make_client("binance", api_url=venue.url, rate_limit_ms=rate_limit_ms, timeout=5)


def _get(venue: FakeHistory, path: str) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(venue.url + path, timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# --- the venue -------------------------------------------------------------------------


def test_klines_are_binance_arrays_with_its_limits(history: FakeHistory) -> None:
    status, rows = _get(history, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={T0}")
    assert status == 200
    assert len(rows) == 500  # Binance's default limit
    first = rows[0]
    assert first[0] == T0
    assert first[6] == T0 + MINUTE - 1  # close time: the candle's last millisecond
    assert all(isinstance(x, str) for x in first[1:6])
    assert float(first[2]) >= max(float(first[1]), float(first[4]))
    assert isinstance(first[8], int)  # number of trades
    assert _get(history, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1001") == (
        400,
        {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."},
    )
    assert _get(history, "/fapi/v1/klines?symbol=BTCUSDT&interval=1m&limit=1500")[0] == 200
    assert _get(history, "/api/v3/klines?symbol=BTCUSDT&interval=7m")[1]["code"] == -1120
    assert _get(history, "/api/v3/klines?symbol=NOPE&interval=1m")[1]["code"] == -1121


def test_agg_trades_refuse_a_window_over_an_hour(history: FakeHistory) -> None:
    ok = f"/api/v3/aggTrades?symbol=ETHUSDT&startTime={T0}&endTime={T0 + 3_600_000}"
    status, trades = _get(history, ok)
    assert status == 200
    assert len(trades) == 500
    assert set(trades[0]) == {"a", "p", "q", "f", "l", "T", "m", "M"}
    wide = f"/api/v3/aggTrades?symbol=ETHUSDT&startTime={T0}&endTime={T0 + 3_600_001}"
    assert _get(history, wide)[1]["code"] == -1127


# --- download --------------------------------------------------------------------------


def test_download_spot_and_perpetual_then_a_second_call_fetches_only_the_gap(
    history: FakeHistory, tmp_path: Path
) -> None:
    cat = Catalog(tmp_path)
    until = T0 + 1440 * MINUTE
    first = download(
        cat, client(history), "binance", ["BTC-USDT", "ETH-USDT-PERP"], "1m", T0, until
    )
    spot, perp = first.series
    assert str(spot.key) == "binance/BTC-USDT/1m"
    assert perp.key.market_type == "swap"
    for res in (spot, perp):
        assert res.new_rows == 1440 - 30  # the venue's half-hour outage
        assert res.info is not None
        assert (res.info.first, res.info.last) == (T0, until - MINUTE)
        assert (res.info.gap_count, res.info.missing) == (1, 30)
        assert res.info.gaps[0].start == OUTAGE[0]
    assert len(history.hits_of("GET", "/api/v3/klines")) == 2  # 1000 + the rest
    assert len(history.hits_of("GET", "/fapi/v1/klines")) == 2
    # The stored candles are the venue's: same prices as its wire answer.
    _status, wire = _get(history, f"/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime={T0}")
    stored = pa.Table.from_batches(list(cat.batches(spot.key, T0, T0 + 5 * MINUTE)))
    assert stored.column("open").to_pylist() == [float(r[1]) for r in wire[:5]]
    assert stored.column("volume").to_pylist() == [float(r[5]) for r in wire[:5]]

    before = len(history.hits)
    again = download(
        cat, client(history), "binance", ["BTC-USDT", "ETH-USDT-PERP"], "1m", T0, until
    )
    assert [r.new_rows for r in again.series] == [0, 0]
    assert [r.ranges for r in again.series] == [1, 1]  # only the gap is asked for again
    klines = [h for h in history.hits[before:] if h.path.endswith("/klines")]
    assert len(klines) == 2
    # A longer window: only the new day is fetched.
    more = download(cat, client(history), "binance", ["BTC-USDT"], "1m", T0, until + 1440 * MINUTE)
    assert more.series[0].new_rows == 1440
    assert more.series[0].info is not None
    assert more.series[0].info.rows == 2 * 1440 - 30


def test_an_open_candle_is_never_stored(history: FakeHistory, tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    now = T0 + 90 * MINUTE + 20_000  # 01:30:20: the 01:30 candle is still open
    res = download(
        cat, client(history), "binance", ["BTC-USDT"], "1m", T0, None, now=lambda: now
    ).series[0]
    assert res.info is not None
    assert res.info.last == T0 + 89 * MINUTE


def test_a_429_is_waited_out_and_retried_without_duplicates(
    history: FakeHistory, tmp_path: Path
) -> None:
    history.inject("GET", "/api/v3/klines", "429", count=2, skip=1, retry_after=3)
    slept: list[float] = []
    res = download(
        Catalog(tmp_path),
        client(history),
        "binance",
        ["BTC-USDT"],
        "1m",
        T0,
        T0 + 2 * 1440 * MINUTE,
        sleep=slept.append,
    ).series[0]
    statuses = [h.status for h in history.hits_of("GET", "/api/v3/klines")]
    assert statuses.count(429) == 2
    assert res.retries == 2
    assert slept == [3.0, 3.0]  # the venue's Retry-After, not the backoff
    assert res.info is not None
    assert res.info.rows == 2 * 1440 - 30


def test_a_venue_that_keeps_refusing_stops_the_download_keeping_what_it_got(
    history: FakeHistory, tmp_path: Path
) -> None:
    history.inject("GET", "/api/v3/klines", "503", count=100, skip=1)
    cat = Catalog(tmp_path)
    with pytest.raises(ExchangeUnavailable, match="gave up after 2 retries"):
        download(
            cat,
            client(history),
            "binance",
            ["BTC-USDT"],
            "1m",
            T0,
            T0 + 2 * 1440 * MINUTE,
            max_retries=2,
            sleep=lambda s: None,
        )
    key = SeriesKey.of("binance", "BTC-USDT", "1m")
    assert len(cat.times(key)) == 1000  # the first page
    info = cat.info(key)  # and the manifest says so
    assert info is not None
    assert info.rows == 1000


def test_the_rate_limiter_keeps_under_the_venues_limit(tmp_path: Path) -> None:
    # 2 history requests a second at the venue; ccxt's limiter stays under it:
    # rateLimit is ms per unit of cost and Binance's klines cost 0.4 units, so
    # 1500 ms spaces them 600 ms apart. (The next test is the same download
    # without pacing: refused.)
    with FakeHistory(request_limit=(2, 1.0)) as venue:
        res = download(
            Catalog(tmp_path),
            client(venue, rate_limit_ms=1500),
            "binance",
            ["BTC-USDT"],
            "1m",
            T0,
            T0 + 2 * 1440 * MINUTE,
            sleep=lambda s: pytest.fail("no request may be refused"),
        )
        hits = venue.hits_of("GET", "/api/v3/klines")
    assert [h.status for h in hits] == [200, 200, 200]
    assert hits[2].at - hits[0].at >= 0.9  # 2 x 600 ms, less the timing of the log
    assert res.series[0].new_rows == 2 * 1440


def test_without_pacing_the_venue_refuses_and_the_retry_waits(tmp_path: Path) -> None:
    # The same venue limit; no pacing: 429 with Retry-After, waited out.
    with FakeHistory(request_limit=(2, 1.0)) as venue:
        slept: list[float] = []
        res = download(
            Catalog(tmp_path),
            client(venue, rate_limit_ms=0),
            "binance",
            ["BTC-USDT"],
            "1m",
            T0,
            T0 + 2 * 1440 * MINUTE,
            sleep=lambda s: (slept.append(s), time.sleep(s)),
        )
        statuses = [h.status for h in venue.hits_of("GET", "/api/v3/klines")]
    assert 429 in statuses
    assert slept
    assert all(s >= 1 for s in slept)
    assert res.series[0].new_rows == 2 * 1440


def test_trades_download_resumes_and_drops_duplicates(history: FakeHistory, tmp_path: Path) -> None:
    cat = Catalog(tmp_path)
    until = T0 + 40 * MINUTE  # 2,400 one-second trades: pages of 1000 in hour windows
    first = download(cat, client(history), "binance", ["ETH-USDT"], "1m", T0, until, trades=True)
    _candles, trades = first.series
    assert str(trades.key) == "binance/ETH-USDT/trades"
    assert trades.new_rows == 2400
    stored = pa.Table.from_batches(list(cat.batches(trades.key)))
    ids = stored.column("id").to_pylist()
    assert ids == sorted(set(ids))
    assert len(ids) == 2400
    assert set(stored.column("side").to_pylist()) == {"buy", "sell"}
    longer = download(
        cat, client(history), "binance", ["ETH-USDT"], "1m", T0, until + 10 * MINUTE, trades=True
    )
    assert longer.series[1].new_rows == 600
    assert longer.series[1].requests == 1  # only after the last stored trade


def test_unknown_symbols_and_timeframes_are_the_users_error(
    history: FakeHistory, tmp_path: Path
) -> None:
    from bot4.errors import ConfigError

    with pytest.raises(ConfigError, match="no market DOGE-USDT"):
        download(Catalog(tmp_path), client(history), "binance", ["DOGE-USDT"], "1m", T0)
    with pytest.raises(ConfigError, match="--timeframe '2m'"):
        download(Catalog(tmp_path), client(history), "binance", ["BTC-USDT"], "2m", T0)


def test_a_refusal_is_not_retried(history: FakeHistory, tmp_path: Path) -> None:
    cli = client(history)
    cli.load_markets()
    cli.markets["BTC/USDT"]["id"] = "NOPE"  # the venue answers -1121 Invalid symbol
    with pytest.raises(ExchangeRefused, match="Invalid symbol"):
        download(Catalog(tmp_path), cli, "binance", ["BTC-USDT"], "1m", T0, T0 + MINUTE * 10)


def test_missing_ranges() -> None:
    import numpy as np

    stored = np.array([10, 20, 30, 60, 70], dtype=np.int64)
    assert missing_ranges(stored, 0, 100, 10) == [(0, 10), (40, 60), (80, 100)]
    assert missing_ranges(stored, 10, 80, 10) == [(40, 60)]
    assert missing_ranges(np.array([], dtype=np.int64), 0, 50, 10) == [(0, 50)]
    assert missing_ranges(stored, 0, 100, None) == [(0, 10), (71, 100)]


# --- the commands ----------------------------------------------------------------------


def test_data_download_command_reports_progress_and_gaps(
    history: FakeHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "data",
        "download",
        "--exchange",
        "binance",
        "--symbols",
        "BTC-USDT,ETH-USDT-PERP",
        "--timeframe",
        "1m",
        "--since",
        "2024-03-01",
        "--until",
        "2024-03-02",
        "--api-url",
        history.url,
        "--rate-limit",
        "0",
        "--catalog",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "binance/BTC-USDT/1m: done, 1,410 new candles" in err
    assert "binance/ETH-USDT-PERP/1m: 1,410 new, 1,410 stored" in out
    assert "binance/BTC-USDT/1m: 1 gap, 30 candles missing" in out
    assert "2024-03-01 10:00 .. 2024-03-01 10:29  (30)" in out
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["new_rows"] for s in doc["series"]] == [0, 0]
    assert [s["gaps"] for s in doc["series"]] == [1, 1]
    assert main(["data", "list", "--catalog", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:4] == ["binance", "spot", "BTC-USDT", "1m"]
    assert listing[2].split()[:4] == ["binance", "swap", "ETH-USDT-PERP", "1m"]


def test_download_errors_are_one_line(
    history: FakeHistory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["data", "download", "--catalog", str(tmp_path), "--api-url", history.url]
    code = main(
        [*base, "--exchange", "nosuchvenue", "--symbols", "BTC-USDT", "--since", "2024-03-01"]
    )
    assert code == 2
    assert "ccxt has no such exchange" in capsys.readouterr().err
    code = main([*base, "--exchange", "binance", "--symbols", "BTC-USDT", "--since", "soon"])
    assert code == 2
    assert capsys.readouterr().err.startswith("bot4: --since: 'soon' is not a date")
    history.inject(None, None, "500", count=1000)
    code = main(
        [
            *base,
            "--exchange",
            "binance",
            "--symbols",
            "BTC-USDT",
            "--since",
            "2024-03-01",
            "--rate-limit",
            "0",
            "--retries",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1  # the venue's failure, not the user's
    assert err.startswith("bot4: binance: load markets: gave up")
    assert len(err.strip().splitlines()) == 1


def test_markets_list_table_and_json(
    history: FakeHistory, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["markets", "list", "--exchange", "binance", "--api-url", history.url]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "SYMBOL", "BOT4", "TYPE", "TICK", "LOT", "MIN_QTY", "MIN_NOTIONAL", "MAX_LEVERAGE"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["BTC/USDT"][:5] == ["BTC/USDT", "BTC-USDT", "spot", "0.01", "0.0001"]
    assert rows["ETH/USDT:USDT"][:3] == ["ETH/USDT:USDT", "ETH-USDT-PERP", "swap"]
    assert rows["ETH/USDT:USDT"][6] == "100"  # MIN_NOTIONAL of the futures filter
    assert main([*argv, "--type", "swap", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["bot4"] for m in doc] == ["BTC-USDT-PERP", "ETH-USDT-PERP"]
    assert {m["type"] for m in doc} == {"swap"}


def test_exchanges_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["exchanges", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["EXCHANGE", "SPOT", "PERPETUALS", "SANDBOX", "TESTED"]
    assert lines[1].startswith("binance")
    assert main(["exchanges", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The plugin's venue table, the one the README's and the offline tests' is.
    assert [v["exchange"] for v in doc] == list(PROFILES)
    assert doc[0]["sandbox"] is True
    by_name = {v["exchange"]: v for v in doc}
    assert (by_name["bybit"]["spot"], by_name["bybit"]["perpetuals"]) == (True, True)
    assert (by_name["binanceusdm"]["spot"], by_name["binanceusdm"]["perpetuals"]) == (False, True)
    for name in ("binance", "binanceusdm", "bybit"):  # traded end to end against a fake
        assert "conformance kit" in by_name[name]["tested"], by_name[name]
    assert "conformance kit" not in by_name["okx"]["tested"]  # offline requests only
    assert by_name["okx"]["requests"] == PROFILES["okx"].tested
    assert main(["exchanges", "list", "--all", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert len(every) > 50
    assert {"bybit", "okx"} <= {e["exchange"] for e in every}
