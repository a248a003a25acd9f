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

Reading is :mod:`bot4.recording_read` (``read_stream``, ``read_records``):
streamed frame by frame, every older format still read, anything damaged or
hostile one :class:`~bot4.errors.ConfigError` naming the file and the event.
"""

from __future__ import annotations

import functools
import gzip
import json
import sys
from array import array
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import attrgetter, floordiv, sub
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import attrs
import trio

from bot4.bus import BUS_ERROR, Backpressure, Bus, BusErrorInfo, Event, EventBatch, Subscription
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
