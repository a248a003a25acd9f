"""What compiling rule files produces: the policy the engine and the
Python around it run.

* :class:`Rule`: one rule as written (where, when it fires, its outcome), with
  its condition compiled for an exact Decimal reading
  (:mod:`bot4.risk.exact`);
* :class:`StagePlan`: what the engine holds for one stage (``order``,
  ``tick``, ``fill``): the stage's rules ranked, the message layout and its
  generated encoder (:mod:`bot4.risk.message`), the facts it reads, and the
  quiet ranges a price band is worked out from (:mod:`bot4.risk.band`);
* :class:`CompiledPolicy`: every file's rules, the stage plans, the windows
  and the settings.

They are built by :class:`bot4.risk.compiler.Compiler`, which re-exports
them, and read by :class:`bot4.risk.policy.RiskPolicy` and the policy
tools (coverage, diff). This module imports no compiler code.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import attrs

from bot4.model import RiskActionKind
from bot4.risk import expr
from bot4.risk.exact import ExactCondition, First
from bot4.risk.expr import Node, Value
from bot4.risk.fact_names import CONTEXT_FACTS, MARGIN_FACTS
from bot4.risk.message import Encoder, compile_encoder
from bot4.risk.windows import WindowSpec

__all__ = ["CompiledPolicy", "Rule", "StagePlan"]


@attrs.frozen(slots=True)
class Rule:
    name: str
    description: str
    path: str
    line: int
    stages: frozenset[str]
    rank: tuple[int, int, int]
    when: Node
    when_source: str
    outcome: str  # "approve" | "reject" | "action"
    reason: str
    suggested: Node | None
    action: RiskActionKind | None
    fraction: Decimal
    params: Mapping[str, Value]
    facts: tuple[str, ...]  # named by the condition, the reason and the suggestion
    # The condition evaluated exactly in Decimal, which confirms every
    # decision and action: see bot4.risk.exact.
    exact: ExactCondition | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@attrs.frozen(slots=True)
class StagePlan:
    """What the engine holds for one stage: its rules, ranked, and the short
    field key of every fact those conditions read."""

    stage: str
    rules: tuple[Rule, ...]
    keys: Mapping[str, str]  # fact name -> message field
    by_key: Mapping[str, Rule]  # ruleset rule name -> rule
    definition: Mapping[str, Any]  # the durable-rules ruleset
    fields: tuple[tuple[str, str], ...]  # (fact name, its JSON key text), message order
    reads: frozenset[str]  # every fact a rule here reads (conditions, reasons, sizes)
    windows: tuple[str, ...]  # window facts among them
    rule_names: tuple[str, ...]
    # When every rule of the stage is ``fact op constant`` (the liquidation
    # ladder, drawdown, stop-outs): per fact, the values for which no rule
    # fires, so the policy can skip the engine when nothing fires. None when
    # any rule is more than that.
    quiet: tuple[expr.QuietRange, ...] | None = None
    # Orders: the rules' conditions evaluated exactly in Decimal, as one
    # function giving the index of the first that holds (bot4.risk.exact).
    exact_first: First | None = attrs.field(default=None, eq=False, repr=False)
    # The declared type of each field's fact ("number", "bool", "string"), in
    # ``fields`` order; empty: not known (the encoder then has no fast path).
    kinds: tuple[str, ...] = ()
    # The engine message with a %s per field value, in ``fields`` order
    # (keys are f0, f1, ...: no other % in it), and the fields' fact names.
    layout: str = attrs.field(init=False, eq=False, repr=False)
    field_names: tuple[str, ...] = attrs.field(init=False, eq=False, repr=False)
    # The message body of a facts mapping, generated for these fields
    # (bot4.risk.message: the same text and errors as field by field).
    encode: Encoder = attrs.field(init=False, eq=False, repr=False)
    # Of ``reads``: the facts built only when read (asked on every decision).
    context_reads: frozenset[str] = attrs.field(init=False, eq=False, repr=False)
    margin_reads: frozenset[str] = attrs.field(init=False, eq=False, repr=False)

    @layout.default
    def _layout(self) -> str:
        return '{"_z":0.0' + "".join(prefix + "%s" for _, prefix in self.fields)

    @field_names.default
    def _field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    @encode.default
    def _encode(self) -> Encoder:
        kinds = self.kinds if len(self.kinds) == len(self.fields) else ("",) * len(self.fields)
        return compile_encoder(self.fields, kinds, self.layout)

    @context_reads.default
    def _context_reads(self) -> frozenset[str]:
        return self.reads & CONTEXT_FACTS

    @margin_reads.default
    def _margin_reads(self) -> frozenset[str]:
        return self.reads & MARGIN_FACTS


@attrs.frozen(slots=True)
class CompiledPolicy:
    files: tuple[str, ...]
    rules: tuple[Rule, ...]
    stages: Mapping[str, StagePlan]
    windows: Mapping[str, WindowSpec]
    mmr: Decimal | None
    pack_facts: Mapping[str, str]  # fact -> pack name
    # fact -> "number" | "bool" | "string", as the pack declares (default number)
    pack_types: Mapping[str, str] = attrs.field(factory=dict)

    # Whether a window counts approved orders (asked on every approval).
    counts_orders: bool = attrs.field(init=False)

    @counts_orders.default
    def _counts_orders(self) -> bool:
        return any(spec.count == "orders" for spec in self.windows.values())

    def facts_used(self, stage: str) -> frozenset[str]:
        return frozenset(self.stages[stage].keys)
