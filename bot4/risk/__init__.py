"""bot4's risk policy: rule files compiled for durable-rules, a pre-trade gate
that fails closed, and position monitoring.

Modules, one job each, from the rule files up to what the kernel calls
(each imports, at import time, only modules listed above it):

* :mod:`bot4.risk.sources`  — finding and reading rule files (never skipping one)
* :mod:`bot4.risk.yamlsrc`  — YAML with line numbers (every error says file:line)
* :mod:`bot4.risk.expr_tree` — the condition language's tree, bounds and kinds, evaluated in Python
* :mod:`bot4.risk.expr_durable` — its vetted translation to durable-rules
* :mod:`bot4.risk.expr_quiet` — guards and the quiet ranges where none holds
* :mod:`bot4.risk.expr`     — the condition language: parsing, and the one import for it
* :mod:`bot4.risk.fact_names` — the facts rules can name: kind, stages, meaning
* :mod:`bot4.risk.windows`  — event-time counters for temporal rules
* :mod:`bot4.risk.engine`   — a guarded, thread-free handle on durable-rules
* :mod:`bot4.risk.facts`    — the facts built from bot4's types, converted for the engine
* :mod:`bot4.risk.reasons`  — reason templates, bounded at compile time and when rendered
* :mod:`bot4.risk.exact`    — conditions evaluated exactly in Decimal (confirming every decision)
* :mod:`bot4.risk.message`  — the engine message of an evaluation, generated per stage
* :mod:`bot4.risk.compiled` — what a compile produces: rules, stage plans, the policy
* :mod:`bot4.risk.compiler` — rule files -> compiled policy (the file format)
* :mod:`bot4.risk.firing`   — which rules of a stage fire, confirmed exactly
* :mod:`bot4.risk.band`     — held-position price bands: where no tick rule can fire
* :mod:`bot4.risk.breaker`  — the circuit breaker
* :mod:`bot4.risk.held_bands` — the bands a policy keeps, and when to make another
* :mod:`bot4.risk.packs`    — finding installed risk-rule packs
* :mod:`bot4.risk.pack_facts` — packs' declared facts, asked for per order
* :mod:`bot4.risk.verdicts` — the Approved and Rejected the gate hands back
* :mod:`bot4.risk.explanation` — an evaluation's outcome and trace (``bot4 rules eval``)
* :mod:`bot4.risk.build`    — a policy built from its files and packs, under the compile guard
* :mod:`bot4.risk.reload`   — hot reload: the rule files polled, the outcome
* :mod:`bot4.risk.policy`   — :class:`RiskPolicy`, what the kernel calls
* :mod:`bot4.risk.shadow`   — a candidate policy evaluated beside the live one
* :mod:`bot4.risk.scenario` — scenario files for ``bot4 rules eval/test``
* :mod:`bot4.risk.coverage` — ``bot4 rules test --coverage``
* :mod:`bot4.risk.fmt`      — ``bot4 rules fmt``
* :mod:`bot4.risk.catalogue` — ``bot4 rules facts``
"""

from __future__ import annotations

import os
from pathlib import Path

import bot4
from bot4.risk.breaker import Breaker
from bot4.risk.policy import (
    FAIL_CLOSED,
    Explanation,
    ReloadOutcome,
    RiskPolicy,
    TraceEntry,
)


def default_rules_path() -> Path:
    """Where the default policy lives when no path is given: ``$BOT4_RULES``,
    else ``./rules`` if it exists, else the copy installed with the wheel
    (``bot4/default_rules``), else the source checkout's ``rules/``."""
    env = os.environ.get("BOT4_RULES")
    if env:
        return Path(env)
    local = Path("rules")
    if local.is_dir():
        return local
    package = Path(bot4.__file__).parent
    wheel_copy = package / "default_rules"
    if wheel_copy.is_dir():
        return wheel_copy
    return package.parent / "rules"


__all__ = [
    "FAIL_CLOSED",
    "Breaker",
    "Explanation",
    "ReloadOutcome",
    "RiskPolicy",
    "TraceEntry",
    "default_rules_path",
]
