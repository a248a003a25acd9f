"""The session recording on disk: compact, gzip-compressed JSON lines.

A recording is what ``bot4 replay`` needs and nothing else: the session's
header, the exchange's events (the kernel's inputs: ticks, fills, order
updates) and the kernel's decisions (signals, risk verdicts, orders, risk
actions). Every one of those is an event the bus carried, so the recorder
keeps them all; nothing the kernel derives is republished on the bus.

Ticks are almost every line (two per second per symbol), so they are written
compactly. A symbol is declared once, ``["M", id, topic, symbol, exchange]``,
then each tick is ``["m", id, ts, seq, bid, ask, last, volume]`` with the
prices as the exact decimal strings the codec writes (no digit lost). The
tick's own timestamp is left out when it is the bus timestamp ``ts`` (it
always is for a kernel's tick), and its correlation id when it is the bus's
own (``prefix + seq``; the prefix is declared once, ``["P", prefix]``); a
tick that differs carries them as an 9th and 10th item. Every other event is
one JSON object per line as before (``topic``, ``ts``, ``seq``,
``correlation_id``, ``payload``), readable by eye after ``zcat``.

The stream is gzip-compressed (level 6: about as small as 9 at a fraction of
the CPU). Reading streams it line by line, from a gzip file or an old plain
``.jsonl`` one (told apart by the gzip magic, not the name), and hands back
every record in the old object form, so comparing two recordings does not
depend on how they were written. A damaged or truncated gzip stream, a line
longer than :data:`MAX_LINE` or a stream that inflates far beyond any
recording (a gzip bomb) is one :class:`~bot4.errors.ConfigError` naming the
file and line.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import attrs
import trio

from bot4.bus import BUS_ERROR, Backpressure, Bus, BusErrorInfo, Event, Subscription
from bot4.errors import ConfigError
from bot4.model import MarketData

__all__ = [
    "COMPRESSLEVEL",
    "FLUSH_TICKS",
    "MAX_LINE",
    "MAX_RATIO",
    "RECORDING",
    "CompactWriter",
    "SessionRecorder",
    "read_records",
]

RECORDING = "recording.jsonl.gz"
COMPRESSLEVEL = 6
# The longest line a recording may hold (a header carries every rule file).
MAX_LINE = 16 * 1024 * 1024
# Compact recordings compress about 10:1; past this ratio the file is not one.
MAX_RATIO = 200
# Ticks between two sync flushes (every other event is flushed at once).
FLUSH_TICKS = 4096
_RATIO_FLOOR = 16 * 1024 * 1024  # the ratio is checked past this many bytes
_GZIP_MAGIC = b"\x1f\x8b"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Record = tuple[int, dict[str, Any]]
Encode = Callable[[Any], Any]


def _iso(ns: int) -> str:
    """The codec's text for the instant ``ns`` (microsecond precision)."""
    return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()


class CompactWriter:
    """Writes events to a recording: ticks compactly, the rest as objects."""

    def __init__(self, path: Path, encode: Encode, *, compresslevel: int = COMPRESSLEVEL) -> None:
        self._encode = encode
        self._file: IO[str] = gzip.open(  # noqa: SIM115 (closed by close())
            path, "wt", encoding="utf-8", compresslevel=compresslevel
        )
        self._ids: dict[tuple[str, str, str], int] = {}
        self._prefix: str | None = None
        self._unflushed = 0
        self.written = 0

    def write(self, topic: str, payload: Any, ts: int, seq: int, correlation_id: str) -> None:
        if isinstance(payload, MarketData):
            self._tick(topic, payload, ts, seq, correlation_id)
            self._unflushed += 1
            if self._unflushed >= FLUSH_TICKS:
                self.flush()
        else:
            self._line(
                {
                    "topic": topic,
                    "ts": ts,
                    "seq": seq,
                    "correlation_id": correlation_id,
                    "payload": self._encode(payload),
                }
            )
            self.flush()  # a decision reaches the disk even if the process is killed
        self.written += 1

    def flush(self) -> None:
        """Everything written so far onto the disk as complete gzip data (a
        sync flush: a killed session's recording still holds its head)."""
        self._file.flush()
        self._unflushed = 0

    def _line(self, value: Any) -> None:
        self._file.write(json.dumps(value, separators=(",", ":")) + "\n")

    def _tick(self, topic: str, tick: MarketData, ts: int, seq: int, cid: str) -> None:
        key = (topic, tick.symbol, tick.exchange)
        sid = self._ids.get(key)
        if sid is None:
            sid = self._ids[key] = len(self._ids) + 1
            self._line(["M", sid, topic, tick.symbol, tick.exchange])
        if self._prefix is None and cid.endswith(str(seq)):
            self._prefix = cid[: len(cid) - len(str(seq))]
            self._line(["P", self._prefix])
        row: list[Any] = [
            "m",
            sid,
            ts,
            seq,
            str(tick.bid),
            str(tick.ask),
            str(tick.last),
            str(tick.volume),
        ]
        stamp = tick.timestamp.isoformat()
        own_stamp = ts % 1000 == 0 and stamp == _iso(ts)
        own_cid = self._prefix is not None and cid == f"{self._prefix}{seq}"
        if not own_cid:
            row += [None if own_stamp else stamp, cid]
        elif not own_stamp:
            row.append(stamp)
        self._line(row)

    def close(self) -> None:
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


def _lines(path: Path, f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(number, line) of a plain or gzip file, bounded in length and ratio."""
    if f.read(2) != _GZIP_MAGIC:
        f.seek(0)
        stream: IO[bytes] | gzip.GzipFile = f
        counted: _Counted | None = None
    else:
        f.seek(0)
        counted = _Counted(f)
        stream = gzip.GzipFile(fileobj=io.BufferedReader(counted), mode="rb")
    number = 0
    inflated = 0
    while True:
        number += 1
        try:
            line = stream.readline(MAX_LINE + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(f"{path}:{number}: damaged gzip stream: {exc}") from None
        if not line:
            return
        if len(line) > MAX_LINE:
            raise ConfigError(f"{path}:{number}: a line longer than {MAX_LINE} bytes")
        if counted is not None:
            inflated += len(line)
            if inflated > _RATIO_FLOOR and inflated > MAX_RATIO * max(counted.count, 1):
                raise ConfigError(
                    f"{path}:{number}: inflates more than {MAX_RATIO} times: "
                    "not a recording (a gzip bomb?)"
                )
        yield number, line


def read_records(path: Path) -> Iterator[Record]:
    """(line number, record) for every event of a recording, streamed, each
    record in the object form (topic, ts, seq, correlation_id, payload)."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recording: {exc.strerror or exc}") from None
    declared = _Declared()
    with f:
        for number, line in _lines(path, f):
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
                if expanded is not None:
                    yield number, expanded
                continue
            if not isinstance(record, dict) or not isinstance(record.get("topic"), str):
                raise ConfigError(f"{path}:{number}: not a recording line (no topic)")
            yield number, record


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
    """Streams every bus event to a compact recording while the block runs.

    Use as ``async with SessionRecorder(bus, path, encode=codec.encode):``.
    Like :class:`bot4.bus.EventRecorder` (which writes plain JSON lines), the
    subscription uses ``BLOCK`` so nothing is lost, and leaving the block
    writes every event queued so far, then closes the file (the gzip trailer
    is written then: a killed process leaves a truncated stream).
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

    async def __aenter__(self) -> SessionRecorder:
        self._writer = await trio.to_thread.run_sync(
            functools.partial(CompactWriter, self._path, self._encode)
        )
        self._sub = self._bus.subscribe(
            "#", self._write, policy=Backpressure.BLOCK, capacity=self._capacity, name="recorder"
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
