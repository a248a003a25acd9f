"""The journal's interface and record types, and the SQL both backends share.

A journal is an append-only log of :class:`Record` objects (``journal_records``:
sequence number, event time, kind, client order id, symbol, deciding rule,
the payload as exact JSON from :mod:`bot4.codec`, and a checksum chained over
the previous record's), plus three tables derived from the log in the same
transaction, so that recovery does not have to replay it:

* ``journal_orders``: one row per client order id: the intent, then the
  latest exchange state (``intent`` -> ``new`` / ``partially_filled`` /
  terminal; ``never_sent`` when recovery found the exchange never had it;
  ``abandoned`` when a session started against a fresh venue);
* ``journal_fills``: one row per exchange fill id (a fill seen twice is kept
  once);
* ``journal_state``: the breaker, the halt switch, the venue epoch and the
  protective levels of each symbol (``protection:<SYMBOL>``);
* ``journal_risk_state`` and ``journal_risk_events``: risk state that must
  survive a restart (:mod:`bot4.journal.riskstate`).

:class:`Store` is the synchronous interface a backend implements
(:mod:`bot4.journal.sqlite`, :mod:`bot4.journal.postgres`); :class:`Journal`
is the trio face of a store: every call runs in a worker thread, one call at a
time (a ``CapacityLimiter(1)``), so a backend's single connection, or its
pool, is never used by two threads at once and the trio loop never blocks on
disk or network.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, ParamSpec, Protocol, TypeVar

import attrs
import trio

from bot4 import codec
from bot4.errors import Bot4Error
from bot4.journal.migrations import LATEST
from bot4.journal.riskstate import (
    RiskEventRow,
    RiskStateRow,
    RunHistory,
    read_history,
    read_risk_events,
    read_risk_state,
)
from bot4.model import (
    Approved,
    Fill,
    MarketData,
    Order,
    OrderState,
    Rejected,
    RiskAction,
)

__all__ = [
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
    "checksum",
]


# --- errors ---------------------------------------------------------------------


class JournalError(Bot4Error):
    """Base of the journal's errors."""


class JournalUnavailable(JournalError):
    """The journal cannot be reached (no server, refused, bad path)."""


class JournalCorrupt(JournalError):
    """The file or schema is not a bot4 journal, or is damaged. Nothing was written."""


class SchemaTooNew(JournalError):
    """The journal was written by a newer bot4; this one refuses to touch it."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{where}: journal schema version {found} is newer than this bot4 supports "
            f"(version {known}); upgrade bot4. Nothing was written."
        )
        self.found = found
        self.known = known


class SchemaBehind(JournalError):
    """The journal needs migrations this session will not apply by itself."""


class JournalLocked(JournalError):
    """Another process is writing this journal."""


class RecoveryError(JournalError):
    """Recovery could not establish what the exchange knows: the session must not start."""


# --- records ---------------------------------------------------------------------


class RecordKind(enum.Enum):
    SESSION = "session"  # a session started (payload says whether the venue is fresh)
    INTENT = "intent"  # an order about to be sent (write-ahead)
    ACK = "ack"  # the exchange's answer to place_order
    UPDATE = "update"  # a later order state from the exchange
    NEVER_SENT = "never_sent"  # recovery: the exchange never received the intent
    FILL = "fill"
    POSITION = "position"  # the position after a fill
    DECISION = "decision"  # risk approved / rejected (``rule`` is the deciding rule)
    ACTION = "action"  # a risk action (ladder, breaker trip)
    BREAKER = "breaker"  # breaker state changed
    HALT = "halt"  # the kill switch
    RECOVERY = "recovery"  # what recovery found and did
    ERROR = "error"  # a kernel error worth keeping
    RISK_STATE = "risk_state"  # the latest value of one risk-state key (riskstate)
    RISK_EVENT = "risk_event"  # an event a rule window counts, at its event time
    # The protective levels of a symbol's position (bot4.protection); the
    # latest per symbol is kept in journal_state as ``protection:<SYMBOL>``.
    PROTECTION = "protection"


_TERMINAL = ("filled", "canceled", "rejected")
OPEN_STATUSES = ("new", "partially_filled")


@attrs.frozen(slots=True)
class Record:
    """One journal entry before it is written (the store assigns ``seq``)."""

    kind: RecordKind
    payload: Any
    ts_ns: int = 0
    client_order_id: str | None = None
    symbol: str | None = None
    rule: str | None = None

    @classmethod
    def intent(cls, order: Order, ts_ns: int) -> Record:
        return cls(RecordKind.INTENT, order, ts_ns, order.client_order_id, order.symbol)

    @classmethod
    def state(cls, state: OrderState, ts_ns: int, *, ack: bool = False) -> Record:
        kind = RecordKind.ACK if ack else RecordKind.UPDATE
        return cls(kind, state, ts_ns, state.order.client_order_id, state.order.symbol)

    @classmethod
    def fill(cls, fill: Fill, ts_ns: int) -> Record:
        return cls(RecordKind.FILL, fill, ts_ns, fill.client_order_id, fill.symbol)

    @classmethod
    def decision(cls, decision: Approved | Rejected, ts_ns: int, cid: str | None) -> Record:
        if isinstance(decision, Approved):
            order: Order | None = decision.order
            rule = ",".join(decision.rules) or "approved"
        else:
            order = decision.order
            rule = decision.rule
        return cls(
            RecordKind.DECISION,
            decision,
            ts_ns,
            cid or (order.client_order_id if order is not None else None),
            order.symbol if order is not None else None,
            rule,
        )

    @classmethod
    def action(cls, action: RiskAction, ts_ns: int) -> Record:
        return cls(RecordKind.ACTION, action, ts_ns, None, action.symbol, action.rule)

    @classmethod
    def breaker(cls, tripped: bool, reason: str, ts_ns: int, rule: str | None = None) -> Record:
        return cls(
            RecordKind.BREAKER,
            {"tripped": tripped, "reason": reason, "at_ns": ts_ns},
            ts_ns,
            rule=rule,
        )

    @classmethod
    def risk_state(cls, key: str, value: Any, ts_ns: int, symbol: str | None = None) -> Record:
        """The new value of risk-state ``key`` (JSON-able; None clears it)."""
        return cls(RecordKind.RISK_STATE, {"key": key, "value": value}, ts_ns, symbol=symbol)

    @classmethod
    def risk_event(cls, kind: str, symbol: str, ts_ns: int) -> Record:
        """An event of ``kind`` (``orders``, ``stop_outs``) at event time ``ts_ns``."""
        return cls(RecordKind.RISK_EVENT, {"kind": kind, "symbol": symbol}, ts_ns, symbol=symbol)


@attrs.frozen(slots=True)
class StoredRecord:
    seq: int
    ts_ns: int
    kind: str
    client_order_id: str | None
    symbol: str | None
    rule: str | None
    body: str
    checksum: str

    @property
    def payload(self) -> Any:
        return codec.decode(json.loads(self.body))

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts_ns": self.ts_ns,
            "kind": self.kind,
            "client_order_id": self.client_order_id,
            "symbol": self.symbol,
            "rule": self.rule,
            "body": json.loads(self.body),
            "checksum": self.checksum,
        }


@attrs.frozen(slots=True)
class OrderRow:
    order: Order
    status: str
    filled_qty: Decimal
    exchange_order_id: str
    origin: str  # "kernel" (written ahead) or "exchange" (seen first from the venue)
    intent_seq: int | None
    last_seq: int

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@attrs.frozen(slots=True)
class FillRow:
    fill: Fill
    seq: int


@attrs.define
class VerifyReport:
    """What ``bot4 journal verify`` found; ``ok`` when nothing is wrong."""

    location: str
    schema_version: int
    latest_version: int = LATEST
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    by_kind: dict[str, int] = attrs.field(factory=dict)
    orders: int = 0
    fills: int = 0
    gaps: list[tuple[int, int]] = attrs.field(factory=list)  # (after seq, next seq)
    bad_checksums: list[int] = attrs.field(factory=list)
    undecodable: list[int] = attrs.field(factory=list)
    orphan_fills: list[str] = attrs.field(factory=list)  # fill ids whose order is unknown
    unresolved_intents: list[str] = attrs.field(factory=list)
    table_mismatches: list[str] = attrs.field(factory=list)
    integrity: str = "ok"

    @property
    def ok(self) -> bool:
        return not (
            self.gaps
            or self.bad_checksums
            or self.undecodable
            or self.orphan_fills
            or self.table_mismatches
            or self.integrity != "ok"
            or self.schema_version != self.latest_version
        )

    def as_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["ok"] = self.ok
        return out


def checksum(
    prev: str,
    seq: int,
    ts_ns: int,
    kind: str,
    cid: str | None,
    symbol: str | None,
    rule: str | None,
    body: str,
) -> str:
    """A record's checksum, chained over the previous one: changing, removing
    or reordering any record breaks every checksum after it."""
    text = f"{prev}\x1f{seq}\x1f{ts_ns}\x1f{kind}\x1f{cid or ''}\x1f{symbol or ''}\x1f{rule or ''}"
    return hashlib.sha256(f"{text}\x1f{body}".encode()).hexdigest()[:32]


def _json(encoded: Any) -> str:
    return json.dumps(encoded, separators=(",", ":"), sort_keys=True)


def dumps(payload: Any) -> str:
    return _json(codec.encode(payload))


# --- the synchronous store -------------------------------------------------------


class Tx(Protocol):
    """One transaction on a backend connection."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


_INSERT_RECORD = (
    "INSERT INTO journal_records (seq, ts_ns, kind, client_order_id, symbol, rule, body, checksum)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_INTENT = (
    "INSERT INTO journal_orders (client_order_id, symbol, side, type, qty, status, filled_qty,"
    " exchange_order_id, origin, body, intent_seq, last_seq)"
    " VALUES (?, ?, ?, ?, ?, 'intent', '0', '', 'kernel', ?, ?, ?)"
    " ON CONFLICT (client_order_id) DO NOTHING"
)
# A terminal state is final: a late, older update never reopens an order.
_UPSERT_STATE = (
    "INSERT INTO journal_orders (client_order_id, symbol, side, type, qty, status, filled_qty,"
    " exchange_order_id, origin, body, intent_seq, last_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'exchange', ?, NULL, ?)"
    " ON CONFLICT (client_order_id) DO UPDATE SET"
    " status = CASE WHEN journal_orders.status IN ('filled', 'canceled', 'rejected')"
    "   THEN journal_orders.status ELSE excluded.status END,"
    " filled_qty = CASE WHEN journal_orders.status IN ('filled', 'canceled', 'rejected')"
    "   THEN journal_orders.filled_qty ELSE excluded.filled_qty END,"
    " exchange_order_id = CASE WHEN excluded.exchange_order_id <> ''"
    "   THEN excluded.exchange_order_id ELSE journal_orders.exchange_order_id END,"
    " last_seq = excluded.last_seq"
)
_NEVER_SENT = (
    "UPDATE journal_orders SET status = 'never_sent', last_seq = ?"
    " WHERE client_order_id = ? AND status = 'intent'"
)
_ABANDON = (
    "UPDATE journal_orders SET status = 'abandoned', last_seq = ?"
    " WHERE status IN ('intent', 'new', 'partially_filled')"
)
_INSERT_FILL = (
    "INSERT INTO journal_fills (fill_id, client_order_id, symbol, side, qty, price, fee, ts_ns,"
    " body, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fill_id) DO NOTHING"
)
_UPSERT_KV = (
    "INSERT INTO journal_state (key, value, seq) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq"
)
_UPSERT_RISK_STATE = (
    "INSERT INTO journal_risk_state (key, value, ts_ns, seq) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, ts_ns = excluded.ts_ns,"
    " seq = excluded.seq"
)
_INSERT_RISK_EVENT = (
    "INSERT INTO journal_risk_events (seq, kind, symbol, ts_ns) VALUES (?, ?, ?, ?)"
)
_RECORD_COLUMNS = "seq, ts_ns, kind, client_order_id, symbol, rule, body, checksum"
_ORDER_COLUMNS = "body, status, filled_qty, exchange_order_id, origin, intent_seq, last_seq"


def ns_of(ts: datetime) -> int:
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


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

    # -- to implement ---------------------------------------------------------

    @abc.abstractmethod
    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False, write: bool = True) -> Iterator[Tx]: ...

    @abc.abstractmethod
    def migrate(self) -> list[int]:
        """Apply pending migrations; returns the versions applied."""

    @abc.abstractmethod
    def close(self) -> None: ...

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

    def append(self, records: Sequence[Record], *, durable: bool = False) -> int:
        """Write ``records`` in one transaction; returns the last seq. With
        ``durable`` the commit uses the intent durability (see intent_sync)."""
        if not records:
            return self._seq
        seq, prev = self._seq, self._last_checksum
        rows: list[tuple[Any, ...]] = []
        intents: list[tuple[Any, ...]] = []
        states: list[tuple[Any, ...]] = []
        never: list[tuple[Any, ...]] = []
        fills: list[tuple[Any, ...]] = []
        kv: list[tuple[Any, ...]] = []
        risk_state: list[tuple[Any, ...]] = []
        risk_events: list[tuple[Any, ...]] = []
        reset: int | None = None
        for rec in records:
            seq += 1
            kind = rec.kind.value
            encoded = codec.encode(rec.payload)  # once: the tables reuse its parts
            body = _json(encoded)
            chk = checksum(
                prev, seq, rec.ts_ns, kind, rec.client_order_id, rec.symbol, rec.rule, body
            )
            prev = chk
            rows.append(
                (seq, rec.ts_ns, kind, rec.client_order_id, rec.symbol, rec.rule, body, chk)
            )
            payload = rec.payload
            if rec.kind is RecordKind.INTENT:
                o: Order = payload
                intents.append(
                    (
                        o.client_order_id,
                        o.symbol,
                        o.side.value,
                        o.type.value,
                        str(o.qty),
                        body,
                        seq,
                        seq,
                    )
                )
            elif rec.kind in (RecordKind.ACK, RecordKind.UPDATE):
                st: OrderState = payload
                o = st.order
                states.append(
                    (
                        o.client_order_id,
                        o.symbol,
                        o.side.value,
                        o.type.value,
                        str(o.qty),
                        st.status.value,
                        str(st.filled_qty),
                        st.exchange_order_id,
                        _json(encoded["order"]),
                        seq,
                    )
                )
            elif rec.kind is RecordKind.NEVER_SENT:
                never.append((seq, rec.client_order_id))
            elif rec.kind is RecordKind.FILL:
                f: Fill = payload
                fills.append(
                    (
                        f.fill_id,
                        f.client_order_id,
                        f.symbol,
                        f.side.value,
                        str(f.qty),
                        str(f.price),
                        str(f.fee),
                        ns_of(f.timestamp),
                        body,
                        seq,
                    )
                )
            elif rec.kind is RecordKind.BREAKER:
                kv.append(("breaker", body, seq))
            elif rec.kind is RecordKind.HALT:
                kv.append(("halt", body, seq))
            elif rec.kind is RecordKind.SESSION:
                kv.append(("session", body, seq))
                if isinstance(payload, Mapping) and payload.get("fresh_venue"):
                    reset = seq
                    kv.append(("epoch", str(seq), seq))
            elif rec.kind is RecordKind.RECOVERY:
                kv.append(("recovery", body, seq))
            elif rec.kind is RecordKind.RISK_STATE:
                risk_state.append((encoded["key"], _json(encoded["value"]), rec.ts_ns, seq))
            elif rec.kind is RecordKind.RISK_EVENT:
                risk_events.append((seq, encoded["kind"], encoded["symbol"], rec.ts_ns))
            elif rec.kind is RecordKind.PROTECTION:
                kv.append((f"protection:{rec.symbol}", body, seq))
        with self._tx(durable=durable) as tx:
            tx.executemany(_INSERT_RECORD, rows)
            if reset is not None:
                tx.execute(_ABANDON, (reset,))
            if intents:
                tx.executemany(_INSERT_INTENT, intents)
            if states:
                tx.executemany(_UPSERT_STATE, states)
            if never:
                tx.executemany(_NEVER_SENT, never)
            if fills:
                tx.executemany(_INSERT_FILL, fills)
            if kv:
                tx.executemany(_UPSERT_KV, kv)
            if risk_state:
                tx.executemany(_UPSERT_RISK_STATE, risk_state)
            if risk_events:
                tx.executemany(_INSERT_RISK_EVENT, risk_events)
        self._seq, self._last_checksum = seq, prev
        return seq

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
        sql = f"SELECT {_RECORD_COLUMNS} FROM journal_records"
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
                    f"SELECT {_RECORD_COLUMNS} FROM journal_records WHERE seq > ?"
                    f" ORDER BY seq LIMIT {int(chunk)}",
                    (after,),
                )
            if not rows:
                return
            for r in rows:
                yield StoredRecord(int(r[0]), int(r[1]), *r[2:])
            after = int(rows[-1][0])

    def verify(self) -> VerifyReport:
        report = VerifyReport(location=self.location, schema_version=self.schema_version)
        report.integrity = self.integrity()
        prev_seq: int | None = None
        prev_chk = ""
        fill_ids: set[str] = set()
        for rec in self.iter_records():
            report.records += 1
            report.by_kind[rec.kind] = report.by_kind.get(rec.kind, 0) + 1
            if report.first_seq is None:
                report.first_seq = rec.seq
                if rec.seq != 1:
                    report.gaps.append((0, rec.seq))
            elif prev_seq is not None and rec.seq != prev_seq + 1:
                report.gaps.append((prev_seq, rec.seq))
            expected = checksum(
                prev_chk,
                rec.seq,
                rec.ts_ns,
                rec.kind,
                rec.client_order_id,
                rec.symbol,
                rec.rule,
                rec.body,
            )
            if expected != rec.checksum and len(report.bad_checksums) < 1000:
                report.bad_checksums.append(rec.seq)
            prev_chk = rec.checksum
            prev_seq = rec.seq
            try:
                payload = rec.payload
            except Exception:  # a damaged body: reported, not fatal to the check
                report.undecodable.append(rec.seq)
                continue
            if rec.kind == RecordKind.FILL.value and isinstance(payload, Fill):
                fill_ids.add(payload.fill_id)
        report.last_seq = prev_seq
        with self._tx(write=False) as tx:
            report.orders = int(tx.execute("SELECT COUNT(*) FROM journal_orders")[0][0])
            report.fills = int(tx.execute("SELECT COUNT(*) FROM journal_fills")[0][0])
            orphans = tx.execute(
                "SELECT f.fill_id FROM journal_fills f LEFT JOIN journal_orders o"
                " ON o.client_order_id = f.client_order_id WHERE o.client_order_id IS NULL"
                " ORDER BY f.seq"
            )
            report.orphan_fills = [str(r[0]) for r in orphans]
            intents = tx.execute(
                "SELECT client_order_id FROM journal_orders WHERE status = 'intent'"
                " ORDER BY intent_seq"
            )
            report.unresolved_intents = [str(r[0]) for r in intents]
            table_ids = {str(r[0]) for r in tx.execute("SELECT fill_id FROM journal_fills")}
            beyond = tx.execute(
                "SELECT COUNT(*) FROM journal_fills WHERE seq > ?", (prev_seq or 0,)
            )
        if table_ids != fill_ids:
            missing = len(fill_ids - table_ids)
            extra = len(table_ids - fill_ids)
            report.table_mismatches.append(
                f"journal_fills differs from the fill records: {missing} missing, {extra} extra"
            )
        if int(beyond[0][0]):
            report.table_mismatches.append("journal_fills refers to records past the log's end")
        return report


# --- the trio face -----------------------------------------------------------------

P = ParamSpec("P")
T = TypeVar("T")


class Journal:
    """A :class:`Store` for trio code: each call runs in a worker thread, one
    at a time, in call order. Cancellation waits for the call in flight (a
    half-sent transaction is never abandoned)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    @property
    def backend(self) -> str:
        return self.store.backend

    @property
    def location(self) -> str:
        return self.store.location

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    async def append(self, records: Sequence[Record], *, durable: bool = False) -> int:
        return await self._call(self.store.append, records, durable=durable)

    async def append_market(self, ticks: Sequence[MarketData]) -> None:
        await self._call(self.store.append_market, ticks)

    async def orders(self, statuses: Sequence[str] | None = None) -> list[OrderRow]:
        return await self._call(self.store.orders, statuses)

    async def fills(self, since_seq: int = 0) -> list[FillRow]:
        return await self._call(self.store.fills, since_seq)

    async def state(self) -> dict[str, Any]:
        return await self._call(self.store.state)

    async def risk_state(self, since_seq: int = 0) -> dict[str, RiskStateRow]:
        return await self._call(self.store.risk_state, since_seq)

    async def risk_events(
        self, kind: str, *, since_seq: int = 0, horizon_ns: int | None = None
    ) -> list[RiskEventRow]:
        return await self._call(
            self.store.risk_events, kind, since_seq=since_seq, horizon_ns=horizon_ns
        )

    async def history(self, after_seq: int, before_seq: int) -> RunHistory:
        return await self._call(self.store.history, after_seq, before_seq)

    async def records(self, **filters: Any) -> list[StoredRecord]:
        return await self._call(self.store.records, **filters)

    async def verify(self) -> VerifyReport:
        return await self._call(self.store.verify)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._call(self.store.close)
