"""``bot4 exchanges list`` and ``bot4 markets list``: which ccxt venues bot4
supports (and what of each was tested), and a venue's markets with the
figures an order must respect."""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from typing import Any

_DEBUG = "on an error, show the traceback (same as bot4 --debug)"


_EXCHANGE_COLUMNS = ("exchange", "spot", "perpetuals", "sandbox", "tested")
_MARKET_COLUMNS = (
    "symbol",
    "bot4",
    "type",
    "tick",
    "lot",
    "min_qty",
    "min_notional",
    "max_leverage",
)


def add_commands(sub: Any) -> None:
    ex = sub.add_parser("exchanges", help="the ccxt venues bot4 supports")
    esub = ex.add_subparsers(dest="exchanges_command", metavar="ACTION")
    listing = esub.add_parser("list", help="supported venues and what was tested")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument(
        "--all", action="store_true", help="every exchange ccxt knows (untested ones too)"
    )
    listing.set_defaults(func=cmd_exchanges)
    ex.set_defaults(func=cmd_exchanges, json=False, all=False)

    mk = sub.add_parser("markets", help="a venue's markets")
    msub = mk.add_subparsers(dest="markets_command", metavar="ACTION")
    ml = msub.add_parser("list", help="symbols, bot4 names, tick and lot sizes, minimums")
    ml.add_argument("--exchange", required=True, help="ccxt exchange id, e.g. binance")
    ml.add_argument("--type", choices=("spot", "swap"), help="only spot or only perpetuals")
    ml.add_argument("--api-url", help="ask this host instead (a local fake venue, a proxy)")
    ml.add_argument("--sandbox", action="store_true", help="the venue's testnet (ccxt sandbox)")
    ml.add_argument("--json", action="store_true", help="machine-readable output")
    ml.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG)
    ml.set_defaults(func=cmd_markets)


def _print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _has_sandbox(exchange: str) -> bool:
    import ccxt  # type: ignore[import-untyped]  # no type information

    urls = getattr(ccxt, exchange)().urls
    return isinstance(urls, dict) and "test" in urls


def cmd_exchanges(args: argparse.Namespace) -> int:
    try:
        import ccxt
    except ImportError:
        print("bot4: no ccxt installed (pip install bot4-plugin-ccxt)", file=sys.stderr)
        return 2
    try:
        # What the ccxt plugin knows of each venue, and what its tests cover:
        # one table (bot4_ccxt.venues), also the README's.
        from bot4_ccxt.venues import PROFILES
    except ImportError:
        print(
            "bot4: the ccxt plugin is not installed (pip install bot4-plugin-ccxt)", file=sys.stderr
        )
        return 2
    rows: list[dict[str, Any]] = []
    known = set(PROFILES)
    for p in PROFILES.values():
        tested = ["offline requests (every call, signed by ccxt)"]
        if p.fake:
            tested.append(f"conformance kit and bot4 run against a local fake ({p.fake})")
        if p.history:
            tested.append("data download")
        rows.append(
            {
                "exchange": p.exchange,
                "spot": "spot" in p.types,
                "perpetuals": "swap" in p.types,
                "sandbox": _has_sandbox(p.exchange),
                "tested": "; ".join(tested),
                "requests": p.tested,
            }
        )
    if args.all:
        for name in ccxt.exchanges:
            if name in known:
                continue
            rows.append(
                {
                    "exchange": name,
                    "spot": "untested",
                    "perpetuals": "untested",
                    "sandbox": _has_sandbox(name),
                    "tested": "",
                    "requests": "",
                }
            )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    _print_table(rows, _EXCHANGE_COLUMNS)
    return 0


def bot4_name(market: dict[str, Any]) -> str | None:
    """bot4's name of a ccxt market: BASE-QUOTE (spot), BASE-QUOTE-PERP (a linear
    perpetual settled in its quote); None for anything else (futures with an
    expiry, options, inverse contracts)."""
    base, quote = str(market.get("base") or ""), str(market.get("quote") or "")
    if not base.isalnum() or not quote.isalnum():
        return None
    if market.get("spot"):
        return f"{base}-{quote}".upper()
    if market.get("swap") and market.get("linear") and market.get("settle") == quote:
        return f"{base}-{quote}-PERP".upper()
    return None


def _number(value: Any) -> str | None:
    if value is None:
        return None
    text = format(Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def market_rows(markets: dict[str, Any], market_type: str | None) -> list[dict[str, Any]]:
    rows = []
    for symbol in sorted(markets):
        m = markets[symbol]
        kind = m.get("type")
        if kind not in ("spot", "swap") or (market_type is not None and kind != market_type):
            continue
        if m.get("active") is False:
            continue
        limits = m.get("limits") or {}
        precision = m.get("precision") or {}
        rows.append(
            {
                "symbol": symbol,
                "bot4": bot4_name(m),
                "type": kind,
                "tick": _number(precision.get("price")),
                "lot": _number(precision.get("amount")),
                "min_qty": _number((limits.get("amount") or {}).get("min")),
                "min_notional": _number((limits.get("cost") or {}).get("min")),
                "max_leverage": _number((limits.get("leverage") or {}).get("max")),
            }
        )
    return rows


def cmd_markets(args: argparse.Namespace) -> int:
    from bot4.data.catalog_download import make_client
    from bot4.errors import ExchangeUnavailable

    client = make_client(args.exchange, api_url=args.api_url, sandbox=args.sandbox)
    import ccxt

    try:
        markets = client.load_markets()
    except ccxt.BaseError as exc:
        raise ExchangeUnavailable(f"{args.exchange}: load markets: {exc}") from None
    rows = market_rows(markets, args.type)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print(f"{args.exchange} lists no {args.type or 'spot or swap'} markets")
        return 0
    _print_table(rows, _MARKET_COLUMNS)
    return 0
