"""Reading a session recording (written by :mod:`bot4.recording`, whose
docstring gives the format): streamed frame by frame, never whole.

Every record comes back in the object form (ticks expanded only if asked; a
replay gets them as validated :class:`~bot4.model.MarketData` straight from
the columns, through the loader's ``build_batch``, or skips them).
Recordings of the version before (gzip JSON lines, ticks as short ``["m",
...]`` rows) and plain ``.jsonl`` ones are still read, told apart by their
first bytes, not the name. A damaged or truncated stream, a frame or line
longer than :data:`~bot4.recording.MAX_LINE`, a stream that inflates far
beyond any recording (a gzip bomb), or a column that does not add up is one
:class:`~bot4.errors.ConfigError` naming the file and the event number (for
the older formats, the line number).
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from array import array
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import accumulate, repeat
from operator import add, floordiv
from pathlib import Path
from typing import IO, Any, cast

from bot4 import codec
from bot4.data.columns import FileState, build_batch
from bot4.errors import Bot4Error, ConfigError
from bot4.model import MarketData

# The format's constants and helpers live with the writer (one place says
# what the bytes are); these are the reader's share of them.
from bot4.recording import (
    _EPOCH,
    _GZIP_MAGIC,
    _RATIO_FLOOR,
    _SWAP,
    FLUSH_TICKS,
    MAGIC,
    MAX_LINE,
    MAX_RATIO,
    Record,
    Ticks,
    _iso,
    _micros_time,
)

__all__ = ["read_records", "read_stream"]


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
