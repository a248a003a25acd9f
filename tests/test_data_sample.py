"""The bundled sample: reproducible from its generator, and shaped as promised."""

from __future__ import annotations

import gzip
import hashlib
import itertools
from collections import deque
from decimal import Decimal
from pathlib import Path

from bot4.data import SAMPLE_SYMBOLS, iter_sample, iter_ticks, sample_path
from bot4.data.generate import generate_csv, main

# sha256 of the decompressed CSV; changes only when the generator does.
CSV_SHA256 = "fd1800781e1a1c32df68e4d214a68ddbc49e64e96f4282f0b79a9c588ff6815e"


def test_sample_is_small_and_matches_its_pinned_hash() -> None:
    raw = sample_path().read_bytes()
    assert len(raw) < 6 * 1024 * 1024
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest() == CSV_SHA256


def test_regenerating_reproduces_the_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "again.csv.gz"
    assert main(["--out", str(out)]) == 0
    # Same content; and the same gzip bytes too (fixed mtime, no name, level 9).
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(sample_path().read_bytes())
    assert out.read_bytes() == sample_path().read_bytes()


def test_a_different_seed_gives_different_data() -> None:
    a = list(itertools.islice(generate_csv(seed=1), 50))
    b = list(itertools.islice(generate_csv(seed=2), 50))
    assert a[0] == b[0]  # the header
    assert a[1:] != b[1:]


def test_sample_shape_crash_rally_and_correlation() -> None:
    btc: list[float] = []
    eth: list[float] = []
    count = 0
    symbols = set()
    prev = None
    for tick in iter_sample():
        count += 1
        symbols.add(tick.symbol)
        assert prev is None or tick.timestamp >= prev
        prev = tick.timestamp
        assert tick.volume > 0
        assert tick.bid < tick.ask
        (btc if tick.symbol == "BTC-USDT" else eth).append(float(tick.mid))
    assert symbols == set(SAMPLE_SYMBOLS)
    assert count == 2 * 2 * 86400
    assert 45_000 < btc[0] < 55_000
    assert 2_700 < eth[0] < 3_300

    def worst_hour(series: list[float]) -> float:
        # Sampled every 10 seconds: the crash is minutes long, not seconds.
        window: deque[float] = deque(maxlen=360)
        worst = 0.0
        for price in series[::10]:
            window.append(price)
            worst = max(worst, 1 - price / max(window))
        return worst

    assert worst_hour(btc) > 0.12
    assert worst_hour(eth) > 0.12
    # A rally: some four-hour stretch gains at least 6%.
    assert max(btc[i + 14400] / btc[i] for i in range(0, len(btc) - 14400, 300)) > 1.06

    def returns(series: list[float]) -> list[float]:
        return [series[i + 60] / series[i] - 1 for i in range(0, len(series) - 60, 60)]

    rb, re_ = returns(btc), returns(eth)
    mb, me = sum(rb) / len(rb), sum(re_) / len(re_)
    cov = sum((x - mb) * (y - me) for x, y in zip(rb, re_, strict=True))
    var_b = sum((x - mb) ** 2 for x in rb)
    var_e = sum((y - me) ** 2 for y in re_)
    corr = cov / (var_b * var_e) ** 0.5
    assert 0.7 < corr < 0.9


def test_sample_prices_are_decimals_on_a_cent_grid() -> None:
    for tick in itertools.islice(iter_ticks(sample_path()), 1000):
        for price in (tick.bid, tick.ask, tick.last):
            assert isinstance(price, Decimal)
            assert price == price.quantize(Decimal("0.01"))
