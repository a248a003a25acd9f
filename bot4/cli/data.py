"""``bot4 data list | import | download``: the market-data catalog (bot4.data.catalog)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bot4.secrets import redact

_DEBUG = "on an error, show the traceback (same as bot4 --debug)"
_LIST_COLUMNS = ("exchange", "type", "symbol", "timeframe", "first", "last", "rows", "gaps")


def catalog_option(parser: argparse.ArgumentParser, *names: str) -> None:
    parser.add_argument(
        *(names or ("--catalog",)),
        dest="catalog",
        metavar="DIR|URL",
        help="the catalog folder, or a postgresql:// URL for the database tables "
        "(default: $BOT4_CATALOG, else ./bot4-data)",
    )


def add_commands(sub: Any) -> None:
    data = sub.add_parser("data", help="market data: download, import, list what is stored")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")

    listing = dsub.add_parser("list", help="what the catalog holds")
    catalog_option(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--rescan", action="store_true", help="rebuild the manifest from the files first"
    )
    listing.set_defaults(func=cmd_list)

    imp = dsub.add_parser("import", help="bring a CSV of candles or trades into the catalog")
    imp.add_argument("file", type=Path, help="CSV (or .csv.gz) of candles or trades")
    catalog_option(imp)
    imp.add_argument("--exchange", default="csv", help="exchange to file it under (default: csv)")
    imp.add_argument("--symbol", help="bot4 symbol (default: from the file name)")
    imp.add_argument(
        "--timeframe", help="candle length, e.g. 1m (default: from the candles' spacing)"
    )
    imp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    imp.set_defaults(func=cmd_import)

    dl = dsub.add_parser(
        "download",
        help="fetch candles (and trades) from a venue through ccxt into the catalog",
        description="Fetch history through ccxt; a second call fetches only what is missing.",
    )
    catalog_option(dl, "--catalog", "--to")
    dl.add_argument("--exchange", required=True, help="ccxt exchange id, e.g. binance")
    dl.add_argument(
        "--symbols",
        required=True,
        help="bot4 symbols, comma-separated: BTC-USDT (spot), ETH-USDT-PERP (perpetual)",
    )
    dl.add_argument("--timeframe", default="1m", help="candle length the venue serves (1m)")
    dl.add_argument("--since", required=True, help="first day or time, UTC (2024-03-01)")
    dl.add_argument("--until", help="end, exclusive (default: now)")
    dl.add_argument("--trades", action="store_true", help="also the venue's public trades")
    dl.add_argument(
        "--api-url",
        help="send every request to this host instead (a local fake venue, a proxy)",
    )
    dl.add_argument("--sandbox", action="store_true", help="the venue's testnet (ccxt sandbox)")
    dl.add_argument(
        "--rate-limit",
        type=float,
        metavar="MS",
        help="ccxt's rateLimit: ms per unit of request cost (Binance klines cost 0.4 units); "
        "default: ccxt's figure for the venue",
    )
    dl.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="retries of a request the venue failed or rate-limited (default: 5)",
    )
    dl.add_argument("--json", action="store_true", help="print the result as JSON")
    dl.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    dl.set_defaults(func=cmd_download)
    data.set_defaults(func=cmd_list, json=False, catalog=None, rescan=False)


def _catalog(args: argparse.Namespace) -> Any:
    from bot4.data.catalog import Catalog, default_root
    from bot4.data.catalog_pg import PgStore, is_database_url

    location = args.catalog or str(default_root())
    if is_database_url(location):
        return PgStore(location)
    return Catalog(location)


def _table(rows: list[list[str]], columns: tuple[str, ...]) -> None:
    widths = [max(len(col), *(len(r[i]) for r in rows)) for i, col in enumerate(columns)]
    print("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _short_time(text: str | None) -> str:
    if text is None:
        return "-"
    return text.replace("T", " ").removesuffix("Z").removesuffix(":00").removesuffix(".000")


def cmd_list(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    try:
        return _cmd_list(args, catalog)
    finally:
        catalog.close()


def _cmd_list(args: argparse.Namespace, catalog: Any) -> int:
    series = catalog.rescan() if args.rescan else catalog.series()
    docs = [s.as_dict() for s in series]
    if args.json:
        json.dump({"catalog": str(catalog.root), "series": docs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not docs:
        print(f"the catalog {catalog.root} is empty (bot4 data download, bot4 data import)")
        return 0
    rows = []
    for d in docs:
        gaps = "-" if d["timeframe"] == "trades" else str(d["gaps"])
        if d["missing"]:
            gaps += f" ({d['missing']:,} missing)"
        rows.append(
            [
                d["exchange"],
                d["type"],
                d["symbol"],
                d["timeframe"],
                _short_time(d["first"]),
                _short_time(d["last"]),
                f"{d['rows']:,}",
                gaps,
            ]
        )
    _table(rows, _LIST_COLUMNS)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    try:
        return _cmd_import(args, catalog)
    finally:
        catalog.close()


def _cmd_import(args: argparse.Namespace, catalog: Any) -> int:
    from bot4.data.catalog_import import import_csv

    # A bad row raises DataError (a Bot4Error): bot4.cli.main prints
    # `bot4: file:line: column 'x': ...` and exits 2; nothing is stored.
    result = import_csv(
        catalog, args.file, exchange=args.exchange, symbol=args.symbol, timeframe=args.timeframe
    )
    info = catalog.info(result.key)
    print(
        f"imported {result.rows:,} rows from {args.file} into {result.key} "
        f"({result.new_rows:,} new; the series now holds {info.rows if info else 0:,})"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    try:
        return _cmd_download(args, catalog)
    finally:
        catalog.close()


def _cmd_download(args: argparse.Namespace, catalog: Any) -> int:
    from bot4.data.catalog import parse_time
    from bot4.data.catalog_download import download, make_client, terminal_progress

    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        print("bot4: --symbols: name at least one symbol", file=sys.stderr)
        return 2
    since = parse_time(args.since, "--since")
    until = parse_time(args.until, "--until") if args.until else None
    if until is not None and until <= since:
        print(f"bot4: --until {args.until} is not after --since {args.since}", file=sys.stderr)
        return 2
    client = make_client(
        args.exchange, api_url=args.api_url, sandbox=args.sandbox, rate_limit_ms=args.rate_limit
    )
    result = download(
        catalog,
        client,
        args.exchange,
        symbols,
        args.timeframe,
        since,
        until,
        trades=args.trades,
        progress=terminal_progress(sys.stderr),
        max_retries=max(0, args.retries),
    )
    docs = []
    for s in result.series:
        doc: dict[str, Any] = {
            "series": str(s.key),
            "new_rows": s.new_rows,
            "requests": s.requests,
            "retries": s.retries,
        }
        if s.info is not None:
            doc.update({k: v for k, v in s.info.as_dict().items() if k in ("first", "last")})
            doc.update({"rows": s.info.rows, "gaps": s.info.gap_count, "missing": s.info.missing})
            doc["gap_ranges"] = s.info.as_dict()["gap_ranges"]
        docs.append(doc)
    if args.json:
        json.dump({"catalog": str(catalog.root), "series": docs}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    for d in docs:
        print(
            f"{d['series']}: {d['new_rows']:,} new, {d.get('rows', 0):,} stored "
            f"({_short_time(d.get('first'))} .. {_short_time(d.get('last'))}); "
            f"{d['requests']} request{'s' if d['requests'] != 1 else ''}, "
            f"{d['retries']} retried"
        )
    gapped = [d for d in docs if d.get("gaps")]
    if gapped:
        print("gaps (the venue served nothing there; a later download asks again):")
        for d in gapped:
            gaps = f"{d['gaps']} gap" + ("s" if d["gaps"] != 1 else "")
            print(f"  {d['series']}: {gaps}, {d['missing']:,} candles missing")
            for g in d["gap_ranges"][:10]:
                span = f"{_short_time(g['start'])} .. {_short_time(g['end'])}"
                print(f"    {span}  ({g['missing']:,})")
            if d["gaps"] > 10:
                print(f"    ... and {d['gaps'] - 10} more (bot4 data list --json)")
    else:
        print("no gaps")
    print(f"catalog: {redact(str(catalog.root))}")
    return 0
