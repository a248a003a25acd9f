"""``bot4 plugins list``: what is installed, its kind and hooks, and whether it loaded."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from bot4.plugins import PluginManager

_COLUMNS = ("name", "version", "kind", "status", "hooks", "distribution", "origin")


def add_commands(sub: Any) -> None:
    plugins = sub.add_parser("plugins", help="installed plugins")
    psub = plugins.add_subparsers(dest="plugins_command", metavar="ACTION")
    listing = psub.add_parser("list", help="list plugins and whether they loaded")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)
    new = psub.add_parser(
        "new", help="write a ready plugin distribution (bot4-plugin-NAME/) to start from"
    )
    new.add_argument("kind", choices=("exchange", "strategy", "risk-rules"))
    new.add_argument("name", help="plugin name: lower-case letters, digits and _")
    new.add_argument("--dir", default=".", help="where to create it (default: here)")
    new.set_defaults(func=run_new)
    plugins.set_defaults(func=run_list, json=False)


def run_new(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bot4.errors import ConfigError
    from bot4.scaffold import new_plugin

    try:
        root = new_plugin(args.kind, args.name, Path(args.dir))
    except ConfigError as exc:
        print(f"bot4 plugins new: {exc}", file=sys.stderr)
        return 2
    print(f"created {root}")
    print(f"next: pip install -e {root} && bot4 plugins list && (cd {root} && pytest)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    manager = PluginManager.load()
    rows = [p.as_dict() for p in manager.plugins]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0  # a broken plugin is reported, not an error of this command
    if not rows:
        print("no bot4 plugins installed (or none chosen by BOT4_PLUGINS)")
        return 0
    table = [[_cell(row, col) for col in _COLUMNS] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in table)) for i, col in enumerate(_COLUMNS)]
    print("  ".join(col.upper().ljust(w) for col, w in zip(_COLUMNS, widths, strict=True)).rstrip())
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _cell(row: dict[str, Any], col: str) -> str:
    value = row[col]
    if col == "hooks":
        return ",".join(h.removeprefix("register_") for h in value) or "-"
    return str(value) or "-"
