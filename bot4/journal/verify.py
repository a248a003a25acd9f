"""``bot4 journal verify``: is the log whole, and do its tables agree with it?

Sequence gaps, the chained checksum of every record, bodies that do not
decode, fills whose order is unknown, intents with no answer, the fills table
against the fill records, the schema version, and the backend's own check
(SQLite ``quick_check``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from bot4.journal.migrations import LATEST
from bot4.journal.records import RecordKind, checksum
from bot4.model import Fill

if TYPE_CHECKING:
    from bot4.journal.store import Store

__all__ = ["VerifyReport", "verify"]


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


def verify(store: Store) -> VerifyReport:
    """Check the whole journal of ``store`` (reading only, in chunks)."""
    report = VerifyReport(location=store.location, schema_version=store.schema_version)
    report.integrity = store.integrity()
    prev_seq: int | None = None
    prev_chk = ""
    fill_ids: set[str] = set()
    for rec in store.iter_records():
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
    with store.reading() as tx:
        report.orders = int(tx.execute("SELECT COUNT(*) FROM journal_orders")[0][0])
        report.fills = int(tx.execute("SELECT COUNT(*) FROM journal_fills")[0][0])
        orphans = tx.execute(
            "SELECT f.fill_id FROM journal_fills f LEFT JOIN journal_orders o"
            " ON o.client_order_id = f.client_order_id WHERE o.client_order_id IS NULL"
            " ORDER BY f.seq"
        )
        report.orphan_fills = [str(r[0]) for r in orphans]
        intents = tx.execute(
            "SELECT client_order_id FROM journal_orders WHERE status = 'intent' ORDER BY intent_seq"
        )
        report.unresolved_intents = [str(r[0]) for r in intents]
        table_ids = {str(r[0]) for r in tx.execute("SELECT fill_id FROM journal_fills")}
        beyond = tx.execute("SELECT COUNT(*) FROM journal_fills WHERE seq > ?", (prev_seq or 0,))
    if table_ids != fill_ids:
        missing = len(fill_ids - table_ids)
        extra = len(table_ids - fill_ids)
        report.table_mismatches.append(
            f"journal_fills differs from the fill records: {missing} missing, {extra} extra"
        )
    if int(beyond[0][0]):
        report.table_mismatches.append("journal_fills refers to records past the log's end")
    return report
