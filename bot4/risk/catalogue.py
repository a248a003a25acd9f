"""The fact catalogue: every fact a rule file can name (``bot4 rules facts``).

A policy author's first question is "what can I write?". The answer has three
sources, and the catalogue lists all of them with one row per fact:

* **bot4's own facts** (:data:`bot4.risk.fact_names.BUILTIN_FACTS`): name, type,
  the stages it exists in, its unit (:data:`UNITS`) and what it means;
* **windows** the policy's own files declare (``windows:`` in a rule file;
  each becomes ``window.<name>``, a count over event time);
* **risk-rule packs** in use: each fact a pack declares (``fact_names()``),
  with the type and description it declares (``fact_types()``,
  ``fact_docs()``; undeclared: a number, no description).

The README's fact reference is this catalogue as Markdown (``bot4 rules facts
--markdown``), and a test keeps the two the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from bot4.contracts import RiskRules
from bot4.risk.expr import NUMBER
from bot4.risk.fact_names import BUILTIN_FACTS, STAGES
from bot4.risk.windows import WindowSpec

# Units of bot4's facts ("" for yes/no and text facts). A fact added to
# BUILTIN_FACTS without a unit here fails tests/test_rules_facts.py.
QUOTE = "quote currency"
PRICE = "quote per base unit"
BASE = "base units"
RATIO = "ratio (0.05 = 5%)"
UNITS: Mapping[str, str] = {
    "order.symbol": "",
    "order.exchange": "",
    "order.type": "",
    "order.qty": BASE,
    "order.price": PRICE,
    "order.notional": QUOTE,
    "order.side": "",
    "order.leverage": "x",
    "order.has_stop_loss": "",
    "order.stop_loss": PRICE,
    "order.reduce_only": "",
    "order.reducing": "",
    "portfolio.cash": QUOTE,
    "portfolio.equity": QUOTE,
    "portfolio.peak_equity": QUOTE,
    "portfolio.drawdown": RATIO,
    "portfolio.gross_exposure": QUOTE,
    "portfolio.free_margin": QUOTE,
    "portfolio.gross_after": QUOTE,
    "portfolio.leverage_after": "x",
    "portfolio.open_positions": "count",
    "portfolio.realized_pnl_today": QUOTE,
    "portfolio.daily_loss": QUOTE,
    "portfolio.losing_streak": "count",
    "position.age_seconds": "seconds",
    "time.hour": "hour",
    "time.minute": "minute",
    "time.weekday": "0 = Monday",
    "position.qty": BASE,
    "position.qty_along": BASE,
    "position.notional": QUOTE,
    "position.notional_after": QUOTE,
    "position.entry_price": PRICE,
    "position.leverage": "x",
    "position.margin": QUOTE,
    "position.margin_ratio": RATIO,
    "position.funding_paid": QUOTE,
    "market.available": "",
    "market.bid": PRICE,
    "market.ask": PRICE,
    "market.last": PRICE,
    "market.mid": PRICE,
    "market.mark": PRICE,
    "breaker.tripped": "",
    "liquidation.price": PRICE,
    "liquidation.distance": RATIO,
    "fill.qty": BASE,
    "fill.price": PRICE,
    "fill.notional": QUOTE,
    "fill.side": "",
    "fill.stop_out": "",
}
_KINDS = {"number", "bool", "string"}


@attrs.frozen
class FactEntry:
    name: str
    type: str  # number | bool | string
    stages: tuple[str, ...]
    unit: str
    description: str
    source: str  # "bot4", "window (file:line)", or "pack <name>"

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _stages(stages: frozenset[str]) -> tuple[str, ...]:
    return tuple(s for s in STAGES if s in stages)


def builtin_entries() -> list[FactEntry]:
    return [
        FactEntry(
            spec.name, spec.kind, _stages(spec.stages), UNITS.get(spec.name, ""), spec.doc, "bot4"
        )
        for spec in BUILTIN_FACTS.values()
    ]


def window_entries(windows: Mapping[str, WindowSpec]) -> list[FactEntry]:
    out = []
    for name, spec in sorted(windows.items()):
        scope = "in the symbol" if spec.per_symbol else "in all symbols"
        out.append(
            FactEntry(
                f"window.{name}",
                NUMBER,
                tuple(STAGES),
                "count",
                f"{spec.count} {scope} within the last {spec.seconds:g} s of event time",
                f"window ({spec.path}:{spec.line})",
            )
        )
    return out


def _declared(pack: RiskRules, method: str) -> Mapping[str, Any]:
    get = getattr(pack, method, None)
    if get is None:
        return {}
    try:
        value = get()
    except Exception:  # a broken pack's listing must not hide the others
        return {}
    return value if isinstance(value, Mapping) else {}


def pack_entries(packs: Sequence[RiskRules]) -> list[FactEntry]:
    out = []
    for pack in packs:
        try:
            names = sorted(pack.fact_names())
        except Exception:  # listed without facts; `rules check` reports the error
            continue
        types, docs = _declared(pack, "fact_types"), _declared(pack, "fact_docs")
        for name in names:
            kind = types.get(name, NUMBER)
            out.append(
                FactEntry(
                    name,
                    kind if kind in _KINDS else NUMBER,
                    ("order",),
                    "",
                    str(docs.get(name, "")),
                    f"pack {pack.name}",
                )
            )
    return out


def catalogue(
    windows: Mapping[str, WindowSpec] | None = None, packs: Sequence[RiskRules] = ()
) -> list[FactEntry]:
    return [*builtin_entries(), *window_entries(windows or {}), *pack_entries(packs)]


def as_table(entries: Sequence[FactEntry]) -> str:
    rows = [("fact", "type", "stages", "unit", "source", "description")]
    rows += [(e.name, e.type, ",".join(e.stages), e.unit, e.source, e.description) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(5)]
        lines.append("  ".join([*cells, row[5]]).rstrip())
    return "\n".join(lines) + "\n"


def as_markdown(entries: Sequence[FactEntry]) -> str:
    lines = [
        "| fact | type | stages | unit | source | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        meaning = e.description.replace("|", "\\|")
        stages = ", ".join(e.stages)
        lines.append(f"| `{e.name}` | {e.type} | {stages} | {e.unit} | {e.source} | {meaning} |")
    return "\n".join(lines) + "\n"
