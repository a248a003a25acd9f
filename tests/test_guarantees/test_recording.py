"""The session recording is compact, exact and safe to read.

A session records to ``recording.jsonl.gz``: events as JSON frames, ticks in
columnar blocks taken from the bus in batches, gzip on top, a few bytes per
tick instead of ~290. Reading gives back exactly what the plain recorder
wrote (every digit, timestamp and correlation id); the recordings of the
versions before (gzip JSON lines with short tick rows, plain
``recording.jsonl``) still read and replay; a damaged, truncated, crafted or
bomb-like stream is one clear line and exit 2.
"""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from bot4 import codec
from bot4.bus import EventRecorder, open_bus
from bot4.errors import ConfigError
from bot4.model import MarketData
from bot4.recording import MAGIC, RECORDING, CompactWriter, SessionRecorder
from bot4.recording_read import read_records, read_stream
from tests.conftest import record_paper_session, run_bot4


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real paper session's recording, and its folder."""
    out = record_paper_session(tmp_path_factory.mktemp("recorded"))
    return out / RECORDING


def _one_clear_line(result: Any, path: Path) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    return lines[0]


def _frames(data: bytes) -> list[tuple[bytes, bytes]]:
    """The (kind, body) frames of an inflated version-2 recording."""
    assert data.startswith(MAGIC)
    at, frames = len(MAGIC), []
    while at < len(data):
        size = int.from_bytes(data[at + 1 : at + 5], "big")
        frames.append((data[at : at + 1], data[at + 5 : at + 5 + size]))
        at += 5 + size
    return frames


def _ticks_in(frames: list[tuple[bytes, bytes]]) -> int:
    return sum(json.loads(body.partition(b"\n")[0])["n"] for kind, body in frames if kind == b"T")


def _tick(symbol: str, price: str, stamp: datetime) -> MarketData:
    p = Decimal(price)
    return MarketData(symbol, "data", p, p + Decimal("0.10"), p, Decimal("1.500"), stamp)


def test_reading_gives_back_exactly_what_the_plain_recorder_wrote(tmp_path: Path) -> None:
    """Prices with trailing zeros, a tick whose own timestamp is not the bus
    time, a tick with its own correlation id, a non-tick event and a bus
    error: all read back as the plain recorder's lines, field for field."""
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    late = datetime(2024, 3, 1, 0, 0, 1, 123456, tzinfo=UTC)
    compact, plain = tmp_path / "c.jsonl.gz", tmp_path / "p.jsonl"

    async def session() -> None:
        async with (
            open_bus() as bus,
            SessionRecorder(bus, compact, encode=codec.encode),
            EventRecorder(bus, plain, encode=codec.encode),
        ):
            await bus.publish("session.start", {"config": {}, "rules": {}}, ts=0)
            ts = 1_709_251_200_000_000_000
            await bus.publish("market.BTC-USDT", _tick("BTC-USDT", "50000.10", t0), ts=ts)
            await bus.publish("market.ETH-USDT", _tick("ETH-USDT", "3000.00", t0), ts=ts)
            await bus.publish("market.BTC-USDT", _tick("BTC-USDT", "50001.0", late), ts=ts + 7)
            await bus.publish(
                "market.BTC-USDT", _tick("BTC-USDT", "49999.99", t0), ts=ts, correlation_id="x-1"
            )
            await bus.publish("signal.sma_cross", {"why": "cross", "n": [1, 2]}, ts=ts)

            def broken(event: Any) -> None:
                raise RuntimeError("subscriber broke")

            bus.subscribe("boom", broken)
            await bus.publish("boom", 1, ts=ts)
            await bus.drain()

    trio.run(session)
    expected = [json.loads(line) for line in plain.read_text().splitlines()]
    assert any(r["topic"] == "bus.error" for r in expected)
    got = [record for _, record in read_records(compact)]
    assert got == expected
    # And the ticks really are in columnar blocks (not the object form, gzipped).
    frames = _frames(gzip.decompress(compact.read_bytes()))
    assert _ticks_in(frames) == 4
    assert not any(b'"market.' in body[:20] for kind, body in frames if kind == b"E")


def test_a_session_recording_is_a_few_bytes_per_tick(recorded: Path) -> None:
    ticks = sum(1 for _, r in read_records(recorded) if r["topic"].startswith("market."))
    assert ticks == 3000
    # The plain recorder wrote about 290 bytes per tick, the line format 20-40.
    assert recorded.stat().st_size / ticks < 25
    assert recorded.read_bytes()[:2] == b"\x1f\x8b"


def test_an_old_plain_recording_still_replays(recorded: Path, tmp_path: Path) -> None:
    old = tmp_path / "recording.jsonl"
    with old.open("w", encoding="utf-8") as f:
        for _, record in read_records(recorded):
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    result = run_bot4("replay", str(old))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("replay matched: ")


def test_a_truncated_gzip_recording_is_one_clear_error(recorded: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl.gz"
    data = recorded.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    line = _one_clear_line(run_bot4("replay", str(cut)), cut)
    assert "damaged gzip stream" in line


def test_a_corrupted_gzip_recording_is_one_clear_error(recorded: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    data = bytearray(recorded.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    bad.write_bytes(bytes(data))
    line = _one_clear_line(run_bot4("replay", str(bad)), bad)
    assert "damaged gzip stream" in line or "not a recording line" in line


def test_a_gzip_bomb_is_refused_before_it_inflates(recorded: Path, tmp_path: Path) -> None:
    """A valid header, then ~200 MB of blank lines packed into ~200 kB: refused
    once it inflates past the ratio no recording reaches, not read to the end."""
    _, header = next(read_records(recorded))
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write((json.dumps(header) + "\n").encode())
        chunk = (b" " * 1023 + b"\n") * 1024
        for _ in range(200):
            f.write(chunk)
    assert bomb.stat().st_size < 1_000_000
    line = _one_clear_line(run_bot4("replay", str(bomb)), bomb)
    assert "gzip bomb" in line


def test_one_endless_line_is_refused(tmp_path: Path) -> None:
    endless = tmp_path / "endless.jsonl.gz"
    with gzip.open(endless, "wb", compresslevel=1) as f:
        for _ in range(20):
            f.write(b"[" * (1024 * 1024))
    with pytest.raises(ConfigError, match=r"endless\.jsonl\.gz:1: a line longer than"):
        list(read_records(endless))


def test_a_killed_session_leaves_its_head_and_decisions_on_disk(tmp_path: Path) -> None:
    """The writer is never closed (the process was killed): what is on disk
    still inflates to the header, the ticks so far and the last decision."""
    path = tmp_path / "killed.jsonl.gz"
    writer = CompactWriter(path, codec.encode)
    writer.write("session.start", {"config": {}, "rules": {}}, 0, 1, "p-1")
    stamp = datetime(2024, 3, 1, tzinfo=UTC)
    ts = 1_709_251_200_000_000_000
    for seq in range(2, 12):
        writer.write("market.BTC-USDT", _tick("BTC-USDT", "50000.10", stamp), ts, seq, f"p-{seq}")
    writer.write("signal.sma_cross", {"why": "cross"}, ts, 12, "p-12")
    frames = _frames(zlib.decompressobj(wbits=31).decompress(path.read_bytes()))
    assert [kind for kind, _ in frames] == [b"E", b"T", b"E"]
    assert json.loads(frames[0][1])["topic"] == "session.start"
    assert json.loads(frames[-1][1])["topic"] == "signal.sma_cross"
    assert _ticks_in(frames) == 10
    writer.close()


def test_a_recording_of_the_line_format_before_still_reads(tmp_path: Path) -> None:
    """The gzip JSON lines the version before wrote (a symbol declared once,
    ticks as short rows, the correlation id prefix) read back in object form."""
    old = tmp_path / "old.jsonl.gz"
    rows = [
        {"topic": "session.start", "ts": 0, "seq": 1, "correlation_id": "p-1", "payload": {}},
        ["M", 1, "market.BTC-USDT", "BTC-USDT", "data"],
        ["P", "p-"],
        ["m", 1, 1_709_251_200_000_000_000, 2, "50000.10", "50000.20", "50000.10", "1.500"],
    ]
    with gzip.open(old, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    got = [record for _, record in read_records(old)]
    assert got[1] == {
        "topic": "market.BTC-USDT",
        "ts": 1_709_251_200_000_000_000,
        "seq": 2,
        "correlation_id": "p-2",
        "payload": {
            "_t": "MarketData",
            "symbol": "BTC-USDT",
            "exchange": "data",
            "bid": "50000.10",
            "ask": "50000.20",
            "last": "50000.10",
            "volume": "1.500",
            "timestamp": "2024-03-01T00:00:00+00:00",
        },
    }
    (_, _, tick), *_ = (item for item in read_stream(old, ticks="models") if item[0] == 4)
    assert tick == codec.decode(got[1]["payload"])


def _with_block(tmp_path: Path, name: str, block: bytes, kind: bytes = b"T") -> Path:
    """A version-2 recording: a header event, then one crafted frame."""
    header = json.dumps({"topic": "session.start", "ts": 0, "seq": 1, "correlation_id": "p-1"})
    path = tmp_path / name
    with gzip.open(path, "wb") as f:
        f.write(MAGIC + b"E" + len(header).to_bytes(4, "big") + header.encode())
        f.write(kind + len(block).to_bytes(4, "big") + block)
    return path


def _block(n: int, symbols: list[Any], columns: bytes, text: list[bytes]) -> bytes:
    head = {"n": n, "symbols": symbols, "prefix": "p-", "cids": [], "text": [len(t) for t in text]}
    return json.dumps(head).encode() + b"\n" + columns + b"".join(text)


_SYM = [[1, "market.BTC-USDT", "BTC-USDT", "data"]]
_ONE = (
    (1).to_bytes(4, "little")
    + (1_709_251_200_000_000_000).to_bytes(8, "little")
    + (2).to_bytes(8, "little")
    + bytes(8)
)


@pytest.mark.parametrize(
    ("name", "block", "kind", "message"),
    [
        ("good", _block(1, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2"]), b"T", None),
        ("kind", b"{}", b"X", "unknown kind"),
        ("short", _block(2, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2"]), b"T", "does not add"),
        ("undeclared", _block(1, [], _ONE, [b"1.5", b"1.6", b"1.5", b"2"]), b"T", "undeclared"),
        ("nan", _block(1, _SYM, _ONE, [b"NaN", b"1.6", b"1.5", b"2"]), b"T", "unreadable tick"),
        ("crossed", _block(1, _SYM, _ONE, [b"9", b"1.6", b"1.5", b"2"]), b"T", "unreadable tick"),
        ("text", _block(1, _SYM, _ONE, [b"\xff", b"1.6", b"1.5", b"2"]), b"T", "does not add"),
        ("topic", _block(1, [[1, "fill.X", "X-Y", "d"]], _ONE, [b"1"] * 4), b"T", "market"),
        ("huge", _block(10**9, _SYM, _ONE, [b"1"] * 4), b"T", "does not add"),
        ("event", b"[1, 2]", b"E", "without a topic"),
        ("five", _block(1, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2", b"1"]), b"T", "text"),
        ("mark", _block(1, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2", b"-1", b""]), b"T", "unread"),
        ("rate", _block(1, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2", b"", b"2"]), b"T", "unread"),
        ("rows", _block(1, _SYM, _ONE, [b"1.5", b"1.6", b"1.5", b"2", b"\n", b""]), b"T", "add up"),
    ],
)
def test_a_crafted_frame_is_one_clear_error(
    tmp_path: Path, name: str, block: bytes, kind: bytes, message: str | None
) -> None:
    """Columns that do not add up, unknown symbols, hostile prices, a wrong
    topic: a ConfigError naming the file and the event, never a traceback
    (and the well-formed block beside them reads as the tick it is)."""
    path = _with_block(tmp_path, f"{name}.jsonl.gz", block, kind)
    if message is None:
        (_, _, _header), (number, topic, tick) = read_stream(path, ticks="models")
        assert (number, topic) == (2, "market.BTC-USDT")
        assert tick == MarketData(
            "BTC-USDT",
            "data",
            Decimal("1.5"),
            Decimal("1.6"),
            Decimal("1.5"),
            Decimal("2"),
            datetime(2024, 3, 1, tzinfo=UTC),
        )
        return
    with pytest.raises(ConfigError, match=rf"{name}\.jsonl\.gz:2: .*{message}"):
        list(read_stream(path, ticks="models"))


def test_a_recording_cut_inside_a_frame_is_one_clear_error(recorded: Path, tmp_path: Path) -> None:
    """A complete gzip stream whose content stops inside a frame (a session's
    recording cut in the middle, then compressed again): refused by ``bot4
    replay`` in one line, exit 2."""
    whole = gzip.decompress(recorded.read_bytes())
    cut = tmp_path / "cut-frame.jsonl.gz"
    cut.write_bytes(gzip.compress(whole[: len(whole) // 2]))
    line = _one_clear_line(run_bot4("replay", str(cut)), cut)
    assert "ends inside a frame (truncated)" in line


def test_ticks_with_a_mark_and_a_funding_rate_read_back_exactly(tmp_path: Path) -> None:
    """A perpetual's mark and funding rate (some ticks without one) survive
    the columnar block, as models and as records; a block without any keeps
    its four text columns."""
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    p = Decimal("50000.10")
    ticks = [
        MarketData("BTC-USDT-PERP", "data", p, p, p, Decimal(1), t0, Decimal("50001.20"), None),
        MarketData("BTC-USDT-PERP", "data", p, p, p, Decimal(1), t0, None, Decimal("-0.00010")),
        MarketData("BTC-USDT-PERP", "data", p, p, p, Decimal(1), t0),
    ]
    path = tmp_path / "perp.jsonl.gz"
    writer = CompactWriter(path, codec.encode)
    ts = 1_709_251_200_000_000_000
    for seq, tick in enumerate(ticks, start=1):
        writer.write("market.BTC-USDT-PERP", tick, ts, seq, f"p-{seq}")
    writer.write("signal.x", {}, ts, 4, "p-4")
    writer.write("market.BTC-USDT-PERP", ticks[2], ts, 5, "p-5")
    writer.close()
    models = [item for _, topic, item in read_stream(path, ticks="models") if topic != "signal.x"]
    assert models == [*ticks, ticks[2]]
    assert str(models[1].funding_rate) == "-0.00010"  # the trailing zero too
    records = [r["payload"] for _, r in read_records(path) if r["topic"] != "signal.x"]
    assert records == [codec.encode(t) for t in [*ticks, ticks[2]]]
    frames = _frames(gzip.decompress(path.read_bytes()))
    heads = [json.loads(body.partition(b"\n")[0]) for kind, body in frames if kind == b"T"]
    assert [len(h["text"]) for h in heads] == [6, 4]


def test_ticks_validated_as_columns_are_those_of_the_constructor(
    recorded: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay reads a tick block's ticks through the loader's columnar path
    (bot4.data.columns.build_batch): exactly the ticks the MarketData
    constructor gives tick by tick, with the same event numbers and topics."""
    from bot4 import recording_read as recording

    taken: list[bool] = []
    columns = recording._Block._checked_ticks

    def counted(block: Any) -> list[MarketData] | None:
        ticks = columns(block)
        taken.append(ticks is not None)
        return ticks

    monkeypatch.setattr(recording._Block, "_checked_ticks", counted)
    fast = list(read_stream(recorded, ticks="models"))
    assert taken
    assert all(taken)  # every block of a real session takes the columnar path
    monkeypatch.setattr(recording._Block, "_checked_ticks", lambda block: None)
    reference = list(read_stream(recorded, ticks="models"))
    assert fast == reference
    ticks = [(n, topic, t) for n, topic, t in fast if isinstance(t, MarketData)]
    assert len(ticks) > 1000
    assert [t.ts_ns for _, _, t in ticks] == [
        (t.timestamp - datetime(1970, 1, 1, tzinfo=UTC)).days * 86_400 * 10**9
        + (t.timestamp - datetime(1970, 1, 1, tzinfo=UTC)).seconds * 10**9
        + t.timestamp.microsecond * 1000
        for _, _, t in ticks
    ]


def _three(text: list[bytes], sid: int = 1) -> bytes:
    """A block of three ticks a second apart, of symbol ``sid``."""
    columns = (
        sid.to_bytes(4, "little") * 3
        + (1_709_251_200_000_000_000).to_bytes(8, "little")
        + (10**9).to_bytes(8, "little") * 2
        + (2).to_bytes(8, "little") * 3
        + bytes(8 * 3)
    )
    return _block(3, _SYM, columns, text)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "crossed3",
            [b"1\n9\n1", b"2\n2\n2", b"1\n2\n1", b"1\n1\n1"],
            ":3: .*bid must not be above",
        ),
        ("nan3", [b"1\n1\n1", b"2\n2\n2", b"1\n1\nNaN", b"1\n1\n1"], ":4: .*unreadable tick"),
        ("zero3", [b"1\n0\n1", b"2\n2\n2", b"1\n1\n1", b"1\n1\n1"], ":3: .*unreadable tick"),
        ("sign3", [b"1\n1\n1", b"2\n2\n2", b"1\n1\n1", b"1\n-1\n1"], ":3: .*unreadable tick"),
    ],
)
def test_a_bad_tick_inside_a_block_is_named_and_the_ticks_before_it_come_first(
    tmp_path: Path, name: str, text: list[bytes], message: str
) -> None:
    """A block the columnar path does not take goes tick by tick: the ticks
    before the bad one are read, and the error names the bad one's event."""
    path = _with_block(tmp_path, f"{name}.jsonl.gz", _three(text))
    read: list[Any] = []
    with pytest.raises(ConfigError, match=rf"{name}\.jsonl\.gz{message}"):
        read.extend(read_stream(path, ticks="models"))
    assert [number for number, _, _ in read] == list(range(1, int(message[1])))


def test_a_symbol_with_blanks_is_refused_as_the_constructor_refuses_it(tmp_path: Path) -> None:
    """The loader strips a symbol cell's blanks; a recorded symbol is taken
    as written, so " BTC-USDT" is an unreadable tick, not BTC-USDT."""
    block = _block(1, [[1, "market.BTC-USDT", " BTC-USDT", "data"]], _ONE, [b"1", b"2", b"1", b"1"])
    path = _with_block(tmp_path, "blank.jsonl.gz", block)
    with pytest.raises(ConfigError, match=r"blank\.jsonl\.gz:2: .*unreadable tick"):
        list(read_stream(path, ticks="models"))
