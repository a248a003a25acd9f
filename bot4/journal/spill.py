"""The outage spill: records the journal could not take, kept on local disk
until it can, then written once, in order.

Why: with the database down, the kernel rightly refuses new orders (rule
``journal``), but the records queued meanwhile (those refusals, the
decisions, fills and updates of orders already out) must not be lost. A
batch whose write fails is appended here instead, fsynced, in the order the
writer queued it; memory holds at most the batch being written.

Exactly once. Every record a writer queues has an index (0, 1, 2, ... in
queue order). Each transaction that writes a writer's records also sets the
journal_state key ``writer:<token>`` to the index after its last record,
atomically with them. Replaying the spill reads that key *from the database*
first and skips every record below it, so a batch whose commit reached the
server though the client saw an error, a replay cut short by a crash, or the
same spill replayed twice after a restart never writes a record twice.

The file (``journal-spill.jsonl`` next to the session's output): a header
line naming the writer and the journal, then one line per record (its
index, kind, time, ids and body as the journal stores it). A torn last line
(the process died mid-write, before its fsync) is ignored: the records in it
were never acknowledged as kept. A spill of one journal is never written
into another (refused, naming both).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bot4 import codec
from bot4.journal.encoding import body_of
from bot4.journal.errors import JournalCorrupt, JournalError
from bot4.journal.records import Record, RecordKind
from bot4.journal.store import Store

__all__ = ["SPILL_FILE", "SpillFile", "mark_key", "replay_spill"]

SPILL_FILE = "journal-spill.jsonl"
_FORMAT = "bot4-journal-spill/1"


def mark_key(token: str) -> str:
    """The journal_state key holding how far a writer's records are written."""
    return f"writer:{token}"


class SpillFile:
    """One writer's spill file. ``append`` is fsynced before it returns."""

    def __init__(self, path: Path, token: str, journal: str) -> None:
        self.path = path
        self.token = token
        self.journal = journal  # the journal's location (redacted), as the header says
        self.count = 0  # records in the file (0: no file)
        self.first_index = -1

    @classmethod
    def for_writer(cls, path: Path, journal: str) -> SpillFile:
        """A new spill for a new writer (a fresh token)."""
        return cls(path, uuid.uuid4().hex, _where(journal))

    @classmethod
    def existing(cls, path: Path) -> SpillFile | None:
        """The spill an earlier run left at ``path``, or None."""
        try:
            with path.open("rb") as fh:
                first = fh.readline()
        except FileNotFoundError:
            return None
        if not first.endswith(b"\n"):  # died before the header was fsynced
            path.unlink(missing_ok=True)
            return None
        try:
            header = _header(first)
            spill = cls(path, str(header["writer"]), str(header["journal"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise JournalCorrupt(f"{path}:1: not a bot4 journal spill ({exc})") from None
        spill.count = sum(1 for _ in spill.lines())
        return spill

    @property
    def key(self) -> str:
        return mark_key(self.token)

    def append(self, start: int, records: Sequence[Record]) -> None:
        """Keep ``records`` (indices ``start``, ``start + 1``, ...), durably."""
        if not records:
            return
        lines: list[str] = []
        if self.count == 0:
            header = {"format": _FORMAT, "writer": self.token, "journal": self.journal}
            lines.append(json.dumps(header, sort_keys=True))
            self.first_index = start
        for i, rec in enumerate(records, start):
            line = [i, rec.kind.value, rec.ts_ns, rec.client_order_id, rec.symbol, rec.rule]
            lines.append(json.dumps([*line, body_of(rec.payload)], separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        # O_APPEND + fsync: what returns is on disk, after what came before.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.count == 0:
            _fsync_dir(self.path.parent)  # the new file's name survives a power loss too
        self.count += len(records)

    def lines(self) -> Iterator[tuple[int, list[Any]]]:
        """(line number, fields) of each complete record line, in file order."""
        with self.path.open("rb") as fh:
            fh.readline()  # the header
            for number, raw in enumerate(fh, 2):
                if not raw.endswith(b"\n"):
                    return  # torn by a crash before its fsync: never kept
                try:
                    fields = _record_line(raw)
                except ValueError as exc:
                    raise JournalCorrupt(f"{self.path}:{number}: {exc}") from None
                yield number, fields

    def chunks(self, after: int, size: int) -> Iterator[tuple[int, list[Record]]]:
        """The records with an index >= ``after``, ``size`` at a time, each
        chunk with the index after its last record."""
        chunk: list[Record] = []
        end = after
        for number, (index, kind, ts, cid, symbol, rule, body) in self.lines():
            if index < after:
                continue  # written before (the journal's mark says so)
            try:
                payload = codec.decode(json.loads(body))
                record = Record(RecordKind(kind), payload, int(ts), cid, symbol, rule)
            except (ValueError, TypeError, KeyError) as exc:
                raise JournalCorrupt(f"{self.path}:{number}: {exc}") from None
            chunk.append(record)
            end = int(index) + 1
            if len(chunk) >= size:
                yield end, chunk
                chunk = []
        if chunk:
            yield end, chunk

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.count = 0
        self.first_index = -1


def _where(location: str) -> str:
    """A journal's location to compare: a file by its absolute path (the
    next run may name it from another folder), a URL as it is (redacted)."""
    if "://" in location:
        return location
    return str(Path(location).resolve())


def _header(raw: bytes) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError("no spill header")
    return header


def _record_line(raw: bytes) -> list[Any]:
    fields = json.loads(raw)
    if not isinstance(fields, list) or len(fields) != 7:
        raise ValueError("not a record line")
    return fields


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # a file system that cannot sync a folder (the file itself is synced)
    finally:
        os.close(fd)


def replay_spill(store: Store, spill: SpillFile, chunk: int = 1024) -> int:
    """Write the spilled records not yet in the journal, in order, each chunk
    in one durable transaction with its mark; remove the file after. Returns
    how many records were written (0 when all of them were already)."""
    if _where(spill.journal) != _where(store.location):
        raise JournalError(
            f"{spill.path}: records kept for the journal {spill.journal}, not "
            f"{store.location}; write them there (run with that journal) or move the file away"
        )
    done = store.state_value(spill.key)
    written = 0
    for end, records in spill.chunks(int(done or 0), max(1, chunk)):
        store.append(records, durable=True, marks=((spill.key, json.dumps(end)),))
        written += len(records)
    spill.remove()
    return written
