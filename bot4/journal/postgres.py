"""The production journal: PostgreSQL through psycopg 3, with a connection pool.

Why the *sync* psycopg API from trio: psycopg's async classes
(``AsyncConnection``, ``psycopg_pool.AsyncConnectionPool``) run on asyncio
only; the psycopg project lists native asyncio (and gevent) support, not trio
(psycopg/psycopg2#1057 asks for trio and is open). So bot4 uses the
synchronous ``psycopg.Connection`` with ``psycopg_pool.ConnectionPool`` and
calls it from trio worker threads (:class:`bot4.journal.facade.Journal`:
``trio.to_thread.run_sync`` behind a ``CapacityLimiter(1)``). The trio loop
never blocks on the network, and the pool keeps connections warm.

Prepared statements: connections are made with ``prepare_threshold=0``, so
psycopg prepares every statement on its first use and the order path's
INSERTs are parsed and planned once per connection. Batches go through
``executemany``, which psycopg sends in pipeline mode (one round trip).

Durability: intents commit with ``synchronous_commit`` at the server's
setting (on: the WAL is flushed before COMMIT returns); batched records use
``SET LOCAL synchronous_commit = off`` (a server crash may lose the last
few hundred milliseconds of them, never corrupts; recovery re-reads the
exchange for what they said).

Schema: the tables live in the connection's ``search_path`` (``schema=``
sets it, ``bot4 journal migrate`` creates it). An *empty* schema (no journal
table at all: a fresh database) is migrated when opened, so a new deployment
starts without a manual step; a journal of an earlier version is migrated
only by :meth:`PostgresStore.migrate` (``bot4 journal migrate``): opening one
raises :class:`~bot4.journal.errors.SchemaBehind`, one that is newer
:class:`~bot4.journal.errors.SchemaTooNew`. A second writer on the same
schema is refused (a session-level advisory lock).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

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
from bot4.secrets import redact

__all__ = ["PostgresStore"]

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_DOWN_WAIT = 0.5  # seconds to wait for a connection while the server is down
_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(current_schema() || '.bot4_journal'))"


def _pg(sql: str, cache: dict[str, str] = {}) -> str:  # noqa: B006 - a deliberate cache
    out = cache.get(sql)
    if out is None:
        out = cache[sql] = sql.replace("?", "%s")
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _Tx:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self._conn.execute(_pg(sql), params)
        return list(cur.fetchall()) if cur.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(_pg(sql), rows)


class PostgresStore(Store):
    backend = "postgres"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        migrate: bool = False,
        lock: bool = False,
        intent_sync: str = "full",
        pool_size: int = 4,
        connect_timeout: float = 5.0,
        create: bool = True,
    ) -> None:
        super().__init__()
        self.location = redact(url) + (f" (schema {schema})" if schema else "")
        self.intent_sync = intent_sync
        self.schema = schema
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock_conn: psycopg.Connection[Any] | None = None
        # UTF8 whatever the server's default: a SQL_ASCII server hands text
        # back as bytes, which broke recovery (bytes to Decimal).
        kwargs: dict[str, Any] = {"prepare_threshold": 0, "client_encoding": "UTF8"}
        if schema is not None:
            if not _IDENT.match(schema):
                raise JournalError(f"schema {schema!r}: use lower-case letters, digits and _")
            kwargs["options"] = f"-c search_path={schema}"
        self._url = url
        self._kwargs = kwargs
        self._down = False  # the last call failed to reach the server
        self._wants_lock = False  # this store holds the writer's lock (lock=True)
        self.created = False  # an empty schema was given the journal's tables on open
        self._create = create  # may give an empty schema its tables (not the read commands)
        # One direct connection first: its error says why (refused, auth, no
        # database), where a pool would only time out.
        try:
            probe = psycopg.connect(url, connect_timeout=max(1, int(connect_timeout)), **kwargs)
        except psycopg.Error as exc:
            raise JournalUnavailable(
                f"cannot connect to the PostgreSQL journal at {self.location}: "
                f"{redact(_first_line(exc))}"
            ) from None
        probe.close()
        try:
            self._pool = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                kwargs=kwargs,
                open=False,
                name="bot4-journal",
                timeout=connect_timeout,
            )
            self._pool.open(wait=True, timeout=connect_timeout)
            self._inspect(migrate)
            if lock:
                self._take_lock()
            self._load_tail()
        except PoolTimeout as exc:
            self.close()
            raise JournalUnavailable(
                f"PostgreSQL journal at {self.location}: no connection: {_first_line(exc)}"
            ) from None
        except BaseException:
            self.close()
            raise

    def _inspect(self, migrate: bool) -> None:
        with self._raw() as conn:
            row = conn.execute(
                "SELECT current_schema(), to_regclass('journal_schema_version') IS NOT NULL,"
                " to_regclass('journal_records') IS NOT NULL"
            ).fetchone()
            assert row is not None
            current, has_version, has_records = row
            version = 0
            if has_version:
                got = conn.execute("SELECT MAX(version) FROM journal_schema_version").fetchone()
                version = int(got[0]) if got and got[0] is not None else 0
        if has_records and not has_version:
            raise JournalCorrupt(
                f"{self.location}: schema {current} has journal tables but no "
                "journal_schema_version: not a journal this bot4 wrote; refusing to touch it"
            )
        if version > LATEST:
            raise SchemaTooNew(self.location, version, LATEST)
        self.schema_version = version
        if version < LATEST:
            if not migrate and not has_version and self._create:  # empty: only to create
                self.migrate()
                self.created = True
                return
            if not migrate:
                raise SchemaBehind(
                    f"{self.location}: journal schema version {version}, this bot4 needs "
                    f"{LATEST}; run `bot4 journal migrate` (with BOT4_DATABASE_URL set)"
                )
            self.migrate()

    def _keep_lock(self) -> None:
        """After an outage: the lock's session is gone with the server that
        held it; take the lock again before writing, or refuse (another
        writer took it meanwhile)."""
        conn = self._lock_conn
        if conn is not None:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                conn.close()
                self._lock_conn = None
            else:
                return
        self._take_lock()

    def _take_lock(self) -> None:
        self._wants_lock = True
        conn = psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, int(_DOWN_WAIT + 0.5)),
            **self._kwargs,
        )
        row = conn.execute(_LOCK_SQL).fetchone()
        if not row or not row[0]:
            conn.close()
            raise JournalLocked(f"{self.location}: another bot4 process is writing this journal")
        self._lock_conn = conn

    @contextlib.contextmanager
    def _raw(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool is None:
            raise JournalError(f"{self.location}: the journal is closed")
        # While the server is known to be down, wait for a connection only
        # briefly: every order is refused meanwhile (rule journal), and each
        # would otherwise wait the whole connect timeout for its refusal.
        wait = _DOWN_WAIT if self._down else None
        try:
            if self._down and self._wants_lock:
                self._keep_lock()  # a restarted server forgot the lock: take it again
            with self._pool.connection(timeout=wait) as conn:
                yield conn
            self._down = False
        except psycopg.Error as exc:
            self._down = True
            raise JournalUnavailable(
                f"PostgreSQL journal at {self.location}: {redact(_first_line(exc))}"
            ) from exc

    def migrate(self) -> list[int]:
        applied: list[int] = []
        with self._raw() as conn:
            # Two migrators at once (two sessions starting on a fresh database):
            # the second waits, then finds nothing to do. The lock comes first,
            # keyed by the schema's name (it may not exist yet), so that the
            # CREATE statements never race.
            where = self.schema if self.schema is not None else "(search_path)"
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (where + ".bot4_migrate",))
            if self.schema is not None:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"', prepare=False)
            conn.execute(VERSION_TABLE_SQL, prepare=False)
            got = conn.execute("SELECT MAX(version) FROM journal_schema_version").fetchone()
            current = int(got[0]) if got and got[0] is not None else 0
            if current > LATEST:
                raise SchemaTooNew(self.location, current, LATEST)
            for m in pending(current):
                for statement in m.postgres:
                    conn.execute(statement, prepare=False)
                conn.execute(
                    "INSERT INTO journal_schema_version (version, description, applied_at)"
                    " VALUES (%s, %s, %s)",
                    (m.version, m.description, datetime.now(UTC).isoformat()),
                )
                applied.append(m.version)
                current = m.version
        self.schema_version = current
        return applied

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False, write: bool = True) -> Iterator[_Tx]:
        with self._raw() as conn:
            if write and not (durable and self.intent_sync == "full"):
                conn.execute("SET LOCAL synchronous_commit = off", prepare=False)
            yield _Tx(conn)

    def _num(self, value: Decimal) -> Any:
        return value

    def close(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
