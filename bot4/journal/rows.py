"""The write path: a batch of records as the rows of every journal table,
and the SQL that writes them, in one transaction.

Each record is one ``journal_records`` row (its body from
:mod:`bot4.journal.encoding`, its checksum chained over the previous one);
the derived tables get, per batch:

* ``journal_orders``: **one statement per client order id**, however many
  of its records the batch holds. An order's intent, acknowledgement and
  updates usually arrive within one batch (five records an order on the
  paper venue); they are merged here as the SQL would merge them one by one
  (a terminal status is final; a non-empty exchange id replaces the one
  before; ``last_seq`` is the last record's), and the database still applies
  the same rule against the row it already holds;
* ``journal_fills`` (one row per fill id), ``journal_state`` (breaker, halt,
  session, epoch, recovery, protective levels), ``journal_risk_state`` and
  ``journal_risk_events``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from bot4 import codec
from bot4.journal.encoding import body_of
from bot4.journal.records import TERMINAL_STATUSES, Record, RecordKind, checksum, ns_of
from bot4.model import Fill, Order, OrderState

__all__ = ["BatchRows", "Tx", "build_rows", "write_rows"]


class Tx(Protocol):
    """One transaction on a backend connection."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


INSERT_RECORD = (
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
_ON_STATE = (
    " ON CONFLICT (client_order_id) DO UPDATE SET"
    " status = CASE WHEN journal_orders.status IN ('filled', 'canceled', 'rejected')"
    "   THEN journal_orders.status ELSE excluded.status END,"
    " filled_qty = CASE WHEN journal_orders.status IN ('filled', 'canceled', 'rejected')"
    "   THEN journal_orders.filled_qty ELSE excluded.filled_qty END,"
    " exchange_order_id = CASE WHEN excluded.exchange_order_id <> ''"
    "   THEN excluded.exchange_order_id ELSE journal_orders.exchange_order_id END,"
    " last_seq = excluded.last_seq"
)
_ORDER_INSERT = (
    "INSERT INTO journal_orders (client_order_id, symbol, side, type, qty, status, filled_qty,"
    " exchange_order_id, origin, body, intent_seq, last_seq)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# An order's merged states, or its intent and merged states: against a row
# already there, exactly what the states one by one would do.
_UPSERT_ORDER = _ORDER_INSERT + _ON_STATE
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

# journal_orders row columns, in _ORDER_INSERT order.
_STATUS, _FILLED, _EXCHANGE_ID, _ORIGIN, _BODY, _INTENT_SEQ, _LAST_SEQ = range(5, 12)


@attrs.define
class BatchRows:
    """Every row one batch writes, and where the log stands after it."""

    records: list[tuple[Any, ...]] = attrs.field(factory=list)
    orders: dict[str, list[Any]] = attrs.field(factory=dict)  # cid -> row (+ states seen)
    stated: set[str] = attrs.field(factory=set)  # cids with a state in this batch
    never_sent: list[tuple[Any, ...]] = attrs.field(factory=list)
    fills: list[tuple[Any, ...]] = attrs.field(factory=list)
    kv: list[tuple[Any, ...]] = attrs.field(factory=list)
    risk_state: list[tuple[Any, ...]] = attrs.field(factory=list)
    risk_events: list[tuple[Any, ...]] = attrs.field(factory=list)
    reset: int | None = None  # seq of a session record on a fresh venue
    seq: int = 0
    checksum: str = ""

    def intent(self, order: Order, body: str, seq: int) -> None:
        row = self.orders.get(order.client_order_id)
        if row is None:
            self.orders[order.client_order_id] = [
                order.client_order_id,
                order.symbol,
                order.side.value,
                order.type.value,
                str(order.qty),
                "intent",
                "0",
                "",
                "kernel",
                body,
                seq,
                seq,
            ]
        # else: a row is there already (its state came first): as the table's
        # ON CONFLICT DO NOTHING would, the intent leaves it as it is.

    def state(self, st: OrderState, seq: int) -> None:
        o = st.order
        cid = o.client_order_id
        status, filled, eid = st.status.value, str(st.filled_qty), st.exchange_order_id
        row = self.orders.get(cid)
        self.stated.add(cid)
        if row is None:
            self.orders[cid] = [
                cid,
                o.symbol,
                o.side.value,
                o.type.value,
                str(o.qty),
                status,
                filled,
                eid,
                "exchange",
                body_of(o),
                None,
                seq,
            ]
            return
        # As _ON_STATE would apply it to the row so far.
        if row[_STATUS] not in TERMINAL_STATUSES:
            row[_STATUS], row[_FILLED] = status, filled
        if eid:
            row[_EXCHANGE_ID] = eid
        row[_LAST_SEQ] = seq


def build_rows(records: Sequence[Record], seq: int, prev: str) -> BatchRows:
    """The rows of ``records``, numbered after ``seq`` and chained on ``prev``."""
    out = BatchRows()
    append = out.records.append
    for rec in records:
        seq += 1
        kind = rec.kind
        payload = rec.payload
        body = body_of(payload)
        prev = checksum(
            prev, seq, rec.ts_ns, kind.value, rec.client_order_id, rec.symbol, rec.rule, body
        )
        append((seq, rec.ts_ns, kind.value, rec.client_order_id, rec.symbol, rec.rule, body, prev))
        if kind is RecordKind.INTENT:
            out.intent(payload, body, seq)
        elif kind is RecordKind.ACK or kind is RecordKind.UPDATE:
            out.state(payload, seq)
        elif kind is RecordKind.FILL:
            f: Fill = payload
            out.fills.append(
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
        elif kind is RecordKind.RISK_EVENT:
            out.risk_events.append(
                (seq, _text(payload["kind"]), _text(payload["symbol"]), rec.ts_ns)
            )
        elif kind is RecordKind.RISK_STATE:
            value = body_of(payload["value"])
            out.risk_state.append((_text(payload["key"]), value, rec.ts_ns, seq))
        elif kind is RecordKind.NEVER_SENT:
            out.never_sent.append((seq, rec.client_order_id))
        elif kind is RecordKind.BREAKER:
            out.kv.append(("breaker", body, seq))
        elif kind is RecordKind.HALT:
            out.kv.append(("halt", body, seq))
        elif kind is RecordKind.SESSION:
            out.kv.append(("session", body, seq))
            if isinstance(payload, Mapping) and payload.get("fresh_venue"):
                out.reset = seq
                out.kv.append(("epoch", str(seq), seq))
        elif kind is RecordKind.RECOVERY:
            out.kv.append(("recovery", body, seq))
        elif kind is RecordKind.PROTECTION:
            out.kv.append((f"protection:{rec.symbol}", body, seq))
    out.seq, out.checksum = seq, prev
    return out


def _text(value: Any) -> Any:
    """A payload's key or name as ``codec.encode`` gives it (a str, mostly)."""
    return value if type(value) is str else codec.encode(value)


def write_rows(tx: Tx, rows: BatchRows) -> None:
    """Every row of a batch, in one transaction ``tx``. The order of the
    statements is the one each table's rule needs: an epoch reset before the
    orders of the new epoch, the orders before ``never_sent`` marks them."""
    if rows.records:  # none in a transaction of marks only (bot4.journal.spill)
        tx.executemany(INSERT_RECORD, rows.records)
    if rows.reset is not None:
        tx.execute(_ABANDON, (rows.reset,))
    if rows.orders:
        stated, intents, upserts = rows.stated, [], []
        for cid, row in rows.orders.items():
            if cid in stated:
                upserts.append(row)
            else:  # only its intent: never touches a row already there
                intents.append((*row[:5], row[_BODY], row[_INTENT_SEQ], row[_LAST_SEQ]))
        if intents:
            tx.executemany(_INSERT_INTENT, intents)
        if upserts:
            tx.executemany(_UPSERT_ORDER, upserts)
    if rows.never_sent:
        tx.executemany(_NEVER_SENT, rows.never_sent)
    if rows.fills:
        tx.executemany(_INSERT_FILL, rows.fills)
    if rows.kv:
        tx.executemany(_UPSERT_KV, rows.kv)
    if rows.risk_state:
        tx.executemany(_UPSERT_RISK_STATE, rows.risk_state)
    if rows.risk_events:
        tx.executemany(_INSERT_RISK_EVENT, rows.risk_events)
