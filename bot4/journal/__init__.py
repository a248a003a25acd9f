"""The durable journal: every order intent (written *before* the exchange hears
of it), exchange acknowledgement, fill, position change, risk decision (with
the rule that decided) and breaker change, so that a restarted bot knows what
it did and reconciles with the exchange instead of trading twice.

Backends: SQLite (default, embedded: ``<out>/journal.sqlite``) and PostgreSQL
(psycopg 3, pooled). Pick one with a target string::

    open_store("bot4-out/journal.sqlite")                # SQLite
    open_store("postgresql://bot4@db:5432/trading")      # PostgreSQL

Modules, one job each: :mod:`~bot4.journal.errors`, :mod:`~bot4.journal.records`
(record kinds, records, checksums), :mod:`~bot4.journal.encoding` (a payload as
exact JSON), :mod:`~bot4.journal.rows` (a batch as table rows, one
transaction), :mod:`~bot4.journal.store` (the synchronous store every backend
extends), :mod:`~bot4.journal.verify`, :mod:`~bot4.journal.facade` (the trio
face), the backends :mod:`~bot4.journal.sqlite` and :mod:`~bot4.journal.postgres`,
:mod:`~bot4.journal.migrations`, :mod:`~bot4.journal.riskstate`,
:mod:`~bot4.journal.recovery`, :mod:`~bot4.journal.writer` (the batching writer
and the write-ahead protocols) and :mod:`~bot4.journal.service` (the session
service behind ``bot4 run``). :mod:`~bot4.journal.base` keeps the old import
names.
"""

from __future__ import annotations

import os
from pathlib import Path

from bot4.journal.errors import (
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalUnavailable,
    RecoveryError,
    SchemaBehind,
    SchemaTooNew,
)
from bot4.journal.facade import Journal
from bot4.journal.records import FillRow, OrderRow, Record, RecordKind, StoredRecord
from bot4.journal.store import Store
from bot4.journal.verify import VerifyReport
from bot4.secrets import env_value

ENV_URL = "BOT4_DATABASE_URL"
DEFAULT_FILE = "journal.sqlite"

__all__ = [
    "DEFAULT_FILE",
    "ENV_URL",
    "FillRow",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalUnavailable",
    "OrderRow",
    "Record",
    "RecordKind",
    "RecoveryError",
    "SchemaBehind",
    "SchemaTooNew",
    "Store",
    "StoredRecord",
    "VerifyReport",
    "is_postgres",
    "open_store",
    "resolve_target",
]


def is_postgres(target: str | os.PathLike[str]) -> bool:
    return str(target).startswith(("postgresql://", "postgres://"))


def resolve_target(configured: str | None, out: str | os.PathLike[str]) -> str | None:
    """Where a session journals: the config's ``journal`` value ("off" for
    none, a path, or a postgresql:// URL), else ``$BOT4_DATABASE_URL``, else
    ``<out>/journal.sqlite``."""
    if configured is not None:
        return None if configured.strip().lower() in ("off", "none", "false", "") else configured
    # Not a secret as a whole (its host and port name the server in errors);
    # a password inside it is masked wherever it is printed (bot4.secrets.redact).
    url = env_value(ENV_URL, secret=False).strip()  # or the file $BOT4_DATABASE_URL_FILE names
    return url or str(Path(out) / DEFAULT_FILE)


def open_store(
    target: str | os.PathLike[str],
    *,
    migrate: bool | None = None,
    lock: bool = False,
    intent_sync: str = "full",
    schema: str | None = None,
    create: bool = True,
) -> Store:
    """Open a journal. ``migrate`` defaults to True for SQLite (the file is
    bot4's own) and False for PostgreSQL (``bot4 journal migrate`` does it).
    ``lock`` refuses a second writer. Raises a :class:`JournalError` with a
    message naming the target for every refusal."""
    if intent_sync not in ("full", "normal"):
        raise JournalError(f"intent_sync must be 'full' or 'normal', not {intent_sync!r}")
    text = str(target)
    if is_postgres(text):
        from bot4.journal.postgres import PostgresStore

        return PostgresStore(
            text, schema=schema, migrate=bool(migrate), lock=lock, intent_sync=intent_sync
        )
    if "://" in text and not text.startswith("sqlite:///"):
        raise JournalUnavailable(
            f"{text}: unknown journal URL; use a file path, sqlite:///path or postgresql://..."
        )
    from bot4.journal.sqlite import SqliteStore

    path = text.removeprefix("sqlite://")
    return SqliteStore(
        path,
        migrate=True if migrate is None else migrate,
        lock=lock,
        intent_sync=intent_sync,
        create=create,
    )
