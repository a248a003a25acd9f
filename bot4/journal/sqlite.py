"""The embedded journal: one SQLite file in WAL mode, no server.

Threads. The store owns one connection (``check_same_thread=False``); the
:class:`~bot4.journal.facade.Journal` facade runs every call in a trio worker
thread behind a ``CapacityLimiter(1)``, so the connection is used by one
thread at a time, and calls never overlap. Readers in other processes (``bot4
journal show`` while a session runs) see committed data: WAL lets them read
while the writer writes.

Durability. WAL with ``synchronous=NORMAL`` for the batched records: a commit
survives a crash or kill of the bot process (it is in the WAL, handed to the
OS), but the last commits may be lost if the machine loses power. Write-ahead
intents commit with ``synchronous=FULL`` by default (``intent_sync="full"``):
the WAL is fsynced before ``place_order`` runs, so an intent survives power
loss too. That costs one fsync per order (milliseconds on most disks); the
session uses "normal" for a venue whose own state does not survive the
process (the in-memory paper exchange), where the fsync would buy nothing.

Safety. A file that is not SQLite, is damaged, or is another program's SQLite
database is refused before anything is written (not even the journal mode is
changed). A second writer on the same file is refused (``<file>.lock``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bot4.journal.errors import (
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalUnavailable,
    SchemaBehind,
    SchemaTooNew,
)
from bot4.journal.migrations import LATEST, VERSION_TABLE_SQL, pending
from bot4.journal.store import Store

if sys.platform != "win32":
    import fcntl

__all__ = ["SqliteStore"]


class _Tx:
    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        migrate: bool = True,
        lock: bool = False,
        intent_sync: str = "full",
        create: bool = True,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        self.intent_sync = intent_sync
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._sync = ""
        if self.path.is_dir():
            raise JournalUnavailable(f"{self.path}: is a folder, not a journal file")
        if not self.path.parent.is_dir():
            raise JournalUnavailable(f"{self.path}: the folder {self.path.parent} does not exist")
        exists = self.path.exists()
        if not exists and not create:
            raise JournalUnavailable(f"{self.path}: no journal here")
        try:
            mode = "rw" if exists else "rwc"
            try:
                self._conn = sqlite3.connect(
                    f"file:{quote(str(self.path.resolve()))}?mode={mode}",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=10.0,
                )
            except sqlite3.Error as exc:
                raise JournalUnavailable(f"{self.path}: cannot open: {exc}") from None
            self._inspect()
            if lock:
                self._lock()
            if self.schema_version < LATEST:
                if not migrate:
                    raise SchemaBehind(  # noqa: TRY301 - closed by the handler below
                        f"{self.path}: journal schema version {self.schema_version}, this bot4 "
                        f"needs {LATEST}; run `bot4 journal migrate {self.path}`"
                    )
                self._conn.execute("PRAGMA journal_mode=WAL")
                self.migrate()
            else:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._load_tail()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        if sys.platform == "win32":  # pragma: no cover - no writer lock on Windows
            return
        fd = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalLocked(
                f"{self.path}: another bot4 process is writing this journal"
            ) from None
        self._lock_fd = fd

    def _inspect(self) -> None:
        """Refuse anything that is not a bot4 journal this bot4 can write,
        reading only."""
        assert self._conn is not None
        try:
            tables = {
                str(r[0])
                for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if not tables:
                self.schema_version = 0
                return
            if "journal_schema_version" not in tables:
                shown = ", ".join(sorted(tables)[:8])
                raise JournalCorrupt(
                    f"{self.path}: a SQLite database, but not a bot4 journal (tables: {shown}); "
                    "refusing to write to it"
                )
            row = self._conn.execute("SELECT MAX(version) FROM journal_schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalCorrupt(
                f"{self.path}: not a SQLite database, or a damaged one ({exc}); left untouched"
            ) from None
        version = int(row[0]) if row and row[0] is not None else 0
        if version > LATEST:
            raise SchemaTooNew(str(self.path), version, LATEST)
        self.schema_version = version

    def migrate(self) -> list[int]:
        conn = self._connection()
        applied: list[int] = []
        for m in pending(self.schema_version):
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(VERSION_TABLE_SQL)
                for statement in m.sqlite:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO journal_schema_version (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (m.version, m.description, datetime.now(UTC).isoformat()),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self.schema_version = m.version
            applied.append(m.version)
        return applied

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False, write: bool = True) -> Iterator[_Tx]:
        conn = self._connection()
        try:
            if write:
                want = "FULL" if durable and self.intent_sync == "full" else "NORMAL"
                if want != self._sync:
                    conn.execute(f"PRAGMA synchronous={want}")
                    self._sync = want
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn.execute("BEGIN")
        except sqlite3.Error as exc:
            raise JournalUnavailable(f"{self.path}: {exc}") from exc
        try:
            yield _Tx(conn)
        except BaseException as exc:
            conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise JournalUnavailable(f"{self.path}: {exc}") from exc
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise JournalUnavailable(f"{self.path}: commit failed: {exc}") from exc

    def integrity(self) -> str:
        rows = self._connection().execute("PRAGMA quick_check").fetchall()
        text = "; ".join(str(r[0]) for r in rows)
        return "ok" if text == "ok" else text

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
