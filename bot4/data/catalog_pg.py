"""The market-data catalog in PostgreSQL: ``bot4 data download --to postgresql://...``.

Two tables, created on first use:

* ``bot4_ohlcv (exchange, market_type, symbol, timeframe, time, open, high,
  low, close, volume)``, primary key (exchange, symbol, timeframe, time);
* ``bot4_trades (exchange, market_type, symbol, time, id, price, amount,
  side)``, primary key (exchange, symbol, id, time).

``time`` is ``timestamptz`` (millisecond precision), prices and sizes
``double precision`` (the Parquet catalog's float64, with the same exactness
argument). When the database has the ``timescaledb`` extension (installed, or
available and creatable by this user) both tables become hypertables on
``time`` (chunks of a day for candles and an hour for trades); otherwise they
are plain tables with a BRIN index on ``time``, which suits rows appended in
time order at a few kilobytes of index per gigabyte. Which one was made is
:attr:`PgStore.layout` (``hypertable`` or ``brin``).

A write copies the rows into a temporary table and merges them with
``INSERT ... ON CONFLICT DO UPDATE`` (the newer row wins, as in the Parquet
catalog), in one transaction: a failed write stores nothing. The summary of
a series (first, last, rows, gaps) is computed by the database when asked;
the tables are the manifest.

:class:`PgStore` has the methods :func:`bot4.data.catalog_download.download`
uses (``times``, ``write``, ``refresh``, ``info``, ``series``), so the same
downloader fills either store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa

from bot4.data.catalog import MANIFEST_GAPS, Gap, SeriesInfo, SeriesKey, _conform
from bot4.errors import ConfigError

__all__ = ["PgStore", "is_database_url"]


def is_database_url(location: str | None) -> bool:
    return location is not None and location.startswith(("postgresql://", "postgres://"))


_OHLCV = """
CREATE TABLE IF NOT EXISTS bot4_ohlcv (
    exchange text NOT NULL,
    market_type text NOT NULL,
    symbol text NOT NULL,
    timeframe text NOT NULL,
    time timestamptz NOT NULL,
    open double precision NOT NULL,
    high double precision NOT NULL,
    low double precision NOT NULL,
    close double precision NOT NULL,
    volume double precision NOT NULL,
    PRIMARY KEY (exchange, symbol, timeframe, time)
)"""
_TRADES = """
CREATE TABLE IF NOT EXISTS bot4_trades (
    exchange text NOT NULL,
    market_type text NOT NULL,
    symbol text NOT NULL,
    time timestamptz NOT NULL,
    id bigint NOT NULL,
    price double precision NOT NULL,
    amount double precision NOT NULL,
    side text NOT NULL,
    PRIMARY KEY (exchange, symbol, id, time)
)"""


class PgStore:
    """The catalog's tables in the database at ``url`` (module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.root = _redacted(url)  # what messages show, as Catalog.root
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise ConfigError(f"{self.root}: cannot connect: {_redacted(first)}") from None
        self.layout = self._create()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timescale(self) -> bool:
        with self._conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
            if cur.fetchone() is not None:
                return True
            cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
            if cur.fetchone() is None:
                return False
            try:
                cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            except psycopg.Error:
                return False  # available but not ours to create: plain tables
            return True

    def _create(self) -> str:
        timescale = self._timescale()
        with self._conn.cursor() as cur:
            cur.execute(_OHLCV)
            cur.execute(_TRADES)
            if timescale:
                cur.execute(
                    "SELECT create_hypertable('bot4_ohlcv', 'time', if_not_exists => TRUE, "
                    "chunk_time_interval => INTERVAL '1 day', migrate_data => TRUE)"
                )
                cur.execute(
                    "SELECT create_hypertable('bot4_trades', 'time', if_not_exists => TRUE, "
                    "chunk_time_interval => INTERVAL '1 hour', migrate_data => TRUE)"
                )
                return "hypertable"
            cur.execute(
                "CREATE INDEX IF NOT EXISTS bot4_ohlcv_time_brin ON bot4_ohlcv USING brin (time)"
            )
            cur.execute(
                "CREATE INDEX IF NOT EXISTS bot4_trades_time_brin ON bot4_trades USING brin (time)"
            )
        return "brin"

    # --- the store interface ------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        yield  # the database orders concurrent writers itself

    def write(self, key: SeriesKey, table: pa.Table, *, update_manifest: bool = True) -> int:
        """Merge ``table`` into the series; returns how many rows were new."""
        del update_manifest  # the tables are the manifest
        table = _conform(table, key.schema)
        if table.num_rows == 0:
            return 0
        ms = np.asarray(table.column("time").cast(pa.int64()).to_numpy(), dtype=np.int64)
        columns = [table.column(n).to_pylist() for n in key.schema.names[1:]]
        with self._conn.transaction(), self._conn.cursor() as cur:
            if key.trades:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS bot4_trades_in (LIKE bot4_trades) "
                    "ON COMMIT DELETE ROWS"
                )
                copy = (
                    "COPY bot4_trades_in (exchange, market_type, symbol, time, id, price, "
                    "amount, side) FROM STDIN"
                )
            else:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS bot4_ohlcv_in (LIKE bot4_ohlcv) "
                    "ON COMMIT DELETE ROWS"
                )
                copy = (
                    "COPY bot4_ohlcv_in (exchange, market_type, symbol, timeframe, time, open, "
                    "high, low, close, volume) FROM STDIN"
                )
            head = (
                (key.exchange, key.market_type, key.symbol)
                if key.trades
                else (key.exchange, key.market_type, key.symbol, key.timeframe)
            )
            with cur.copy(copy) as sink:
                for i, t in enumerate(ms.tolist()):
                    sink.write_row((*head, _stamp(t), *(c[i] for c in columns)))
            if key.trades:
                cur.execute(
                    "INSERT INTO bot4_trades SELECT DISTINCT ON (exchange, symbol, id, time) * "
                    "FROM bot4_trades_in ORDER BY exchange, symbol, id, time "
                    "ON CONFLICT (exchange, symbol, id, time) DO UPDATE SET "
                    "price = EXCLUDED.price, amount = EXCLUDED.amount, side = EXCLUDED.side "
                    "RETURNING (xmax = 0)"
                )
            else:
                cur.execute(
                    "INSERT INTO bot4_ohlcv SELECT DISTINCT ON (exchange, symbol, timeframe, "
                    "time) * FROM bot4_ohlcv_in ORDER BY exchange, symbol, timeframe, time "
                    "ON CONFLICT (exchange, symbol, timeframe, time) DO UPDATE SET "
                    "open = EXCLUDED.open, high = EXCLUDED.high, low = EXCLUDED.low, "
                    "close = EXCLUDED.close, volume = EXCLUDED.volume "
                    "RETURNING (xmax = 0)"
                )
            return sum(1 for (inserted,) in cur.fetchall() if inserted)

    def times(self, key: SeriesKey) -> np.ndarray[Any, np.dtype[np.int64]]:
        where, params = _where(key)
        # Table and column names are constants here; values go as parameters.
        table = "bot4_trades" if key.trades else "bot4_ohlcv"
        with self._conn.cursor() as cur:
            cur.execute(
                f"SELECT (extract(epoch FROM time) * 1000)::bigint FROM {table} "
                f"WHERE {where} ORDER BY time",
                params,
            )
            return np.array([r[0] for r in cur.fetchall()], dtype=np.int64)

    def refresh(self, keys: Sequence[SeriesKey]) -> list[SeriesInfo]:
        return [info for key in keys if (info := self.info(key)) is not None]

    def info(self, key: SeriesKey) -> SeriesInfo | None:
        where, params = _where(key)
        table = "bot4_trades" if key.trades else "bot4_ohlcv"
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT (extract(epoch FROM min(time)) * 1000)::bigint, "
                "(extract(epoch FROM max(time)) * 1000)::bigint, count(*), "
                "count(DISTINCT (time AT TIME ZONE 'UTC')::date) "
                f"FROM {table} WHERE {where}",
                params,
            )
            row = cur.fetchone()
            assert row is not None
            first, last, rows, days = row
            if not rows:
                return None
            gaps: list[Gap] = []
            step = key.step_ms
            if step is not None:
                cur.execute(
                    "SELECT prev, cur FROM (SELECT "
                    "(extract(epoch FROM lag(time) OVER (ORDER BY time)) * 1000)::bigint AS prev, "
                    "(extract(epoch FROM time) * 1000)::bigint AS cur "
                    f"FROM {table} WHERE {where}) s "
                    "WHERE cur - prev > %s ORDER BY cur",
                    (*params, step),
                )
                gaps = [
                    Gap(int(p) + step, int(c) - step, (int(c) - int(p)) // step - 1)
                    for p, c in cur.fetchall()
                ]
        return SeriesInfo(
            key,
            int(first),
            int(last),
            int(rows),
            int(days),
            sum(g.missing for g in gaps),
            tuple(gaps[:MANIFEST_GAPS]),
            len(gaps),
        )

    def series(self) -> list[SeriesInfo]:
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT DISTINCT exchange, market_type, symbol, timeframe FROM bot4_ohlcv "
                "UNION SELECT DISTINCT exchange, market_type, symbol, 'trades' FROM bot4_trades"
            )
            keys = sorted(SeriesKey(*row) for row in cur.fetchall())
        return [info for key in keys if (info := self.info(key)) is not None]

    def rescan(self) -> list[SeriesInfo]:
        return self.series()


def _where(key: SeriesKey) -> tuple[str, tuple[Any, ...]]:
    if key.trades:
        return "exchange = %s AND symbol = %s", (key.exchange, key.symbol)
    return (
        "exchange = %s AND symbol = %s AND timeframe = %s",
        (key.exchange, key.symbol, key.timeframe),
    )


def _stamp(ms: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


def _redacted(url: str) -> str:
    from bot4.secrets import redact

    return redact(url)
