"""``bot4 rules test --coverage``: which rules and conditions the scenarios exercised.

As ``opa test --coverage`` does for Rego, this tells a policy author which
parts of the policy no test has ever made act, which is where an edit can
break things silently. Two measures, both over the scenarios of one run:

* **Rules**: a rule is covered when it *fired* (its condition held) in at
  least one scenario. A rule that was evaluated but never held is listed,
  and so is one never evaluated at all (no scenario of its stage).
* **Conditions**: every comparison in a rule's ``when`` (``order.leverage >
  max_leverage``, a yes/no fact, each side of an ``and`` / ``or``) is an
  outcome pair: covered when some scenario saw it true and some saw it
  false. This is condition coverage, the branch measure a reader of a
  compound condition cares about: ``a and b`` tested only with both true
  says nothing about either one alone. Each comparison is evaluated on the
  facts the policy computed for the scenario (:attr:`Explanation.facts`),
  with the engine's arithmetic (:func:`bot4.risk.expr.evaluate`).

The percentage is covered items over all items, an item being a rule's
"fired" and each comparison's "true" and "false".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from bot4.risk import expr
from bot4.risk.compiled import CompiledPolicy, Rule
from bot4.risk.policy import Explanation


@attrs.define
class ConditionCoverage:
    """One comparison of a rule's condition, and the outcomes seen."""

    text: str
    seen_true: bool = False
    seen_false: bool = False


@attrs.define
class RuleCoverage:
    rule: Rule
    evaluated: int = 0  # scenarios in which the rule was evaluated
    fired: int = 0  # ... and its condition held
    conditions: list[ConditionCoverage] = attrs.field(factory=list)
    nodes: list[expr.Node] = attrs.field(factory=list)


def _text(node: expr.Node) -> str:
    if isinstance(node, expr.Const):
        return node.name or repr(node.value)
    if isinstance(node, expr.Fact):
        return node.name
    if isinstance(node, expr.Arith):
        return f"{_text(node.left)} {node.op} {_text(node.right)}"
    if isinstance(node, expr.Div):
        return f"{_text(node.left)} / {_text(node.right)}"
    if isinstance(node, expr.Compare):
        if node.op == "==" and isinstance(node.right, expr.Const) and node.right.value is True:
            return _text(node.left)  # a yes/no fact, as the author wrote it
        return f"{_text(node.left)} {node.op} {_text(node.right)}"
    if isinstance(node, expr.Not):
        return f"not {_text(node.item)}"
    return f" {node.op} ".join(_text(i) for i in node.items)


def _comparisons(node: expr.Node) -> Iterator[expr.Node]:
    if isinstance(node, expr.BoolOp):
        for item in node.items:
            yield from _comparisons(item)
    elif isinstance(node, expr.Not):
        yield from _comparisons(node.item)
    elif isinstance(node, expr.Compare):
        yield node
    # A constant (``when: true``) has no outcome to vary: not counted.


class Coverage:
    """Collects the outcomes of one ``bot4 rules test`` run."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.rules: dict[str, RuleCoverage] = {}
        for rule in compiled.rules:
            nodes = list(_comparisons(rule.when))
            self.rules[rule.name] = RuleCoverage(
                rule, conditions=[ConditionCoverage(_text(n)) for n in nodes], nodes=nodes
            )

    def add(self, explanation: Explanation) -> None:
        facts: Mapping[str, expr.Value] = explanation.facts
        for entry in explanation.trace:
            cover = self.rules.get(entry.rule)
            if cover is None:
                continue  # a rule of another policy (cannot happen in one run)
            cover.evaluated += 1
            cover.fired += entry.fired
            for node, condition in zip(cover.nodes, cover.conditions, strict=True):
                try:
                    value = expr.evaluate(node, facts)
                except (KeyError, TypeError, ValueError, ArithmeticError):
                    continue  # a fact this scenario did not compute: no outcome seen
                if value is True:
                    condition.seen_true = True
                else:
                    condition.seen_false = True

    # -- the report ---------------------------------------------------------

    @property
    def items(self) -> tuple[int, int]:
        """(covered, total) items: each rule's firing, each comparison's two outcomes."""
        covered = total = 0
        for cover in self.rules.values():
            total += 1 + 2 * len(cover.conditions)
            covered += cover.fired > 0
            covered += sum(c.seen_true + c.seen_false for c in cover.conditions)
        return covered, total

    @property
    def percent(self) -> float:
        covered, total = self.items
        return 100.0 * covered / total if total else 100.0

    def as_dict(self) -> dict[str, Any]:
        covered, total = self.items
        return {
            "percent": round(self.percent, 1),
            "covered": covered,
            "total": total,
            "rules": [
                {
                    "rule": c.rule.name,
                    "where": c.rule.where,
                    "evaluated": c.evaluated,
                    "fired": c.fired,
                    "conditions": [
                        {"condition": k.text, "seen_true": k.seen_true, "seen_false": k.seen_false}
                        for k in c.conditions
                    ],
                }
                for c in self.rules.values()
            ],
        }

    def lines(self) -> list[str]:
        rules = sorted(self.rules.values(), key=lambda c: (c.rule.path, c.rule.line))
        fired = sum(1 for c in rules if c.fired)
        outcomes = sum(k.seen_true + k.seen_false for c in rules for k in c.conditions)
        total_outcomes = 2 * sum(len(c.conditions) for c in rules)
        out = [
            f"coverage: {self.percent:.1f}% ({fired} of {len(rules)} rules fired, "
            f"{outcomes} of {total_outcomes} condition outcomes seen)"
        ]
        never = [c for c in rules if not c.fired]
        if never:
            out.append("  rules that never fired:")
            for c in never:
                why = "never evaluated" if not c.evaluated else f"evaluated {c.evaluated}x"
                out.append(f"    {c.rule.where} {c.rule.name} ({why})")
        partial = [
            (c, k) for c in rules for k in c.conditions if not (k.seen_true and k.seen_false)
        ]
        if partial:
            out.append("  conditions not seen both ways:")
            for c, k in partial:
                missing = _missing(k)
                out.append(f"    {c.rule.where} {c.rule.name}: {k.text} never {missing}")
        return out


def _missing(condition: ConditionCoverage) -> str:
    if not condition.seen_true and not condition.seen_false:
        return "evaluated"
    return "true" if not condition.seen_true else "false"


def check_minimum(coverage: Coverage, minimum: float | None) -> str | None:
    """The failure line when coverage is under ``minimum`` percent."""
    if minimum is None or coverage.percent + 1e-9 >= minimum:
        return None
    return f"coverage {coverage.percent:.1f}% is below the minimum {minimum:g}%"


__all__: Sequence[str] = ("Coverage", "check_minimum")
