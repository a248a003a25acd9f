"""A bot4 process for the multi-process tests of the shared budget, run as
``python -m tests.shared_driver MODE ...`` (one trio loop per process).

* ``storm``: place ``--orders`` concurrent orders through the real
  :class:`SharedBudgetCheck`; every approved order is then either filled
  (settled, the process's position grows by its notional) or cancelled
  (released), alternately. Prints one JSON line with what happened.
* ``hold``: reserve ``--orders`` orders and keep them, heartbeating and
  sweeping like a session does; prints ``ready`` and the held notional, then
  runs until killed (or ``--seconds``), reserving one more order after every
  sweep that freed something (proof it goes on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal

import trio
import trio.lowlevel

from bot4.model import Order, OrderType, Portfolio, Side
from bot4.shared.budget import BudgetLimits, SharedBudget, SharedBudgetCheck
from bot4.shared.connection import RedisConfig, SharedConnection

SYMBOL = "BTC-USDT"
PRICE = Decimal(100)


def _budget(args: argparse.Namespace, conn: SharedConnection) -> SharedBudget:
    limits = BudgetLimits(max_exposure=Decimal(args.limit))
    return SharedBudget(conn, limits, lease=args.lease)


def _order(process: str, i: int, qty: Decimal) -> Order:
    return Order(f"{process}-{i}", SYMBOL, Side.BUY, OrderType.MARKET, qty)


async def storm(args: argparse.Namespace, config: RedisConfig) -> dict[str, object]:
    with SharedConnection(config, threads=args.threads) as conn:
        budget = _budget(args, conn)
        check = SharedBudgetCheck(budget)
        portfolio = Portfolio(cash=Decimal(1_000_000), marks={SYMBOL: PRICE})
        qty = Decimal(args.notional) / PRICE
        lock = trio.Lock()  # settles in order, as the session's writer does
        out: dict[str, object] = {"process": config.process}
        approved: list[int] = []
        filled: list[int] = []
        rejected: dict[str, int] = {}
        position = Decimal(0)

        async def one(i: int) -> None:
            nonlocal position
            order = _order(config.process, i, qty)
            verdict = await check.check(order, portfolio)
            if verdict is not None:
                rejected[verdict.rule] = rejected.get(verdict.rule, 0) + 1
                return
            approved.append(i)
            await trio.lowlevel.checkpoint()
            if i % 2 == 0:
                async with lock:
                    position += order.qty * PRICE
                    await budget.settle(order.client_order_id, SYMBOL, order.qty * PRICE, position)
                filled.append(i)
            else:
                await budget.release(order.client_order_id)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(args.orders):
                nursery.start_soon(one, i)
        out.update(
            approved=len(approved),
            filled=len(filled),
            filled_notional=str(len(filled) * Decimal(args.notional)),
            position=str(position),
            rejected=rejected,
            seconds=time.perf_counter() - started,
        )
        return out


async def hold(args: argparse.Namespace, config: RedisConfig) -> None:
    with SharedConnection(config) as conn:
        budget = _budget(args, conn)
        check = SharedBudgetCheck(budget)
        portfolio = Portfolio(cash=Decimal(1_000_000), marks={SYMBOL: PRICE})
        qty = Decimal(args.notional) / PRICE
        held = 0
        for i in range(args.orders):
            if await check.check(_order(config.process, i, qty), portfolio) is None:
                held += 1
        print(json.dumps({"ready": True, "held": held}), flush=True)
        extra = 0
        deadline = trio.current_time() + args.seconds
        while trio.current_time() < deadline:
            await trio.sleep(args.lease / 3)
            await trio.to_thread.run_sync(budget.heartbeat_sync, None)
            swept, released = await trio.to_thread.run_sync(budget.sweep_sync)
            if released:
                verdict = await check.check(_order(config.process, 10_000 + extra, qty), portfolio)
                extra += verdict is None
                print(
                    json.dumps({"swept": swept, "released": released, "more": verdict is None}),
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shared_driver")
    parser.add_argument("mode", choices=("storm", "hold"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--process", required=True)
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--notional", default="10")
    parser.add_argument("--limit", default="10000")
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    config = RedisConfig(url=args.url, namespace=args.namespace, process=args.process)
    if args.mode == "storm":
        print(json.dumps(trio.run(storm, args, config)), flush=True)
    else:
        trio.run(hold, args, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
