"""The ``bot4`` command line.

Each sub-command lives in its own module with an ``add_commands(subparsers)``
function; plugins add more through the ``register_commands`` hook. Handlers
return the process exit code.

An error the user caused (a :class:`bot4.errors.Bot4Error`: a bad option,
config value, rule file, data row; a database or Redis that cannot be
reached) that a handler lets through is printed as one line,
``bot4: <file>:<line>: <message>``, and exits 2 (1 for an exchange's error),
also when trio wrapped it in an exception group. ``--debug`` prints the
traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

import trio

from bot4 import __version__
from bot4.cli import plugins as plugins_cmd
from bot4.engine_check import engine_load_problem
from bot4.errors import Bot4Error, ExchangeError
from bot4.plugins import PluginManager
from bot4.secrets import redact

_BUILTIN = (
    "plugins",
    "rules",
    "run",
    "replay",
    "journal",
    "breaker",
    "kill",
    "data",
    "exchanges",
    "markets",
)


def build_parser(manager: PluginManager | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bot4", description="A trading kernel whose risk policy lives in files you can edit."
    )
    parser.add_argument("--version", action="version", version=f"bot4 {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback as well"
    )
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
    from bot4.cli import data as data_cmd
    from bot4.cli import markets as markets_cmd

    data_cmd.add_commands(sub)
    markets_cmd.add_commands(sub)
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
    except (Bot4Error, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None:
            print("interrupted", file=sys.stderr)  # Ctrl-C outside bot4 run, inside trio
            return 130
        error = user_error(exc)
        if error is None:
            raise  # not the user's doing: a bug, keep the traceback
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        print(f"bot4: {redact(str(error))}", file=sys.stderr)
        return 1 if isinstance(error, ExchangeError) else 2


def user_error(exc: BaseException) -> Bot4Error | None:
    """The Bot4Error ``exc`` is, or the one inside the exception groups trio's
    nurseries wrapped it in (cancellations aside); None for anything else."""
    if isinstance(exc, Bot4Error):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found: list[Bot4Error] = []
        for inner in exc.exceptions:
            if isinstance(inner, trio.Cancelled):
                continue
            error = user_error(inner)
            if error is None:
                return None
            found.append(error)
        return found[0] if found else None
    return None


def entry() -> None:  # pragma: no cover - console script shim
    sys.exit(main())
