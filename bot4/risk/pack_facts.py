"""Risk packs' facts: what each pack declares, and asking for them per order.

When a policy is built, :func:`declared_owners` and :func:`declared_types`
check what each pack says it gives (``RiskRules.fact_names`` and
``fact_types``): lower-case dotted names outside bot4's own namespaces, each
given by one pack, of a known type. Any fault is a RuleFileError naming the
pack, so the policy is refused (or a reload keeps the last good one).

On every order whose rules read a pack's fact, :meth:`PackFacts.values` asks
the packs (third-party code on the trading path) and validates what they
answer. A pack that raises or answers badly leaves its facts unknown and is
named; the order is then rejected unless :func:`decided_without` shows the
decision did not depend on them (an exit ranked first goes through while a
pack is broken). :class:`~bot4.risk.policy.RiskPolicy` binds
:meth:`PackFacts.values` once and calls it from its order path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from bot4.contracts import FactContext, RiskRules
from bot4.errors import RiskError, RuleFileError
from bot4.model import MarketData, Order, Portfolio
from bot4.risk import expr
from bot4.risk.compiler import RESERVED_ROOTS, CompiledPolicy, Rule, StagePlan
from bot4.risk.expr import MAX_MAGNITUDE
from bot4.risk.facts import to_fact

__all__ = [
    "NOTHING_UNKNOWN",
    "PackFacts",
    "decided_without",
    "declared_owners",
    "declared_types",
    "fact_context",
]

_KINDS = ("number", "bool", "string")

NOTHING_UNKNOWN: frozenset[str] = frozenset()


def declared_owners(packs: Sequence[RiskRules]) -> dict[str, str]:
    """Each fact the packs give -> the name of the pack that gives it."""
    owners: dict[str, str] = {}
    for pack in packs:
        try:
            names = pack.fact_names()
        except Exception as exc:
            raise RuleFileError(
                f"risk pack {pack.name!r}", None, f"fact_names() failed: {exc}"
            ) from None
        for name in names:
            where = f"risk pack {pack.name!r}"
            if not isinstance(name, str) or not expr.FACT_NAME.match(name):
                raise RuleFileError(
                    where,
                    None,
                    f"fact name {name!r} is not lower-case dotted (e.g. correlation.max)",
                )
            if name.split(".", 1)[0] in RESERVED_ROOTS:
                raise RuleFileError(
                    where, None, f"fact {name!r} is in a namespace bot4 fills itself"
                )
            if name in owners:
                raise RuleFileError(
                    where, None, f"fact {name!r} is also provided by risk pack {owners[name]!r}"
                )
            owners[name] = pack.name
    return owners


def declared_types(packs: Sequence[RiskRules], owners: Mapping[str, str]) -> dict[str, str]:
    """The type each pack declares for its facts (``RiskRules.fact_types``)."""
    kinds: dict[str, str] = {}
    for pack in packs:
        where = f"risk pack {pack.name!r}"
        declare = getattr(pack, "fact_types", None)
        try:
            declared = declare() if declare is not None else {}
        except Exception as exc:
            raise RuleFileError(where, None, f"fact_types() failed: {exc}") from None
        if not isinstance(declared, Mapping):
            raise RuleFileError(where, None, "fact_types() must return a mapping")
        for name, kind in declared.items():
            if owners.get(name) != pack.name:
                raise RuleFileError(
                    where, None, f"fact_types() names {name!r}, which is not one of its facts"
                )
            if kind not in _KINDS:
                raise RuleFileError(
                    where, None, f"fact {name!r}: type {kind!r} is not one of {', '.join(_KINDS)}"
                )
            kinds[name] = kind
    return kinds


# FactContext's slots set directly: its attrs __init__ (frozen, so through
# object.__setattr__ per field) costs more than a pack's whole answer, and it
# has no converter or validator to skip (a test holds the result equal to the
# class's own).
_context_new = object.__new__
_context_order = FactContext.__dict__["order"].__set__
_context_portfolio = FactContext.__dict__["portfolio"].__set__
_context_market = FactContext.__dict__["market"].__set__


def fact_context(order: Order, portfolio: Portfolio, market: MarketData | None) -> FactContext:
    """``FactContext(order=order, portfolio=portfolio, market=market)``."""
    ctx: FactContext = _context_new(FactContext)
    _context_order(ctx, order)
    _context_portfolio(ctx, portfolio)
    _context_market(ctx, market)
    return ctx


class PackFacts:
    """The packs of one policy, asked for the facts its order rules read."""

    __slots__ = ("_packs", "_wanted")

    def __init__(self, packs: Sequence[RiskRules]) -> None:
        self._packs = tuple(packs)
        # (compiled policy, facts needed, [(pack, [(needed fact it gives, type)])])
        self._wanted: (
            tuple[CompiledPolicy, frozenset[str], list[tuple[RiskRules, list[tuple[str, str]]]]]
            | None
        ) = None

    def values(
        self,
        compiled: CompiledPolicy,
        facts: dict[str, object],
        needed: frozenset[str],
        order: Order,
        portfolio: Portfolio,
        market: MarketData | None,
        overrides: Mapping[str, object] | None,
    ) -> tuple[str | None, frozenset[str]]:
        """Ask each pack for the facts the rules read. Returns the first
        failure (naming the pack) and the facts left unknown by failures."""
        cache = self._wanted
        if cache is None or cache[0] is not compiled or cache[1] is not needed:
            # Which of the needed facts each pack gives, and their declared
            # types: fixed for one compiled policy, so worked out once rather
            # than on every order.
            owners = compiled.pack_facts
            kinds = compiled.pack_types
            cache = self._wanted = (
                compiled,
                needed,
                [
                    (
                        pack,
                        [(n, kinds.get(n, "number")) for n in needed if owners.get(n) == pack.name],
                    )
                    for pack in self._packs
                ],
            )
        ctx = fact_context(order, portfolio, market)
        failure: str | None = None
        unknown: set[str] = set()
        for pack, wanted in cache[2]:
            if not wanted or (overrides and all(n in overrides for n, _ in wanted)):
                continue
            problem = None
            try:
                values = pack.facts(ctx)
            except Exception as exc:  # third-party code on the trading path
                problem = (
                    f"risk pack {pack.name!r} failed to give facts: {type(exc).__name__}: {exc}"
                )
                values = {}
            for name, kind in wanted:
                if problem is None:
                    if kind == "number" and type(values) is dict:
                        # The common case inline: a float (or int, Decimal)
                        # within range, as pack_value would take it; anything
                        # else goes through pack_value and its errors.
                        raw = values.get(name)
                        raw_type = type(raw)
                        if raw_type is float or raw_type is Decimal or raw_type is int:
                            number = float(raw)  # type: ignore[arg-type]
                            if -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE:  # refuses NaN
                                facts[name] = raw if raw_type is Decimal else number
                                continue
                    problem = pack_value(pack.name, name, values, facts, kind)
                if problem is not None:
                    unknown.update(n for n, _ in wanted)
                    failure = failure or problem
                    break
        return failure, frozenset(unknown) if unknown else NOTHING_UNKNOWN


def pack_value(
    pack: str, name: str, values: object, facts: dict[str, object], kind: str = "number"
) -> str | None:
    """Put fact ``name`` from a pack's answer ``values`` into ``facts``;
    returns what is wrong with it instead, if anything."""
    if not isinstance(values, Mapping) or name not in values:
        return f"risk pack {pack!r} did not give fact {name}"
    try:
        value = to_fact(name, values[name])
    except RiskError as exc:
        return f"risk pack {pack!r}: {exc}"
    if kind == "bool" or kind == "string":
        # A declared yes/no or text fact: exactly that type, else the order is refused.
        if not isinstance(value, bool if kind == "bool" else str) or (
            kind == "string" and isinstance(value, bool)
        ):
            return f"risk pack {pack!r}: fact {name} must be a {kind}, got {values[name]!r}"
        facts[name] = value
        return None
    if not isinstance(value, float):
        return f"risk pack {pack!r}: fact {name} must be a number"
    # A Decimal is kept as given (checked finite and in range above): the
    # exact confirmation of the decision compares it, not its double.
    raw = values[name]
    facts[name] = raw if type(raw) is Decimal else value
    return None


def decided_without(plan: StagePlan, fired: list[Rule], unknown: frozenset[str]) -> bool:
    """With some pack facts unknown, a decision still stands when neither
    the deciding rule nor any rule ranked before it reads them: those
    rules' outcome did not depend on the missing facts. This is what lets
    an exit (``order.reducing``, ranked first) through while a pack is
    broken; every other order is rejected naming the pack."""
    if not fired:
        return False
    decider = fired[0]
    for rule in plan.rules:
        if rule.rank > decider.rank:
            return True
        if unknown.intersection(expr.facts_of(rule.when)):
            return False
    return True
