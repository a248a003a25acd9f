"""What the journal holds: the record kinds, a :class:`Record` before it is
written, a :class:`StoredRecord` as read back (with its chained checksum),
and the rows of the derived tables (:class:`OrderRow`, :class:`FillRow`).

A record's ``body`` is its payload as exact JSON (:mod:`bot4.journal.encoding`);
its ``checksum`` (:func:`checksum`) is chained over the previous record's, so
changing, removing or reordering any record breaks every checksum after it.
"""

from __future__ import annotations

import enum
import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from bot4 import codec
from bot4.model import Approved, Fill, Order, OrderState, Rejected, RiskAction

__all__ = [
    "OPEN_STATUSES",
    "TERMINAL_STATUSES",
    "FillRow",
    "OrderRow",
    "Record",
    "RecordKind",
    "StoredRecord",
    "checksum",
    "ns_of",
]


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


TERMINAL_STATUSES = ("filled", "canceled", "rejected")
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


def ns_of(ts: datetime) -> int:
    """A timezone-aware datetime as integer ns since the epoch, exactly."""
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000
