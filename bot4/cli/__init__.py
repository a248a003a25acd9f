"""The ``bot4`` command line.

Each sub-command lives in its own module with an ``add_commands(subparsers)``
function; plugins add more through the ``register_commands`` hook. Handlers
return the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bot4 import __version__
from bot4.cli import plugins as plugins_cmd
from bot4.engine_check import engine_load_problem
from bot4.plugins import PluginManager

_BUILTIN = ("plugins", "rules", "run", "replay", "journal", "breaker", "kill")


def build_parser(manager: PluginManager | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bot4", description="A trading kernel whose risk policy lives in files you can edit."
    )
    parser.add_argument("--version", action="version", version=f"bot4 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    plugins_cmd.add_commands(sub)
    from bot4.cli import rules as rules_cmd
    from bot4.cli import run as run_cmd

    rules_cmd.add_commands(sub)
    run_cmd.add_commands(sub)
    from bot4.cli import journal as journal_cmd

    journal_cmd.add_commands(sub)
    from bot4.cli import shared as shared_cmd

    shared_cmd.add_commands(sub)
    if manager is not None:
        for command in manager.registry.commands.values():
            if command.name in _BUILTIN:
                continue  # a plugin may not shadow a built-in command
            p = sub.add_parser(
                command.name, help=command.description or f"(from plugin {command.plugin})"
            )
            command.configure(p)
            p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before anything imports the rule engine: a build that cannot load (Python
    # 3.13's removed PyEval_CallObject) gets one line with the fix, not a traceback.
    problem = engine_load_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Plugin commands need the plugins loaded before parsing; built-in commands
    # load them themselves when (and only when) they need them.
    manager = None
    if args_list and not args_list[0].startswith("-") and args_list[0] not in _BUILTIN:
        manager = PluginManager.load()
    parser = build_parser(manager)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
