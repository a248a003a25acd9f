"""Versioned schema migrations for the journal, in both dialects.

Each :class:`Migration` has a version (1, 2, ...), a description and the SQL
for SQLite and for PostgreSQL. The table ``journal_schema_version`` holds one
row per applied migration; the journal's version is the highest. Opening a
journal whose version is *newer* than this bot4 knows raises
:class:`~bot4.journal.errors.SchemaTooNew` naming both versions, and nothing is
written: an old binary must never "repair" a newer journal.

SQLite journals are migrated when opened (the file belongs to bot4 and is
created on first use). PostgreSQL is migrated by ``bot4 journal migrate``; a
session refuses to start on a PostgreSQL journal that is behind and says so.

Quantities, prices and fees are stored as TEXT in both dialects: they are
Decimals and must come back digit for digit (``bot4.codec``'s rule).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.sqlite if dialect == "sqlite" else self.postgres


def _both(*statements: str) -> tuple[str, ...]:
    return statements


_V1 = _both(
    """CREATE TABLE journal_records (
        seq BIGINT PRIMARY KEY,
        ts_ns BIGINT NOT NULL,
        kind TEXT NOT NULL,
        client_order_id TEXT,
        symbol TEXT,
        rule TEXT,
        body TEXT NOT NULL,
        checksum TEXT NOT NULL
    )""",
    "CREATE INDEX journal_records_kind ON journal_records (kind, seq)",
    "CREATE INDEX journal_records_cid ON journal_records (client_order_id)",
    """CREATE TABLE journal_orders (
        client_order_id TEXT PRIMARY KEY,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        type TEXT NOT NULL,
        qty TEXT NOT NULL,
        status TEXT NOT NULL,
        filled_qty TEXT NOT NULL,
        exchange_order_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        body TEXT NOT NULL,
        intent_seq BIGINT,
        last_seq BIGINT NOT NULL
    )""",
    "CREATE INDEX journal_orders_status ON journal_orders (status)",
    """CREATE TABLE journal_fills (
        fill_id TEXT PRIMARY KEY,
        client_order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        price TEXT NOT NULL,
        fee TEXT NOT NULL,
        ts_ns BIGINT NOT NULL,
        body TEXT NOT NULL,
        seq BIGINT NOT NULL
    )""",
    "CREATE INDEX journal_fills_seq ON journal_fills (seq)",
    """CREATE TABLE journal_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        seq BIGINT NOT NULL
    )""",
)

_MARKET_SQLITE = (
    """CREATE TABLE market_data (
        symbol TEXT NOT NULL,
        ts_ns BIGINT NOT NULL,
        bid TEXT NOT NULL,
        ask TEXT NOT NULL,
        last TEXT NOT NULL,
        volume TEXT NOT NULL,
        PRIMARY KEY (symbol, ts_ns)
    )""",
)
# A hypertable when TimescaleDB is installed in the database, a plain table
# otherwise; the DO block decides at migration time, so one migration serves
# both. Integer time (ns) with one-day chunks.
_MARKET_POSTGRES = (
    """CREATE TABLE market_data (
        symbol TEXT NOT NULL,
        ts_ns BIGINT NOT NULL,
        bid NUMERIC NOT NULL,
        ask NUMERIC NOT NULL,
        last NUMERIC NOT NULL,
        volume NUMERIC NOT NULL,
        PRIMARY KEY (symbol, ts_ns)
    )""",
    """DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
            PERFORM create_hypertable('market_data', 'ts_ns',
                                      chunk_time_interval => 86400000000000);
        END IF;
    END
    $$""",
)

# Risk state that must outlive the process (bot4.journal.riskstate): one row
# per key, the latest value (peak equity, breaker, ladder latches, window
# resets), and the event times counted by the rules' windows, append-only,
# read back by kind and event time on a restart.
_RISK_STATE = _both(
    """CREATE TABLE journal_risk_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        ts_ns BIGINT NOT NULL,
        seq BIGINT NOT NULL
    )""",
    """CREATE TABLE journal_risk_events (
        seq BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        symbol TEXT NOT NULL,
        ts_ns BIGINT NOT NULL
    )""",
    "CREATE INDEX journal_risk_events_kind ON journal_risk_events (kind, ts_ns)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "records, orders, fills and state", _V1, _V1),
    Migration(
        2,
        "market data history (TimescaleDB hypertable if present)",
        _MARKET_SQLITE,
        _MARKET_POSTGRES,
    ),
    Migration(
        3,
        "risk state across restarts: peak equity, breaker, ladder, window events",
        _RISK_STATE,
        _RISK_STATE,
    ),
)
LATEST = MIGRATIONS[-1].version

VERSION_TABLE_SQL = """CREATE TABLE IF NOT EXISTS journal_schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
)"""


def pending(current: int) -> list[Migration]:
    """Migrations above ``current``, in order."""
    return [m for m in MIGRATIONS if m.version > current]
