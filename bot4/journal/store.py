"""The synchronous journal store: what every backend shares.

A :class:`Store` is one writer's view of a journal: it knows where the log
ends (the next seq and the checksum to chain on), appends a batch of records
in one transaction (:mod:`bot4.journal.rows`) and reads the log and its
tables back. A backend (:mod:`bot4.journal.sqlite`, :mod:`bot4.journal.postgres`)
supplies the connection and transactions (:meth:`Store._tx`): ``durable``
transactions commit at the intent durability (``intent_sync``), the others
at the batched records' (see each backend's docstring).
"""

from __future__ import annotations

import abc
import contextlib
import json
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from bot4 import codec
from bot4.journal.records import FillRow, OrderRow, Record, StoredRecord, ns_of
from bot4.journal.riskstate import (
    RiskEventRow,
    RiskStateRow,
    RunHistory,
    read_history,
    read_risk_events,
    read_risk_state,
)
from bot4.journal.rows import Tx, build_rows, write_rows
from bot4.journal.verify import VerifyReport, verify
from bot4.model import MarketData

__all__ = ["RECORD_COLUMNS", "Store"]

RECORD_COLUMNS = "seq, ts_ns, kind, client_order_id, symbol, rule, body, checksum"
_ORDER_COLUMNS = "body, status, filled_qty, exchange_order_id, origin, intent_seq, last_seq"


class Store(abc.ABC):
    """A journal backend: synchronous, one writer. Shared SQL lives here; a
    backend supplies connections and transactions (:meth:`_tx`)."""

    backend: str = ""
    location: str = ""  # path or redacted URL, for messages
    # Commit of a write-ahead intent: "full" (survives power loss: fsync /
    # synchronous_commit) or "normal" (survives a crash of the bot process).
    intent_sync: str = "full"

    def __init__(self) -> None:
        self._seq = 0
        self._last_checksum = ""
        self.schema_version = 0
        # After a failed append the log's end is re-read before the next one:
        # a commit can reach the server though the client saw an error.
        self._tail_unknown = False

    # -- to implement ---------------------------------------------------------

    @abc.abstractmethod
    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False, write: bool = True) -> Iterator[Tx]: ...

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def reading(self) -> contextlib.AbstractContextManager[Tx]:
        """A read-only transaction (for readers outside the store)."""
        return self._tx(write=False)

    def integrity(self) -> str:
        """The backend's own consistency check ("ok" when fine)."""
        return "ok"

    # -- shared ---------------------------------------------------------------

    def _load_tail(self) -> None:
        """Where the log ends: the next seq and the checksum to chain on."""
        with self._tx(write=False) as tx:
            rows = tx.execute("SELECT seq, checksum FROM journal_records ORDER BY seq DESC LIMIT 1")
        if rows:
            self._seq, self._last_checksum = int(rows[0][0]), str(rows[0][1])
        else:
            self._seq, self._last_checksum = 0, ""

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(
        self,
        records: Sequence[Record],
        *,
        durable: bool = False,
        marks: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Write ``records`` in one transaction; returns the last seq. With
        ``durable`` the commit uses the intent durability (see intent_sync).
        ``marks`` are journal_state (key, JSON value) pairs set in the same
        transaction (the writer's progress, :mod:`bot4.journal.spill`).
        Nothing of the batch is written unless all of it is."""
        if not records and not marks:
            return self._seq
        if self._tail_unknown:
            self._load_tail()
            self._tail_unknown = False
        rows = build_rows(records, self._seq, self._last_checksum)
        rows.kv.extend((key, value, rows.seq) for key, value in marks)
        try:
            with self._tx(durable=durable) as tx:
                write_rows(tx, rows)
        except BaseException:
            self._tail_unknown = True
            raise
        self._seq, self._last_checksum = rows.seq, rows.checksum
        return rows.seq

    def append_market(self, ticks: Sequence[MarketData]) -> None:
        """Market data history (``market_data``); a tick seen twice is kept once."""
        if not ticks:
            return
        rows = [
            (
                t.symbol,
                ns_of(t.timestamp),
                self._num(t.bid),
                self._num(t.ask),
                self._num(t.last),
                self._num(t.volume),
            )
            for t in ticks
        ]
        with self._tx() as tx:
            tx.executemany(
                "INSERT INTO market_data (symbol, ts_ns, bid, ask, last, volume)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (symbol, ts_ns) DO NOTHING",
                rows,
            )

    def _num(self, value: Decimal) -> Any:
        return str(value)

    # -- reads ----------------------------------------------------------------

    def orders(self, statuses: Sequence[str] | None = None) -> list[OrderRow]:
        sql = f"SELECT {_ORDER_COLUMNS} FROM journal_orders"
        params: list[Any] = []
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params.extend(statuses)
        sql += " ORDER BY last_seq"
        with self._tx(write=False) as tx:
            rows = tx.execute(sql, params)
        return [
            OrderRow(
                order=codec.decode(json.loads(r[0])),
                status=r[1],
                filled_qty=Decimal(r[2]),
                exchange_order_id=r[3],
                origin=r[4],
                intent_seq=None if r[5] is None else int(r[5]),
                last_seq=int(r[6]),
            )
            for r in rows
        ]

    def fills(self, since_seq: int = 0) -> list[FillRow]:
        with self._tx(write=False) as tx:
            rows = tx.execute(
                "SELECT body, seq FROM journal_fills WHERE seq > ? ORDER BY seq", (since_seq,)
            )
        return [FillRow(codec.decode(json.loads(r[0])), int(r[1])) for r in rows]

    def state(self) -> dict[str, Any]:
        with self._tx(write=False) as tx:
            rows = tx.execute("SELECT key, value FROM journal_state")
        return {str(k): json.loads(v) for k, v in rows}

    def state_value(self, key: str) -> Any:
        """One journal_state value (decoded), None when the key is absent."""
        with self._tx(write=False) as tx:
            rows = tx.execute("SELECT value FROM journal_state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def risk_state(self, since_seq: int = 0) -> dict[str, RiskStateRow]:
        """The latest value of every risk-state key written after ``since_seq``."""
        with self._tx(write=False) as tx:
            return read_risk_state(tx, since_seq)

    def risk_events(
        self, kind: str, *, since_seq: int = 0, horizon_ns: int | None = None
    ) -> list[RiskEventRow]:
        with self._tx(write=False) as tx:
            return read_risk_events(tx, kind, since_seq=since_seq, horizon_ns=horizon_ns)

    def history(self, after_seq: int, before_seq: int) -> RunHistory:
        """What the runs between two seqs did (see :class:`RunHistory`)."""
        with self._tx(write=False) as tx:
            return read_history(tx, after_seq, before_seq)

    def records(
        self,
        *,
        kinds: Sequence[str] | None = None,
        symbol: str | None = None,
        client_order_id: str | None = None,
        rule: str | None = None,
        since_seq: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[StoredRecord]:
        where: list[str] = []
        params: list[Any] = []
        if kinds:
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(kinds)
        for column, value in (
            ("symbol", symbol),
            ("client_order_id", client_order_id),
            ("rule", rule),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since_seq is not None:
            where.append("seq > ?")
            params.append(since_seq)
        sql = f"SELECT {RECORD_COLUMNS} FROM journal_records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._tx(write=False) as tx:
            rows = tx.execute(sql, params)
        return [StoredRecord(int(r[0]), int(r[1]), *r[2:]) for r in rows]

    def iter_records(self, chunk: int = 5000) -> Iterator[StoredRecord]:
        """Every record in seq order, read in chunks (constant memory)."""
        after = -1
        while True:
            with self._tx(write=False) as tx:
                rows = tx.execute(
                    f"SELECT {RECORD_COLUMNS} FROM journal_records WHERE seq > ?"
                    f" ORDER BY seq LIMIT {int(chunk)}",
                    (after,),
                )
            if not rows:
                return
            for r in rows:
                yield StoredRecord(int(r[0]), int(r[1]), *r[2:])
            after = int(rows[-1][0])

    def verify(self) -> VerifyReport:
        """What ``bot4 journal verify`` checks (:mod:`bot4.journal.verify`)."""
        return verify(self)
