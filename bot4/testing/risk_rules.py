"""Risk-rule pack conformance checks: fact names, rule files, fact values.

A pack is third-party code on the pre-trade path. The policy fails closed when
a pack misbehaves, which is safe but stops trading; these checks find the
misbehaviour before a session does: fact names the compiler refuses, rule
files that do not compile, facts missing, undeclared or of the wrong type.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from bot4.contracts import FactContext, RiskRules
from bot4.errors import RiskError, RuleFileError
from bot4.model import MarketData, Order, OrderType, Portfolio, Position, Rejected, Side
from bot4.testing.harness import ConformanceError
from bot4.testing.strategy import sample_ticks

__all__ = [
    "check_fact_names",
    "check_facts_validate",
    "check_rule_files_compile",
    "other_installed_packs",
]


def _fail(message: str) -> ConformanceError:
    return ConformanceError(message)


def check_fact_names(pack: RiskRules) -> None:
    """fact_names() is a frozenset of lower-case dotted names bot4 does not own."""
    from bot4.risk import expr
    from bot4.risk.compiler import RESERVED_ROOTS

    if not isinstance(pack, RiskRules):
        raise _fail(f"the factory returned {type(pack).__name__}, not a bot4.contracts.RiskRules")
    names = pack.fact_names()
    if not isinstance(names, frozenset):
        raise _fail(f"{pack.name}.fact_names() returned {type(names).__name__}; return a frozenset")
    for name in sorted(map(str, names)):
        if not expr.FACT_NAME.match(name):
            raise _fail(
                f"{pack.name}: fact name {name!r} is not lower-case dotted; name facts like "
                f"'{pack.name}.max' so rule files can use them"
            )
        root = name.split(".", 1)[0]
        if root in RESERVED_ROOTS:
            raise _fail(
                f"{pack.name}: fact {name!r} is in the namespace {root!r} that bot4 fills "
                f"itself; use your pack's own prefix, e.g. '{pack.name}.{name.split('.')[-1]}'"
            )


def other_installed_packs(pack: RiskRules) -> list[RiskRules]:
    """The installed packs except ``pack``'s own name: a session compiles the
    policy with all of them, and the default rules read their facts."""
    from bot4.risk.packs import installed_packs

    return [p for p in installed_packs() if p.name != pack.name]


def check_rule_files_compile(
    pack: RiskRules, rules: Sequence[Path], others: Sequence[RiskRules] = ()
) -> None:
    """The policy (``rules``) plus the pack's rule_files() compile, together
    with ``others`` (the other packs a session would load)."""
    from bot4.risk import RiskPolicy

    for path in pack.rule_files():
        if not Path(path).is_file():
            raise _fail(
                f"{pack.name}.rule_files() names {path}, which does not exist; ship rule files "
                "inside the package (e.g. Path(__file__).parent / 'rules' / 'x.yaml') and "
                "include them in the wheel"
            )
    try:
        policy = RiskPolicy.load(rules, [pack, *others])
    except RuleFileError as exc:
        raise _fail(
            f"the rules of pack {pack.name!r} do not compile with {', '.join(map(str, rules))}: "
            f"{exc}"
        ) from exc
    policy.close()


def _contexts() -> list[tuple[str, FactContext]]:
    """Orders of both sides against an empty book, a long and a short."""
    ticks = {t.symbol: t for t in sample_ticks(60)}
    btc, eth = ticks["BTC-USDT"], ticks["ETH-USDT"]
    marks = {"BTC-USDT": btc.mid, "ETH-USDT": eth.mid}
    books = {
        "no positions": {},
        "long ETH-USDT": {"ETH-USDT": Position("ETH-USDT", Decimal(2), eth.mid)},
        "short ETH-USDT": {"ETH-USDT": Position("ETH-USDT", Decimal(-2), eth.mid)},
        "long BTC-USDT": {"BTC-USDT": Position("BTC-USDT", Decimal(1), btc.mid)},
    }
    out = []
    for label, positions in books.items():
        portfolio = Portfolio(cash=Decimal(10000), positions=positions, marks=marks)
        for side in Side:
            entry = btc.ask if side is Side.BUY else btc.bid
            stop = entry * (Decimal("0.98") if side is Side.BUY else Decimal("1.02"))
            order = Order(
                client_order_id=f"kit-{side.value}",
                symbol="BTC-USDT",
                side=side,
                type=OrderType.MARKET,
                qty=Decimal("0.5"),
                stop_loss=stop.quantize(Decimal("0.01")),
            )
            out.append(
                (
                    f"a market {side.value} of 0.5 BTC-USDT with {label}",
                    FactContext(order, portfolio, btc),
                )
            )
    return out


def check_facts_validate(
    pack: RiskRules, rules: Sequence[Path], others: Sequence[RiskRules] = ()
) -> None:
    """facts() returns exactly the declared facts with values the engine takes,
    and a policy with the pack decides orders without failing closed on it."""
    from bot4.risk import FAIL_CLOSED, RiskPolicy
    from bot4.risk.facts import to_fact

    declared = pack.fact_names()
    ticks: list[MarketData] = sample_ticks(400)
    for tick in ticks:
        pack.on_market_data(tick)
    for label, ctx in _contexts():
        started = time.perf_counter()
        facts = pack.facts(ctx)
        elapsed = time.perf_counter() - started
        if not isinstance(facts, Mapping):
            raise _fail(
                f"{pack.name}.facts() for {label} returned {type(facts).__name__}; return a mapping"
            )
        missing = sorted(declared - set(facts))
        if missing:
            raise _fail(
                f"{pack.name}.facts() for {label} lacks declared fact(s) {missing}; return every "
                "fact of fact_names() for every order (the policy fails closed otherwise)"
            )
        extra = sorted(set(facts) - declared)
        if extra:
            raise _fail(
                f"{pack.name}.facts() for {label} returned undeclared fact(s) {extra}; add them "
                "to fact_names() so rule files using them compile"
            )
        for name, value in facts.items():
            try:
                to_fact(name, value)
            except RiskError as exc:
                raise _fail(
                    f"{pack.name}.facts() for {label}: {exc}; facts are finite numbers, "
                    "booleans or short strings"
                ) from exc
        if elapsed > 0.05:
            raise _fail(
                f"{pack.name}.facts() took {elapsed * 1000:.0f} ms for {label}; it runs on the "
                "pre-trade path for every order: precompute in on_market_data()"
            )
    policy = RiskPolicy.load(rules, [pack, *others])
    try:
        for label, ctx in _contexts():
            decision = policy.check_order(ctx.order, ctx.portfolio, ctx.market, time.time_ns())
            if (
                isinstance(decision, Rejected)
                and decision.rule == FAIL_CLOSED
                and f"risk pack {pack.name!r}" in decision.reason
            ):
                raise _fail(
                    f"the policy failed closed on {label} because of pack {pack.name!r}: "
                    f"{decision.reason}"
                )
    finally:
        policy.close()
