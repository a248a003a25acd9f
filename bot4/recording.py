"""The session recording on disk: gzip, events as JSON, ticks in columns.

A recording is what ``bot4 replay`` needs and nothing else: the session's
header, the exchange's events (the kernel's inputs: ticks, fills, order
updates) and the kernel's decisions (signals, risk verdicts, orders, risk
actions). Every one of those is an event the bus carried, so the recorder
keeps them all; nothing the kernel derives is republished on the bus.

Format (version 2). One gzip stream (level 1: the default session's
recording is about a fifth larger than at level 6 for a fifth of the
compression CPU, and still a few MB; any level reads the same) holding the
line ``bot4-recording 2`` and then frames,
each a kind byte, a 4-byte big-endian length and that many bytes:

* ``E``: one event, the JSON object ``{topic, ts, seq, correlation_id,
  payload}`` (payload as :mod:`bot4.codec` writes it); ``zcat`` shows it.
* ``T``: a block of consecutive ticks, columnar. A JSON head line (``n``
  ticks; symbols first seen here, ``[id, topic, symbol, exchange]``; the
  bus's correlation id prefix; the few ticks whose correlation id is not
  ``prefix + seq``; the byte length of each text column), then packed
  little-endian columns: symbol id (uint32), bus ``ts`` and ``seq`` (int64,
  each the difference from the previous tick), the tick's own timestamp in
  microseconds minus ``ts // 1000`` (int64, zero for a kernel's tick), then
  bid, ask, last and volume as newline-separated decimal text, exactly as
  ``str(Decimal)`` writes them (no digit or trailing zero lost). A block
  holding a tick with a mark or a funding rate has two more text columns,
  mark and funding rate, an empty line for a tick without (``text`` then
  lists six lengths); a block without any is as it always was.

The recorder takes ticks from the bus in batches (no envelope, no JSON per
tick) and writes a block when another event comes (so the order of ticks and
decisions is exact), every :data:`FLUSH_TICKS` ticks, and at the end. Each
decision is sync-flushed at once, so a killed session leaves everything up to
its last decision readable (the gzip trailer is missing then: reading it says
so, after the events before the cut).

Reading streams the file frame by frame and hands back every record in the
object form (ticks expanded only if asked; a replay gets them as validated
:class:`~bot4.model.MarketData` straight from the columns, or skips them).
Recordings of the version before (gzip JSON lines, ticks as short ``["m",
...]`` rows) and plain ``.jsonl`` ones are still read, told apart by their
first bytes, not the name. A damaged or truncated stream, a frame or line
longer than :data:`MAX_LINE`, a stream that inflates far beyond any recording
(a gzip bomb), or a column that does not add up is one
:class:`~bot4.errors.ConfigError` naming the file and the event number (for
the older formats, the line number).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import sys
import zlib
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate, repeat
from operator import add, attrgetter, floordiv, sub
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, cast

import attrs
import trio

from bot4 import codec
from bot4.bus import BUS_ERROR, Backpressure, Bus, BusErrorInfo, Event, EventBatch, Subscription
from bot4.data.columns import FileState, build_batch
from bot4.errors import Bot4Error, ConfigError
from bot4.model import MarketData

__all__ = [
    "COMPRESSLEVEL",
    "FLUSH_TICKS",
    "MAGIC",
    "MAX_LINE",
    "MAX_RATIO",
    "RECORDING",
    "CompactWriter",
    "SessionRecorder",
    "read_records",
    "read_stream",
]

# The name is the one earlier versions wrote, so scripts and tools find it;
# the first bytes inside the gzip stream say which format it holds.
RECORDING = "recording.jsonl.gz"
MAGIC = b"bot4-recording 2\n"
COMPRESSLEVEL = 1
# The longest line or frame a recording may hold (a header carries every rule file).
MAX_LINE = 16 * 1024 * 1024
# Recordings compress about 10:1; past this ratio the file is not one.
MAX_RATIO = 200
# Ticks in one block at most (a block is also written before any other event).
FLUSH_TICKS = 4096
_RATIO_FLOOR = 16 * 1024 * 1024  # the ratio is checked past this many bytes
_GZIP_MAGIC = b"\x1f\x8b"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SWAP = sys.byteorder != "little"  # columns are little-endian on disk

Record = tuple[int, dict[str, Any]]
Encode = Callable[[Any], Any]
Ticks = Literal["records", "models", "skip"]

_SYMBOL = attrgetter("symbol")
_EXCHANGE = attrgetter("exchange")
_TS_NS = attrgetter("ts_ns")  # the tick's own time in ns (the kernel has read it already)
_PRICES = (attrgetter("bid"), attrgetter("ask"), attrgetter("last"), attrgetter("volume"))
_OPTIONAL = (attrgetter("mark"), attrgetter("funding_rate"))  # None on most ticks


def _iso(ns: int) -> str:
    """The codec's text for the instant ``ns`` (microsecond precision)."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()


def _packed(code: str, values: Any) -> bytes:
    column = array(code, values)
    if _SWAP:
        column.byteswap()
    return column.tobytes()


def _micros_time(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _deltas(values: list[int]) -> Iterator[int]:
    """Each value minus the one before (the first minus zero)."""
    return map(sub, values, [0, *values[:-1]])


# -- writing -------------------------------------------------------------------------------


class CompactWriter:
    """Writes events to a recording: ticks in columnar blocks, the rest as JSON."""

    def __init__(self, path: Path, encode: Encode, *, compresslevel: int = COMPRESSLEVEL) -> None:
        self._encode = encode
        self._file = gzip.GzipFile(path, "wb", compresslevel=compresslevel)
        self._file.write(MAGIC)
        self._ids: dict[tuple[str, str, str], int] = {}
        # The block being gathered: columns of ticks not yet written.
        self._topics: list[str] = []
        self._ticks: list[MarketData] = []
        self._ts: list[int] = []
        self._seqs: list[int] = []
        self._cids: list[str | None] = []
        self._prefix = ""
        self.written = 0

    def write(self, topic: str, payload: Any, ts: int, seq: int, correlation_id: str) -> None:
        """One event; a tick joins the block being gathered (with its own id)."""
        if type(payload) is MarketData:
            self._add([topic], [payload], [ts], [seq], [correlation_id], self._prefix)
            return
        self._block()
        body = json.dumps(
            {
                "topic": topic,
                "ts": ts,
                "seq": seq,
                "correlation_id": correlation_id,
                "payload": self._encode(payload),
            },
            separators=(",", ":"),
        ).encode()
        self._frame(b"E", body)
        self.written += 1
        self.flush()  # a decision reaches the disk even if the process is killed

    def write_batch(self, batch: EventBatch) -> None:
        """A bus batch: its ticks join the block; anything else in it is an event."""
        payloads = batch.payloads
        if all(type(p) is MarketData for p in payloads):
            self._add(
                batch.topics, payloads, batch.ts, batch.seqs, batch.correlation_ids, batch.prefix
            )
            return
        for i, event in enumerate(batch.events()):  # not all ticks: one at a time, in order
            if type(event.payload) is MarketData:
                self._add(
                    [event.topic],
                    [event.payload],
                    [event.ts],
                    [event.seq],
                    [batch.correlation_ids[i]],
                    batch.prefix,
                )
            else:
                self.write(event.topic, event.payload, event.ts, event.seq, event.correlation_id)

    def _add(
        self,
        topics: list[str],
        ticks: list[Any],
        ts: list[int],
        seqs: list[int],
        cids: list[str | None],
        prefix: str,
    ) -> None:
        if prefix != self._prefix:
            self._block()  # a block has one prefix
            self._prefix = prefix
        start = 0
        while start < len(seqs):
            room = FLUSH_TICKS - len(self._seqs)
            end = start + room
            self._topics += topics[start:end]
            self._ticks += ticks[start:end]
            self._ts += ts[start:end]
            self._seqs += seqs[start:end]
            self._cids += cids[start:end]
            start = end
            if len(self._seqs) >= FLUSH_TICKS:
                self._block()
                self.flush()

    def _block(self) -> None:
        """Write the gathered ticks as one ``T`` frame."""
        n = len(self._seqs)
        if n == 0:
            return
        ticks, topics, ts, seqs, cids = self._ticks, self._topics, self._ts, self._seqs, self._cids
        keys = list(zip(topics, map(_SYMBOL, ticks), map(_EXCHANGE, ticks), strict=True))
        ids = self._ids
        sids = list(map(ids.get, keys))
        declared: list[list[Any]] = []
        if None in sids:
            for i, sid in enumerate(sids):
                if sid is None:
                    key = keys[i]
                    sid = ids.get(key)
                    if sid is None:
                        sid = ids[key] = len(ids) + 1
                        declared.append([sid, *key])
                    sids[i] = sid
        # Microseconds of the tick's own time minus those of the bus time, in
        # C: a tick's ts_ns is its timestamp in whole microseconds times 1000.
        thousands = repeat(1000)
        offsets = map(
            sub, map(floordiv, map(_TS_NS, ticks), thousands), map(floordiv, ts, thousands)
        )
        own: list[list[Any]] = []
        if cids.count(None) != n:
            prefix = self._prefix
            own = [
                [i, cid]
                for i, cid in enumerate(cids)
                if cid is not None and cid != f"{prefix}{seqs[i]}"
            ]
        texts = ["\n".join(map(str, map(price, ticks))).encode("ascii") for price in _PRICES]
        optional = [list(map(get, ticks)) for get in _OPTIONAL]
        if any(column.count(None) != n for column in optional):
            texts += [
                "\n".join(["" if v is None else str(v) for v in column]).encode("ascii")
                for column in optional
            ]
        head = {
            "n": n,
            "symbols": declared,
            "prefix": self._prefix,
            "cids": own,
            "text": [len(t) for t in texts],
        }
        body = b"".join(
            [
                json.dumps(head, separators=(",", ":")).encode(),
                b"\n",
                _packed("I", sids),
                _packed("q", _deltas(ts)),
                _packed("q", _deltas(seqs)),
                _packed("q", offsets),
                *texts,
            ]
        )
        self._frame(b"T", body)
        self.written += n
        self._topics, self._ticks, self._ts, self._seqs, self._cids = [], [], [], [], []

    def _frame(self, kind: bytes, body: bytes) -> None:
        self._file.write(kind + len(body).to_bytes(4, "big") + body)

    def flush(self) -> None:
        """Everything written so far onto the disk as complete gzip data (a
        sync flush: a killed session's recording still holds its head)."""
        self._block()
        self._file.flush()

    def close(self) -> None:
        self._block()
        self._file.close()


# -- reading -------------------------------------------------------------------------------


class _Counted(io.RawIOBase):
    """A raw file that counts the (compressed) bytes read from it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


class _Inflating:
    """A recording's bytes (inflated if gzip), bounded in ratio; every read
    error becomes a ConfigError naming ``path`` and the event (or line)
    ``number`` being read."""

    def __init__(self, path: Path, f: IO[bytes]) -> None:
        self.path = path
        gzipped = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        self.counted: _Counted | None = None
        self.stream: IO[bytes] | gzip.GzipFile = f
        if gzipped:
            self.counted = _Counted(f)
            self.stream = gzip.GzipFile(fileobj=io.BufferedReader(self.counted), mode="rb")
        self.inflated = 0

    def _call(self, number: int, read: Callable[[int], bytes], size: int) -> bytes:
        try:
            data = read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{self.path}:{number}: damaged gzip stream: {exc}") from None
        if len(data) > MAX_LINE:
            raise ConfigError(f"{self.path}:{number}: a line longer than {MAX_LINE} bytes")
        if self.counted is not None:
            self.inflated += len(data)
            if self.inflated > _RATIO_FLOOR and self.inflated > MAX_RATIO * max(
                self.counted.count, 1
            ):
                raise ConfigError(
                    f"{self.path}:{number}: inflates more than {MAX_RATIO} times: "
                    "not a recording (a gzip bomb?)"
                )
        return data

    def read(self, number: int, size: int) -> bytes:
        return self._call(number, self.stream.read, size)

    def readline(self, number: int) -> bytes:
        return self._call(number, self.stream.readline, MAX_LINE + 1)

    def peek(self, size: int) -> bytes:
        head = self._call(1, self.stream.read, size)
        if isinstance(self.stream, gzip.GzipFile):
            # GzipFile cannot seek back cheaply: start a new one on the raw file.
            assert self.counted is not None
            raw = self.counted._raw
            raw.seek(0)
            self.counted = _Counted(raw)
            self.stream = gzip.GzipFile(fileobj=io.BufferedReader(self.counted), mode="rb")
        else:
            self.stream.seek(0)
        self.inflated = 0
        return head


def read_stream(path: Path, *, ticks: Ticks = "records") -> Iterator[tuple[int, str, Any]]:
    """(event number, topic, item) for every event of a recording, streamed.

    ``item`` is the record in object form (topic, ts, seq, correlation_id,
    payload); for a tick, with ``ticks="models"``, the validated
    :class:`MarketData` itself; with ``ticks="skip"`` ticks are not yielded
    (their columns are not decoded). The number is the event's position in
    the file (the line number in the older line formats).
    """
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recording: {exc.strerror or exc}") from None
    with f:
        source = _Inflating(path, f)
        if source.peek(len(MAGIC)) == MAGIC:
            source.read(1, len(MAGIC))
            yield from _frames(source, ticks)
        else:
            yield from _lines(source, ticks)


def read_records(path: Path) -> Iterator[Record]:
    """(number, record) for every event of a recording, streamed, each record
    in the object form (topic, ts, seq, correlation_id, payload)."""
    for number, _, record in read_stream(path):
        yield number, record


def _bad(path: Path, number: int, why: object) -> ConfigError:
    return ConfigError(f"{path}:{number}: not a recording frame: {why}")


def _frames(source: _Inflating, ticks: Ticks) -> Iterator[tuple[int, str, Any]]:
    path = source.path
    number = 1
    symbols: dict[int, tuple[str, str, str]] = {}
    while True:
        head = source.read(number, 5)
        if not head:
            return
        if len(head) < 5:
            raise ConfigError(f"{path}:{number}: the recording ends inside a frame (truncated)")
        kind, size = head[:1], int.from_bytes(head[1:], "big")
        if size > MAX_LINE:
            raise ConfigError(f"{path}:{number}: a frame longer than {MAX_LINE} bytes")
        body = source.read(number, size)
        if len(body) < size:
            raise ConfigError(f"{path}:{number}: the recording ends inside a frame (truncated)")
        if kind == b"E":
            topic, record = _event(path, number, body)
            if ticks == "records" or not topic.startswith("market."):
                yield number, topic, record
            elif ticks == "models":
                yield number, topic, _tick_model(path, number, record)
            number += 1
        elif kind == b"T":
            block = _Block(path, number, body, symbols)
            if ticks != "skip":
                yield from block.items(ticks == "models")
            number += block.n
        else:
            raise _bad(path, number, f"unknown kind {kind!r}")


def _event(path: Path, number: int, body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(body)
    except UnicodeDecodeError:
        raise _bad(path, number, "not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, number, exc.msg) from None
    if not isinstance(record, dict) or not isinstance(record.get("topic"), str):
        raise _bad(path, number, "an event without a topic")
    return record["topic"], record


class _Block:
    """One ``T`` frame, its columns checked and unpacked (prices kept as text)."""

    def __init__(
        self, path: Path, number: int, body: bytes, symbols: dict[int, tuple[str, str, str]]
    ) -> None:
        self.path, self.number, self.symbols = path, number, symbols
        try:
            self._parse(body)
        except ConfigError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
            raise _bad(path, number, f"a tick block that does not add up ({exc})") from None

    def _parse(self, body: bytes) -> None:
        end = body.index(b"\n")
        head = json.loads(body[:end])
        if not isinstance(head, dict):
            raise TypeError("the head is not an object")
        n, prefix, text = head["n"], head["prefix"], head["text"]
        if not (isinstance(n, int) and 0 < n <= FLUSH_TICKS and isinstance(prefix, str)):
            raise ValueError("bad count or prefix")
        if not (
            isinstance(text, list) and len(text) in (4, 6) and all(type(t) is int for t in text)
        ):
            raise TypeError("bad text column lengths")
        for sid, topic, symbol, exchange in head["symbols"]:
            if not (
                type(sid) is int and all(isinstance(v, str) for v in (topic, symbol, exchange))
            ):
                raise TypeError("a symbol is declared as an id and three names")
            if not topic.startswith("market."):
                raise ValueError(f"a tick topic must be market.*, not {topic!r}")
            self.symbols[sid] = (topic, symbol, exchange)
        self.n, self.prefix = n, prefix
        self.cids: dict[int, str] = {}
        for index, cid in head["cids"]:
            if type(index) is not int or not 0 <= index < n or not isinstance(cid, str):
                raise TypeError("a correlation id is an index and a string")
            self.cids[index] = cid
        at = end + 1
        columns: list[list[int]] = []
        for code, size in (("I", 4), ("q", 8), ("q", 8), ("q", 8)):
            column = array(code)
            column.frombytes(body[at : at + size * n])
            if len(column) != n:
                raise ValueError("a column is short")
            if _SWAP:
                column.byteswap()
            columns.append(column.tolist())
            at += size * n
        self.sids = columns[0]
        self.ts = list(accumulate(columns[1]))
        self.seqs = list(accumulate(columns[2]))
        self.offsets = columns[3]
        self.texts: list[list[str]] = []
        for size in text:
            values = body[at : at + size].decode("ascii").split("\n")
            if len(values) != n:
                raise ValueError("a text column does not hold one value per tick")
            self.texts.append(values)
            at += size
        if at != len(body):
            raise ValueError("bytes after the last column")
        unknown = set(self.sids) - self.symbols.keys()
        if unknown:
            raise KeyError(f"undeclared symbol id {min(unknown)}")

    def _checked_ticks(self) -> list[MarketData] | None:
        """The block's ticks validated as columns, by the tick loader's own
        path (:func:`bot4.data.columns.build_batch`: exact fixed point, every
        check of the MarketData constructor, vectorised), or None when a cell
        or a check is one that path leaves to the constructor: then the block
        goes tick by tick, which names the tick. Blocks with marks or funding
        rates, several exchanges, or a symbol with blanks around it (which the
        loader would strip) go tick by tick too."""
        if len(self.texts) != 4:
            return None
        names = {sid: self.symbols[sid] for sid in dict.fromkeys(self.sids)}
        exchanges = {exchange for _, _, exchange in names.values()}
        if len(exchanges) != 1 or any(s != s.strip() for _, s, _ in names.values()):
            return None
        symbol_of = {sid: symbol for sid, (_, symbol, _) in names.items()}
        # The tick's own time in microseconds, parsed as the loader parses a
        # time cell (one datetime per distinct value).
        micros = list(map(add, map(floordiv, self.ts, repeat(1000)), self.offsets))
        batch = build_batch(
            str(self.path),
            [self.number],
            [cast(list[str], micros), *self.texts],
            list(map(symbol_of.__getitem__, self.sids)),
            "",
            exchanges.pop(),
            FileState(),
            cast(Callable[[str], datetime], _micros_time),
        )
        return None if batch is None else batch.ticks

    def items(self, models: bool) -> Iterator[tuple[int, str, Any]]:
        path, symbols, cids, prefix = self.path, self.symbols, self.cids, self.prefix
        if models:
            checked = self._checked_ticks()
            if checked is not None:
                topic_of = {sid: symbols[sid][0] for sid in dict.fromkeys(self.sids)}
                numbers = range(self.number, self.number + self.n)
                yield from zip(numbers, map(topic_of.__getitem__, self.sids), checked, strict=True)
                return
        bids, asks, lasts, volumes = self.texts[:4]
        n = self.n
        marks, rates = self.texts[4:] if len(self.texts) == 6 else ([""] * n, [""] * n)
        number = self.number
        for i, (sid, ts, seq, offset) in enumerate(
            zip(self.sids, self.ts, self.seqs, self.offsets, strict=True)
        ):
            topic, symbol, exchange = symbols[sid]
            try:
                stamp = _EPOCH + timedelta(microseconds=ts // 1000 + offset)
                mark, rate = marks[i] or None, rates[i] or None
                if models:
                    tick = MarketData(
                        symbol,
                        exchange,
                        Decimal(bids[i]),
                        Decimal(asks[i]),
                        Decimal(lasts[i]),
                        Decimal(volumes[i]),
                        stamp,
                        None if mark is None else Decimal(mark),
                        None if rate is None else Decimal(rate),
                    )
            except (Bot4Error, ArithmeticError, ValueError, TypeError, OverflowError) as exc:
                raise ConfigError(f"{path}:{number + i}: {topic}: unreadable tick: {exc}") from None
            if models:
                yield number + i, topic, tick
                continue
            yield (
                number + i,
                topic,
                {
                    "topic": topic,
                    "ts": ts,
                    "seq": seq,
                    "correlation_id": cids.get(i) or f"{prefix}{seq}",
                    "payload": {
                        "_t": "MarketData",
                        "symbol": symbol,
                        "exchange": exchange,
                        "bid": bids[i],
                        "ask": asks[i],
                        "last": lasts[i],
                        "volume": volumes[i],
                        "timestamp": stamp.isoformat(),
                        "mark": mark,
                        "funding_rate": rate,
                    },
                },
            )


# -- the format before: gzip JSON lines, ticks as short rows -----------------------------


def _lines(source: _Inflating, ticks: Ticks) -> Iterator[tuple[int, str, Any]]:
    path = source.path
    declared = _Declared()
    number = 0
    while True:
        number += 1
        line = source.readline(number)
        if not line:
            return
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            raise ConfigError(f"{path}:{number}: not a recording line: not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not a recording line: {exc.msg}") from None
        if isinstance(record, list):
            try:
                expanded = declared.read(record)
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}:{number}: not a recording line: {exc}") from None
            if expanded is None:
                continue
            record = expanded
        elif not isinstance(record, dict) or not isinstance(record.get("topic"), str):
            raise ConfigError(f"{path}:{number}: not a recording line (no topic)")
        topic = record["topic"]
        if topic.startswith("market.") and ticks != "records":
            if ticks == "skip":
                continue
            yield number, topic, _tick_model(path, number, record)
            continue
        yield number, topic, record


def _tick_model(path: Path, number: int, record: dict[str, Any]) -> MarketData:
    try:
        value = codec.decode(record.get("payload"))
    except (Bot4Error, ArithmeticError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"{path}:{number}: {record['topic']}: unreadable payload: {exc}"
        ) from None
    if not isinstance(value, MarketData):
        raise ConfigError(f"{path}:{number}: {record['topic']} without a MarketData")
    return value


class _Declared:
    """What the compact lines declared so far: symbols and the cid prefix."""

    def __init__(self) -> None:
        self.symbols: dict[int, tuple[str, str, str]] = {}
        self.prefix: str | None = None

    def read(self, row: list[Any]) -> dict[str, Any] | None:
        """A compact line: a tick as a record, or a declaration (None)."""
        kind = row[0]
        if kind == "m":
            return _expand(row, self.symbols, self.prefix)
        if kind == "M":
            sid, topic, symbol, exchange = row[1:5]
            if not all(isinstance(v, str) for v in (topic, symbol, exchange)):
                raise TypeError("names must be strings")
            self.symbols[int(sid)] = (topic, symbol, exchange)
        elif kind == "P" and isinstance(row[1], str):
            self.prefix = row[1]
        else:
            raise ValueError(f"unknown line kind {kind!r}")
        return None


def _expand(
    row: list[Any], symbols: dict[int, tuple[str, str, str]], prefix: str | None
) -> dict[str, Any]:
    """A compact tick back in the object form the codec wrote."""
    sid, ts, seq, bid, ask, last, volume = row[1:8]
    if not isinstance(ts, int) or not isinstance(seq, int):
        raise TypeError("ts and seq must be integers")
    topic, symbol, exchange = symbols[sid]
    stamp = row[8] if len(row) > 8 and row[8] is not None else _iso(ts)
    if len(row) > 9:
        cid = row[9]
    elif prefix is not None:
        cid = f"{prefix}{seq}"
    else:
        raise ValueError("a tick without a correlation id")
    return {
        "topic": topic,
        "ts": ts,
        "seq": seq,
        "correlation_id": cid,
        "payload": {
            "_t": "MarketData",
            "symbol": symbol,
            "exchange": exchange,
            "bid": bid,
            "ask": ask,
            "last": last,
            "volume": volume,
            "timestamp": stamp,
        },
    }


# -- recording a session -------------------------------------------------------------------


class SessionRecorder:
    """Streams every bus event to a recording while the block runs.

    Use as ``async with SessionRecorder(bus, path, encode=codec.encode):``.
    Ticks (``market.*``) come from the bus in batches, the rest one event at
    a time, in publish order. Like :class:`bot4.bus.EventRecorder` (which
    writes plain JSON lines), the subscription uses ``BLOCK`` so nothing is
    lost, and leaving the block writes every event queued so far, then
    closes the file (the gzip trailer is written then: a killed process
    leaves a truncated stream).
    """

    def __init__(self, bus: Bus, path: Path, *, encode: Encode, capacity: int = 4096) -> None:
        self._bus = bus
        self._path = path
        self._encode = encode
        self._capacity = capacity
        self._writer: CompactWriter | None = None
        self._sub: Subscription | None = None

    def _write(self, event: Event) -> None:
        assert self._writer is not None
        payload = event.payload
        if event.topic == BUS_ERROR and isinstance(payload, BusErrorInfo):
            payload = attrs.asdict(payload)
        self._writer.write(event.topic, payload, event.ts, event.seq, event.correlation_id)

    def _write_batch(self, batch: EventBatch) -> None:
        assert self._writer is not None
        self._writer.write_batch(batch)

    async def __aenter__(self) -> SessionRecorder:
        self._writer = await trio.to_thread.run_sync(
            functools.partial(CompactWriter, self._path, self._encode)
        )
        self._sub = self._bus.subscribe(
            "#",
            self._write,
            policy=Backpressure.BLOCK,
            capacity=self._capacity,
            name="recorder",
            on_batch=self._write_batch,
            batch_topics="market.#",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._sub is not None
        assert self._writer is not None
        try:
            if exc_type is None:
                await self._sub.drain()
        finally:
            self._sub.unsubscribe()
            self._writer.close()
