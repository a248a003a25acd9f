"""``bot4 breaker status|trip|reset`` and ``bot4 kill``: the shared breaker from any shell.

They act on the Redis named by ``BOT4_REDIS_URL`` (namespace
``BOT4_REDIS_NAMESPACE``), so every bot4 process of the deployment obeys.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from typing import Any

from bot4.errors import Bot4Error
from bot4.secrets import redact

_NO_URL = (
    "BOT4_REDIS_URL is not set: the shared breaker and kill switch need Redis "
    "(e.g. BOT4_REDIS_URL=redis://127.0.0.1:6379/0); a single bot4 process has "
    "its own breaker, reset by restarting it"
)


def add_commands(sub: Any) -> None:
    breaker = sub.add_parser(
        "breaker",
        help="show, trip or reset the circuit breaker shared by every process (needs Redis)",
        description="The circuit breaker shared through Redis (BOT4_REDIS_URL): every bot4 "
        "process of the deployment follows it.",
    )
    actions = breaker.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", help="the breaker, the kill switch and the budget")
    status.add_argument("--json", action="store_true", help="print as JSON")
    trip = actions.add_parser("trip", help="trip it: every process refuses new orders")
    trip.add_argument("--reason", default="tripped by hand", help="why (shown everywhere)")
    reset = actions.add_parser("reset", help="re-arm it (also lifts a kill)")
    reset.add_argument("--reason", default="", help="why (logged)")
    breaker.set_defaults(func=cmd_breaker)

    kill = sub.add_parser(
        "kill",
        help="stop trading everywhere: trip the breaker, cancel every open order, refuse new ones",
        description="Kill switch for every bot4 process using BOT4_REDIS_URL. Processes cancel "
        "their open orders and refuse every new order that is not reduce-only, until "
        "`bot4 breaker reset`.",
    )
    kill.add_argument("--reason", default="killed by hand", help="why (shown everywhere)")
    kill.add_argument(
        "--wait",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="wait this long for every live process to confirm (default 3)",
    )
    kill.set_defaults(func=cmd_kill)


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()} (cli)"


def _fail(command: str, text: str, code: int = 1) -> int:
    print(f"bot4 {command}: {redact(text)}", file=sys.stderr)
    return code


def _leases(conn: Any) -> dict[str, float]:
    """Live processes by lease: each one whose heartbeat key has not expired,
    with the seconds its lease has left. A process that registered and then
    died is not live, whatever ``<ns>:procs`` still lists."""
    ns = conn.config.prefix

    def read(client: Any) -> dict[str, float]:
        procs = sorted(client.smembers(f"{ns}:procs"))
        pipe = client.pipeline(transaction=False)
        for proc in procs:
            pipe.pttl(f"{ns}:hb:{proc}")
        # PTTL: -2 for a key that is gone (lease expired), -1 for no expiry.
        return {
            p: ms / 1000
            for p, ms in zip(procs, pipe.execute(), strict=True)
            if ms is not None and ms > 0
        }

    result: dict[str, float] = conn.run(read)
    return result


def _live(conn: Any) -> list[str]:
    return list(_leases(conn))


def cmd_breaker(args: argparse.Namespace) -> int:
    from bot4.shared.breaker import SharedBreaker
    from bot4.shared.budget import SharedBudget
    from bot4.shared.connection import RedisConfig, SharedConnection

    command = f"breaker {args.action}"
    try:
        config = RedisConfig.from_env()
        if config is None:
            return _fail(command, _NO_URL, 2)
        with SharedConnection(config) as conn:
            breaker = SharedBreaker(conn)
            if args.action == "trip":
                heard = breaker.change_sync("trip", args.reason, _who())
                print(f"breaker tripped: {args.reason} ({heard} process(es) listening)")
                return 0
            if args.action == "reset":
                heard = breaker.change_sync("reset", args.reason, _who())
                print(f"breaker reset ({heard} process(es) listening)")
                return 0
            state = breaker.state_sync()
            figures = SharedBudget(conn).figures_sync()
            leases = _leases(conn)
            live = list(leases)
    except Bot4Error as exc:
        return _fail(command, str(exc))
    if args.json:
        print(
            json.dumps(
                {
                    "redis": config.safe_url,
                    "namespace": config.namespace,
                    "tripped": state.tripped,
                    "reason": state.reason,
                    "by": state.by,
                    "at_ns": state.at_ns,
                    "killed": state.killed,
                    "kill_reason": state.kill_reason,
                    "processes": live,
                    "leases": {p: round(left, 3) for p, left in leases.items()},
                    "exposure": str(figures.exposure),
                    "reserved": str(figures.reserved),
                    "equity": str(figures.equity),
                },
                indent=2,
            )
        )
        return 0
    print(f"redis:     {config.safe_url} (namespace {config.namespace})")
    print(f"breaker:   {state.describe()}")
    shown = ", ".join(f"{p}, lease {left:.1f} s left" for p, left in leases.items())
    print(f"processes: {len(live)} live by lease" + (f" ({shown})" if live else ""))
    print(
        f"budget:    exposure {figures.exposure:,.2f}, reserved {figures.reserved:,.2f}, "
        f"equity {figures.equity:,.2f}"
    )
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    from bot4.shared.breaker import SharedBreaker
    from bot4.shared.connection import RedisConfig, SharedConnection

    try:
        config = RedisConfig.from_env()
        if config is None:
            return _fail("kill", _NO_URL, 2)
        with SharedConnection(config) as conn:
            breaker = SharedBreaker(conn)
            live = _live(conn)
            heard = breaker.change_sync("kill", args.reason, _who())
            deadline = time.monotonic() + max(0.0, args.wait)
            acks: dict[str, str] = {}
            while True:
                acks = breaker.kill_acks_sync()
                if all(p in acks for p in live) or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
    except Bot4Error as exc:
        return _fail("kill", str(exc))
    confirmed = [p for p in live if p in acks]
    print(
        f"kill: breaker tripped and kill broadcast ({heard} listening); "
        f"{len(confirmed)} of {len(live)} live process(es) confirmed halting"
    )
    missing = [p for p in live if p not in acks]
    if missing:
        print(f"kill: no confirmation from {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
