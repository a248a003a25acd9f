"""Guarantee: the columnar feed yields exactly the ticks the validating loader
yields, and refuses exactly what it refuses, at the same file:line:column.

The reference is ``iter_ticks(..., columnar=False)``: every row through the
validating ``MarketData(...)`` constructor, as the loader read files before the
columnar path existed. The columnar path (``columnar=True``, the default) reads
batches, checks them with numpy on int64 fixed point and builds trusted ticks.
The two are compared on the bundled sample and on hostile files: bad numbers,
values at the float boundary (equal as doubles, not as decimals), values past
int64 at their fixed-point scale, times that go backwards (inside a batch and
across a batch boundary), odd line layouts. A tick is compared by value, by
text (``str`` of every Decimal: a recording writes that) and by time
(``timestamp`` with its zone, and ``ts_ns``).
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot4.data import DataError, sample_path
from bot4.data.columns import BATCH_ROWS, TickBatch, exact_floats, fixed_point
from bot4.data.loader import iter_batches, iter_ticks
from bot4.model import MarketData

HEADER = "timestamp,symbol,bid,ask,last,volume\n"
GOOD = "2024-03-01T00:00:00Z,BTC-USDT,100.5,100.6,100.55,1.5\n"
T0 = 1709251200  # 2024-03-01T00:00:00Z


def fingerprint(tick: MarketData) -> tuple[Any, ...]:
    return (
        tick.symbol,
        tick.exchange,
        str(tick.bid),
        str(tick.ask),
        str(tick.last),
        str(tick.volume),
        tick.timestamp,
        tick.timestamp.tzinfo,
        tick.ts_ns,
        str(tick.mark),
        str(tick.funding_rate),
        tick.last_float.hex(),  # the loader's double of last, bit for bit
        tick,  # attrs equality too
    )


def outcome(path: Path, *, columnar: bool) -> tuple[list[tuple[Any, ...]], str | None]:
    """Every tick read before the end or the error, and the error's text."""
    got: list[tuple[Any, ...]] = []
    try:
        for tick in iter_ticks(path, columnar=columnar):
            got.append(fingerprint(tick))
    except DataError as exc:
        return got, str(exc)
    return got, None


def assert_same(path: Path) -> tuple[list[tuple[Any, ...]], str | None]:
    columnar = outcome(path, columnar=True)
    reference = outcome(path, columnar=False)
    assert columnar[1] == reference[1]
    assert len(columnar[0]) == len(reference[0])
    assert columnar[0] == reference[0]
    return reference


def test_the_sample_gives_the_same_ticks_and_every_batch_is_columnar() -> None:
    batches = list(iter_batches(sample_path(), exchange="paper"))
    # The fast path is really taken (a fallback would give the same ticks).
    assert batches
    assert all(b.columnar for b in batches)
    columnar = [t for b in batches for t in b.ticks]
    reference = list(iter_ticks(sample_path(), exchange="paper", columnar=False))
    assert len(columnar) == len(reference) == 345_600
    assert [fingerprint(t) for t in columnar] == [fingerprint(t) for t in reference]
    # The loader filled every tick's last_float (read from the slot itself:
    # reading the attribute of an unfilled tick would compute it) and it is
    # float(last).
    slot = MarketData.__dict__["last_float"]
    assert all(slot.__get__(t) == float(t.last) for t in columnar)
    # The columns say what the ticks say.
    for batch in batches[:3] + batches[-2:]:
        assert batch.bid is not None
        assert batch.volume is not None
        for i, tick in enumerate(batch.ticks):
            assert batch.ts_ns[i] == tick.ts_ns
            assert batch.bid[i] == tick.bid.scaleb(batch.price_scale)
            assert batch.volume[i] == tick.volume.scaleb(batch.size_scale)


# (bid, ask, last, volume) cells of one hostile row, after good rows.
HOSTILE_NUMBERS = [
    ("abc", "1", "1", "1"),
    ("", "1", "1", "1"),
    ("1.2.3", "2", "1", "1"),
    ("1e2", "1e3", "100", "1"),  # valid Decimal, not a plain numeral: row by row, same ticks
    ("-1", "1", "1", "1"),
    ("+1", "2", "1", "1"),
    (" 1.5", "2", "1.5 ", "1"),
    ("1_000", "2000", "1000", "1"),
    ("\u0663", "4", "3", "1"),  # an Arabic-Indic 3: Decimal takes it
    ("NaN", "1", "1", "1"),
    ("1", "inf", "1", "1"),
    ("1", "-Infinity", "1", "1"),
    ("5.", "6", "5", "1"),
    (".5", "6", "5", "1"),
    ("0", "1", "1", "1"),
    ("0.000", "1", "1", "1"),
    ("1", "1", "0.0", "1"),
    ("1", "1", "1", "-0"),
    ("1", "1", "1", "-5"),
    ("00012.50", "0012.5", "12.5", "0.0"),
    ("2", "1", "1", "1"),  # bid above ask
    # Float boundary: equal as doubles, not as decimals.
    ("0.30000000000000001", "0.3", "0.3", "1"),
    ("0.3", "0.30000000000000001", "0.3", "1"),
    ("9007199254740993", "9007199254740992", "9007199254740992", "1"),
    ("1.0000000000000001", "1.0000000000000001", "1", "1"),
    ("1.10", "1.1", "1.1", "1"),
    # Past int64 at the batch's scale, and at its edge.
    ("123456789012345678", "123456789012345678", "123456789012345678", "1"),
    ("1234567890123456789", "1234567890123456789", "1234567890123456789", "1"),
    ("9223372036854775807", "9223372036854775808", "9223372036854775808", "1"),
    ("99999999999999999999.5", "99999999999999999999.6", "99999999999999999999.5", "1"),
    ("1", "2", "1", "999999999999999999999999"),
    ("1", "2", "1", "0.000000000000000000001"),
    ("1e400", "1e401", "1e400", "1"),
    ("1", "2", "1", "1e-400"),
]


@pytest.mark.parametrize("cells", HOSTILE_NUMBERS, ids=[",".join(c) for c in HOSTILE_NUMBERS])
@pytest.mark.parametrize("where", ["early", "after a batch"])
def test_a_hostile_number_gives_the_same_ticks_or_the_same_error(
    tmp_path: Path, cells: tuple[str, str, str, str], where: str
) -> None:
    good = BATCH_ROWS + 7 if where == "after a batch" else 3
    rows = "".join(f"{T0 + i},BTC-USDT,100.5,100.6,100.55,1.5\n" for i in range(good))
    bad = f"{T0 + good},BTC-USDT,{','.join(cells)}\n"
    after = "".join(f"{T0 + good + 1 + i},ETH-USDT,10,10.1,10,2\n" for i in range(3))
    path = tmp_path / "ticks.csv"
    path.write_text(HEADER + rows + bad + after)
    ticks, error = assert_same(path)
    assert len(ticks) >= good
    if error is not None:
        assert error.startswith(f"{path}:{good + 2}: ")  # header is line 1


HOSTILE_PERP_CELLS = [
    ("100.52", "0.0001"),
    ("", ""),
    (" ", " "),
    ("100.520", "0.00010"),
    ("1e2", "1E-4"),
    ("abc", "0.0001"),
    ("0", "0"),
    ("-1", "0"),
    ("100", "-0.999999"),
    ("100", "1"),
    ("100", "-1"),
    ("NaN", "0"),
    ("100", "sNaN"),
    ("100", "Infinity"),
    ("\u0661\u0660\u0660", "0"),  # Arabic-Indic digits: Decimal takes them
]


@pytest.mark.parametrize("cells", HOSTILE_PERP_CELLS, ids=[",".join(c) for c in HOSTILE_PERP_CELLS])
@pytest.mark.parametrize("where", ["early", "after a batch"])
def test_a_hostile_mark_or_funding_rate_gives_the_same_ticks_or_the_same_error(
    tmp_path: Path, cells: tuple[str, str], where: str
) -> None:
    good = BATCH_ROWS + 7 if where == "after a batch" else 3
    rows = "".join(f"{T0 + i},BTC-USDT,100.5,100.6,100.55,1.5,100.5,0.0001\n" for i in range(good))
    bad = f"{T0 + good},BTC-USDT,100.5,100.6,100.55,1.5,{','.join(cells)}\n"
    after = "".join(f"{T0 + good + 1 + i},ETH-USDT,10,10.1,10,2,,\n" for i in range(3))
    path = tmp_path / "ticks.csv"
    path.write_text(HEADER.replace("volume", "volume,mark,funding_rate") + rows + bad + after)
    ticks, error = assert_same(path)
    assert len(ticks) >= good
    if error is not None:
        assert error.startswith(f"{path}:{good + 2}: column ")


HOSTILE_LAYOUTS = {
    "time goes back inside a batch": HEADER
    + f"{T0},BTC-USDT,1,2,1,1\n{T0 + 2},BTC-USDT,1,2,1,1\n{T0 + 1},BTC-USDT,1,2,1,1\n",
    "time goes back by one microsecond": HEADER
    + "2024-03-01T00:00:00.000001Z,BTC-USDT,1,2,1,1\n2024-03-01T00:00:00Z,BTC-USDT,1,2,1,1\n",
    "time goes back across a batch boundary": HEADER
    + "".join(f"{T0 + i},BTC-USDT,1,2,1,1\n" for i in range(BATCH_ROWS))
    + f"{T0 + BATCH_ROWS - 2},BTC-USDT,1,2,1,1\n",
    "the same time, offsets and units mixed": HEADER
    + "2024-03-01T00:00:00Z,BTC-USDT,1,2,1,1\n"
    + "2024-03-01T01:00:00+01:00,ETH-USDT,1,2,1,1\n"
    + f"{T0 * 1000 + 1},BTC-USDT,1,2,1,1\n"
    + f"{T0 * 1_000_000 + 1001},BTC-USDT,1,2,1,1\n"
    + "2024-03-01 00:00:03,BTC-USDT,1,2,1,1\n",
    "an unreadable time": HEADER + GOOD + "yesterday,BTC-USDT,1,2,1,1\n",
    "a time out of range": HEADER + GOOD + "99999999999999999999,BTC-USDT,1,2,1,1\n",
    "a lower-case symbol": HEADER + GOOD + "2024-03-01T00:00:01Z,btc-usdt,1,2,1,1\n",
    "a padded symbol": HEADER + GOOD + "2024-03-01T00:00:01Z, ETH-USDT ,1,2,1,1\n",
    "a short row": HEADER + GOOD + "2024-03-01T00:00:01Z,BTC-USDT,1,2,1\n",
    "a long row": HEADER + GOOD + "2024-03-01T00:00:01Z,BTC-USDT,1,2,1,1,9\n",
    "blank lines": HEADER + "\n" + GOOD + "\n\n" + "2024-03-01T00:00:01Z,BTC-USDT,x,2,1,1\n",
    "a quoted cell over two lines, then a bad row": HEADER
    + '2024-03-01T00:00:00Z,"BTC-USDT\n",1,2,1,1\n'
    + "2024-03-01T00:00:01Z,BTC-USDT,1,2,oops,1\n",
    "CRLF line ends": HEADER.replace("\n", "\r\n")
    + GOOD.replace("\n", "\r\n")
    + "2024-03-01T00:00:01Z,BTC-USDT,2,1,1,1\r\n",
    "a NUL byte": HEADER + GOOD + "2024-03-01T00:00:01Z,BTC-USDT,1,2,1\x00,1\n",
}


@pytest.mark.parametrize("text", HOSTILE_LAYOUTS.values(), ids=HOSTILE_LAYOUTS.keys())
def test_a_hostile_layout_gives_the_same_ticks_or_the_same_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "ticks.csv"
    path.write_bytes(text.encode())
    assert_same(path)


def test_the_error_and_exit_code_of_bot4_are_those_of_the_reference(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(HEADER + GOOD + "2024-03-01T00:00:01Z,BTC-USDT,0.30000000000000001,0.3,1,1\n")
    _, expected = outcome(path, columnar=False)
    why = "'0.30000000000000001': bid must not be above ask (0.3)"
    assert expected == f"{path}:3: column 'bid': {why}"
    command = "import sys; from bot4.cli import main; sys.exit(main())"
    done = subprocess.run(
        [sys.executable, "-c", command, "run", "--data", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"bot4: {expected}"
    assert "Traceback" not in done.stderr


def test_fixed_point_is_exact_or_refused() -> None:
    parsed = fixed_point(["50000.59", "1", "12.5"])
    assert parsed is not None
    values, scale = parsed
    assert scale == 2
    assert values.tolist() == [5000059, 100, 1250]
    padded = fixed_point(["1.5"], scale=3)
    assert padded is not None
    assert padded[0].tolist() == [1500]
    assert fixed_point(["1.2345"], scale=3) is None  # would round: refused
    assert fixed_point(["123456789012345678"]) is not None  # 18 digits fit int64
    assert fixed_point(["1234567890123456789"]) is None  # 19 may not
    assert fixed_point(["0.1234567890123456789"]) is None
    for cell in ("-1", "+1", "1e5", "NaN", " 1", "1_0", "1.2.3", ".", "", "1\x00", "\u0663"):
        assert fixed_point([cell]) is None, cell
    for cell, value, scale in ((".5", 5, 1), ("5.", 5, 0), ("007.50", 750, 2)):
        got = fixed_point([cell])
        assert got is not None, cell
        assert (got[0].tolist(), got[1]) == ([value], scale)


def test_a_batch_is_a_tickbatch_of_trusted_ticks_equal_to_validated_ones(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv"
    path.write_text(HEADER + GOOD)
    (batch,) = iter_batches(path)
    assert isinstance(batch, TickBatch)
    assert batch.columnar
    assert len(batch) == 1
    (tick,) = batch.ticks
    (reference,) = iter_ticks(path, columnar=False)
    assert tick == reference
    assert hash(tick) == hash(reference)
    assert repr(tick) == repr(reference)


def test_exact_floats_is_float_of_the_decimal_bit_for_bit() -> None:
    import random

    import numpy as np

    rng = random.Random(7)
    limit = (1 << 53) - 1
    units = [rng.randrange(1, limit) for _ in range(20_000)]
    units += [1, 5, 9, limit, limit - 1, 10**15 + 1, 2**52 + 1, 123456789012345678 % limit]
    for scale in (0, 1, 2, 3, 8, 15, 18, 22):
        array = np.array(units, dtype=np.int64)
        got = exact_floats(array, scale)
        assert got is not None
        want = [float(Decimal(u).scaleb(-scale)) for u in units]
        assert [g.hex() for g in got] == [w.hex() for w in want], scale
    # Beyond exact doubles: left to each tick (None), never rounded twice.
    assert exact_floats(np.array([1 << 53], dtype=np.int64), 2) is None
    assert exact_floats(np.array([5], dtype=np.int64), 23) is None
    assert exact_floats(np.array([], dtype=np.int64), 2) == []


def test_a_tick_not_from_the_loader_computes_its_float_on_first_read() -> None:
    from datetime import UTC, datetime

    tick = MarketData(
        "BTC-USDT",
        "x",
        Decimal("0.1"),
        Decimal("0.3"),
        Decimal("0.3"),
        Decimal(1),
        datetime(2024, 1, 1, tzinfo=UTC),
    )
    slot = MarketData.__dict__["last_float"]
    with pytest.raises(AttributeError):
        slot.__get__(tick)
    assert tick.last_float == 0.3
    assert slot.__get__(tick) == 0.3
