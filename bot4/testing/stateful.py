"""Random operation sequences against the plugin and the reference, compared.

A hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine` feeds the same
quotes and places, retries and cancels the same orders on two harnesses, the
plugin's and the reference's (the paper exchange unless told otherwise), and
after every step compares what each returned or refused, then the books:
balance, open orders, positions and fills. A difference fails with the shrunk
sequence of steps that led to it.

Both harnesses live on one trio loop in a helper thread for the whole run:
hypothesis drives the machine synchronously, and a networked harness must keep
its sockets on the loop that opened them.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from bot4.contracts import Capability
from bot4.errors import ExchangeRefused, InsufficientFunds, InvalidOrder, OrderNotFound
from bot4.model import Order, OrderState, OrderType, Side
from bot4.testing.exchange import CheckSkipped, HarnessFactory, Kit
from bot4.testing.harness import ConformanceError, FeedHarness, Harness

__all__ = ["check_against_reference", "paper_reference"]

T = TypeVar("T")


def paper_reference(symbol: str = "BTC-USDT", base_price: int = 100) -> Harness:
    """The reference: bot4's paper exchange with its default settings."""
    try:
        from bot4_paper import PaperExchange
    except ImportError as exc:  # the kit's reference ships in its own distribution
        raise ConformanceError(
            "the conformance kit compares against the paper exchange: pip install bot4-plugin-paper"
        ) from exc
    return FeedHarness(PaperExchange, symbol=symbol, base_price=base_price)


class _Portal:
    """A trio loop in a helper thread that runs coroutines for the caller."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._ready.set()
        await self._stop.wait()

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        return trio.from_thread.run(fn, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


def _refusal(exc: ExchangeRefused) -> str:
    for kind in (InsufficientFunds, InvalidOrder, OrderNotFound):
        if isinstance(exc, kind):
            return kind.__name__
    return "ExchangeRefused"


async def _outcome(kit: Kit, what: str, call: Callable[[], Awaitable[OrderState]]) -> object:
    """What a call did, in comparable form: the state's numbers or the refusal."""

    async def attempt() -> OrderState | str:
        try:
            return await call()
        except ExchangeRefused as exc:  # a refusal is an outcome to compare, not a failure
            return _refusal(exc)

    result = await kit.call(what, attempt())
    if isinstance(result, str):
        return ("refused", result)
    return ("ok", result.status.value, result.filled_qty, result.avg_price)


async def _book(kit: Kit) -> dict[str, object]:
    bal = await kit.balance()
    positions = await kit.call("fetch_positions()", kit.ex.fetch_positions())
    fills = await kit.all_fills()
    return {
        "balance": (bal.total, bal.free, bal.used),
        "open orders": await kit.open_ids(),
        "positions": sorted((p.symbol, p.qty, p.entry_price) for p in positions),
        "fills": [(f.client_order_id, f.side.value, f.qty, f.price, f.fee) for f in fills],
    }


def check_against_reference(
    make_plugin: HarnessFactory,
    make_reference: HarnessFactory = paper_reference,
    *,
    max_examples: int = 25,
    steps: int = 25,
) -> None:
    """Run the state machine; raises ConformanceError (via hypothesis, with the
    failing steps) on the first difference, CheckSkipped if nothing is tradable."""
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        Bundle,
        RuleBasedStateMachine,
        invariant,
        rule,
        run_state_machine_as_test,
    )

    probe = make_plugin()
    caps = probe.exchange.capabilities
    kinds = [
        kind
        for kind, cap in (
            (OrderType.MARKET, Capability.MARKET_ORDERS),
            (OrderType.LIMIT, Capability.LIMIT_ORDERS),
        )
        if cap in caps
    ]
    if not kinds:
        raise CheckSkipped(f"{probe.exchange.name} claims neither market nor limit orders")
    name = probe.exchange.name
    portal = _Portal()

    class Machine(RuleBasedStateMachine):
        placed = Bundle("placed")

        def __init__(self) -> None:
            super().__init__()
            self.steps: list[str] = []
            self.kits: list[Kit] = []
            # Each harness's orders by client id, so a retry resends exactly what was sent.
            self.orders: dict[int, dict[str, Order]] = {}
            self.price = 0

            async def start() -> None:
                for make in (make_plugin, make_reference):
                    h = make()
                    await h.start()
                    kit = Kit(h, "ref")
                    await kit.setup()
                    await kit.quote()
                    self.kits.append(kit)

            portal.run(start)

        def both(self, what: str, op: Callable[[Kit], Awaitable[Any]]) -> None:
            self.steps.append(what)

            async def run() -> list[Any]:
                return [await op(kit) for kit in self.kits]

            mine, ref = portal.run(run)
            if isinstance(mine, dict) and isinstance(ref, dict):
                # Show only what differs: a whole book is hard to read.
                keys = [k for k in mine if mine.get(k) != ref.get(k)]
                mine, ref = {k: mine[k] for k in keys}, {k: ref.get(k) for k in keys}
            if mine != ref:
                raise ConformanceError(
                    f"{name} and the reference paper exchange disagree after "
                    f"{len(self.steps)} step(s):\n  " + "\n  ".join(self.steps) + f"\n"
                    f"{name} gave      {mine!r}\nreference gave {ref!r}\n"
                    "Match the reference's behaviour (states, refusals, fills, balance), or "
                    "give ExchangeSuite a `reference` configured like your venue"
                )

        @rule(move=st.integers(-15, 15), thin=st.booleans())
        def tick(self, move: int, thin: bool) -> None:
            self.price = max(-50, min(50, self.price + move))

            async def op(kit: Kit) -> None:
                await kit.quote(self.price, volume=kit.unit * 3 if thin else None)

            self.both(f"tick bid={self.price:+d} steps{' thin' if thin else ''}", op)

        @rule(
            target=placed,
            side=st.sampled_from(Side),
            kind=st.sampled_from(kinds),
            mult=st.integers(1, 40),
            off=st.integers(-20, 20),
        )
        def place(self, side: Side, kind: OrderType, mult: int, off: int) -> str:
            coid = f"sm-{len(self.steps)}"

            async def op(kit: Kit) -> object:
                price = kit.price(self.price + off) if kind is OrderType.LIMIT else None
                order = kit.order(side, kind, kit.unit * mult, price, client_order_id=coid)
                self.orders.setdefault(id(kit), {})[coid] = order
                return await _outcome(kit, "place_order", lambda: kit.ex.place_order(order))

            self.both(f"place {kind.value} {side.value} {mult} units off {off:+d} id={coid}", op)
            return coid

        @rule(coid=placed)
        def retry(self, coid: str) -> None:
            async def op(kit: Kit) -> object:
                order = self.orders[id(kit)][coid]
                return await _outcome(kit, "place_order", lambda: kit.ex.place_order(order))

            self.both(f"retry place id={coid}", op)

        @rule(coid=placed)
        def cancel(self, coid: str) -> None:
            async def op(kit: Kit) -> object:
                return await _outcome(
                    kit, "cancel_order", lambda: kit.ex.cancel_order(kit.symbol, coid)
                )

            self.both(f"cancel id={coid}", op)

        @invariant()
        def same_book(self) -> None:
            if len(self.kits) == 2:
                self.both("(compare balance, open orders, positions, fills)", _book)

        def teardown(self) -> None:
            async def stop() -> None:
                for kit in self.kits:
                    with trio.CancelScope(shield=True):
                        await kit.h.aclose()

            portal.run(stop)

    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=max_examples,
                stateful_step_count=steps,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                report_multiple_bugs=False,
            ),
        )
    finally:
        portal.close()
