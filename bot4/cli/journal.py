"""``bot4 journal migrate|show|export|verify``: the journal from the command line.

The journal is the one named on the command line (a file path or a
postgresql:// URL), else ``$BOT4_DATABASE_URL``, else
``bot4-out/journal.sqlite``. ``show``, ``export`` and ``verify`` only read:
they never create a file, migrate or write.

Exit codes: 0 fine; 1 ``verify`` found a problem; 2 the journal could not be
opened (the message says why).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bot4.journal import ENV_URL, JournalError, RecordKind, Store, StoredRecord, open_store
from bot4.secrets import redact

KINDS = [k.value for k in RecordKind]


def _target(args: argparse.Namespace) -> str:
    from bot4.secrets import env_value  # BOT4_DATABASE_URL or BOT4_DATABASE_URL_FILE

    if args.journal:
        return str(args.journal)
    return env_value(ENV_URL).strip() or str(Path("bot4-out") / "journal.sqlite")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "journal",
        nargs="?",
        help=f"journal file or postgresql:// URL (default: ${ENV_URL}, else "
        "bot4-out/journal.sqlite)",
    )
    p.add_argument("--schema", help="PostgreSQL schema holding the journal (default: search_path)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", action="append", choices=KINDS, help="record kind (repeatable)")
    p.add_argument("--symbol", help="only this symbol, e.g. BTC-USDT")
    p.add_argument("--order", dest="client_order_id", help="only this client order id")
    p.add_argument("--rule", help="only decisions/actions by this rule")
    p.add_argument("--since", type=int, help="only records after this sequence number")


def add_commands(sub: Any) -> None:
    journal = sub.add_parser(
        "journal",
        help="inspect, export, verify or migrate the trading journal",
        description="The journal of orders, fills, positions, risk decisions and breaker "
        "changes that bot4 run writes (SQLite by default, PostgreSQL with BOT4_DATABASE_URL).",
    )
    jsub = journal.add_subparsers(dest="journal_command", metavar="SUBCOMMAND")
    journal.set_defaults(func=lambda _args: journal.print_help() or 2)

    mig = jsub.add_parser("migrate", help="create the schema or bring it to this bot4's version")
    _add_target(mig)
    mig.set_defaults(func=cmd_migrate)

    show = jsub.add_parser("show", help="recent decisions and orders (newest last)")
    _add_target(show)
    _add_filters(show)
    show.add_argument("-n", "--limit", type=int, default=50, help="records to show (default 50)")
    show.add_argument("--orders", action="store_true", help="the orders table instead")
    show.add_argument("--status", action="append", help="with --orders: only these statuses")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    show.set_defaults(func=cmd_show)

    exp = jsub.add_parser("export", help="write records as CSV or JSON")
    _add_target(exp)
    _add_filters(exp)
    exp.add_argument("--format", choices=["csv", "json", "jsonl"], default="csv")
    exp.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    exp.set_defaults(func=cmd_export)

    ver = jsub.add_parser(
        "verify",
        help="check integrity: sequence gaps, checksums, orphan fills, schema version",
    )
    _add_target(ver)
    ver.add_argument("--json", action="store_true", help="the report as JSON")
    ver.set_defaults(func=cmd_verify)


def _open(args: argparse.Namespace, *, migrate: bool = False) -> Store:
    return open_store(_target(args), migrate=migrate, create=migrate, schema=args.schema)


def _fail(exc: Exception) -> int:
    print(f"bot4 journal: {redact(str(exc))}", file=sys.stderr)
    return 2


def cmd_migrate(args: argparse.Namespace) -> int:
    try:
        store = _open(args, migrate=True)
    except JournalError as exc:
        return _fail(exc)
    try:
        print(f"{store.location}: schema version {store.schema_version} (up to date)")
    finally:
        store.close()
    return 0


def _when(ts_ns: int) -> str:
    if ts_ns <= 0:
        return "-"
    return datetime.fromtimestamp(ts_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def summarize(rec: StoredRecord) -> str:
    """One line of what a record says."""
    body = json.loads(rec.body)
    if not isinstance(body, dict):
        return str(body)
    t = body.get("_t")
    if t == "Order":
        price = f" @ {body['price']}" if body.get("price") else ""
        return f"{body['side']} {body['qty']} {body['type']}{price}"
    if t == "OrderState":
        o = body["order"]
        extra = f" ({body['reason']})" if body.get("reason") else ""
        return f"{body['status']} {body['filled_qty']}/{o['qty']} {o['side']} {o['type']}{extra}"
    if t == "Fill":
        return f"{body['side']} {body['qty']} @ {body['price']} fee {body['fee']}"
    if t == "Approved":
        return "approved"
    if t == "Rejected":
        return f"rejected: {body.get('reason', '')}"
    if t == "RiskAction":
        return f"{body['kind']}: {body.get('reason', '')}"
    if t == "Position":
        return f"position {body['qty']} @ {body['entry_price']}"
    if rec.kind == RecordKind.BREAKER.value:
        return "tripped: " + str(body.get("reason", "")) if body.get("tripped") else "reset"
    if rec.kind == RecordKind.POSITION.value:
        return f"position {body.get('qty')}"
    if rec.kind == RecordKind.RISK_STATE.value:
        return f"{body.get('key')} = {json.dumps(body.get('value'), sort_keys=True)}"
    if rec.kind == RecordKind.RISK_EVENT.value:
        return f"{body.get('kind')} {body.get('symbol')}"
    if rec.kind == RecordKind.RECOVERY.value:
        keys = ("intents_recovered", "never_sent", "orders_adopted", "fills_recovered")
        return ", ".join(f"{k}={body.get(k)}" for k in keys)
    return json.dumps(body, sort_keys=True)[:160]


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "kinds": args.kind,
        "symbol": args.symbol,
        "client_order_id": args.client_order_id,
        "rule": args.rule,
        "since_seq": args.since,
    }


def cmd_show(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except JournalError as exc:
        return _fail(exc)
    try:
        if args.orders:
            rows = store.orders(args.status)[-args.limit :] if args.limit > 0 else []
            for row in rows:
                o = row.order
                if args.json:
                    print(
                        json.dumps(
                            {
                                "client_order_id": o.client_order_id,
                                "symbol": o.symbol,
                                "side": o.side.value,
                                "type": o.type.value,
                                "qty": str(o.qty),
                                "status": row.status,
                                "filled_qty": str(row.filled_qty),
                                "exchange_order_id": row.exchange_order_id,
                                "origin": row.origin,
                            }
                        )
                    )
                else:
                    print(
                        f"{o.client_order_id:<24} {o.symbol:<10} {o.side.value:<4} "
                        f"{o.type.value:<11} {o.qty!s:>12} {row.status:<16} "
                        f"filled {row.filled_qty} {row.exchange_order_id} ({row.origin})"
                    )
            return 0
        records = store.records(**_filters(args), limit=args.limit, newest_first=True)
        for rec in reversed(records):
            if args.json:
                print(json.dumps(rec.as_dict(), sort_keys=True))
            else:
                print(
                    f"{rec.seq:>8} {_when(rec.ts_ns)} {rec.kind:<10} "
                    f"{rec.client_order_id or '-':<22} {rec.symbol or '-':<10} "
                    f"{rec.rule or '-':<20} {summarize(rec)}"
                )
    except JournalError as exc:
        return _fail(exc)
    finally:
        store.close()
    return 0


def _selected(store: Store, args: argparse.Namespace) -> Iterator[StoredRecord]:
    f = _filters(args)
    if not any(v is not None for v in f.values()):
        yield from store.iter_records()
        return
    yield from store.records(**f)


def write_export(records: Iterator[StoredRecord], fmt: str, out: IO[str]) -> int:
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(
            [
                "seq",
                "time",
                "ts_ns",
                "kind",
                "client_order_id",
                "symbol",
                "rule",
                "checksum",
                "body",
            ]
        )
        for rec in records:
            writer.writerow(
                [
                    rec.seq,
                    _when(rec.ts_ns),
                    rec.ts_ns,
                    rec.kind,
                    rec.client_order_id or "",
                    rec.symbol or "",
                    rec.rule or "",
                    rec.checksum,
                    rec.body,
                ]
            )
            n += 1
    elif fmt == "jsonl":
        for rec in records:
            out.write(json.dumps(rec.as_dict(), sort_keys=True) + "\n")
            n += 1
    else:
        out.write("[")
        for rec in records:
            out.write(("," if n else "") + "\n" + json.dumps(rec.as_dict(), sort_keys=True))
            n += 1
        out.write("\n]\n")
    return n


def cmd_export(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except JournalError as exc:
        return _fail(exc)
    try:
        if args.output is None:
            n = write_export(_selected(store, args), args.format, sys.stdout)
        else:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                n = write_export(_selected(store, args), args.format, out)
            print(f"wrote {n} records to {args.output}", file=sys.stderr)
    except JournalError as exc:
        return _fail(exc)
    finally:
        store.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        store = _open(args)
    except JournalError as exc:
        return _fail(exc)
    try:
        report = store.verify()
    except JournalError as exc:
        return _fail(exc)
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return 0 if report.ok else 1
    print(f"journal        {report.location}")
    print(f"schema         version {report.schema_version} (this bot4: {report.latest_version})")
    print(f"records        {report.records} (seq {report.first_seq}..{report.last_seq})")
    for kind, count in sorted(report.by_kind.items()):
        print(f"  {kind:<12} {count}")
    print(f"orders         {report.orders}")
    print(f"fills          {report.fills}")
    print(f"storage        {report.integrity}")
    print(f"sequence gaps  {len(report.gaps)} {report.gaps[:5] if report.gaps else ''}")
    print(f"bad checksums  {len(report.bad_checksums)} {report.bad_checksums[:5] or ''}")
    print(f"undecodable    {len(report.undecodable)}")
    print(f"orphan fills   {len(report.orphan_fills)} {report.orphan_fills[:5] or ''}")
    print(f"open intents   {len(report.unresolved_intents)} (resolved by the next start)")
    for problem in report.table_mismatches:
        print(f"mismatch       {problem}")
    print("OK" if report.ok else "PROBLEMS FOUND")
    return 0 if report.ok else 1
