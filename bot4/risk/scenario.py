"""Scenario files: inputs plus the expected outcome, for ``bot4 rules test``
(and the same format, without ``expected``, for ``bot4 rules eval``).

A scenario file holds one scenario or a list under ``scenarios:``::

    scenarios:
      - name: a 3% position is rejected
        event: order                 # order (default) | tick | fill
        facts:
          portfolio: {equity: 100000}        # cash, peak_equity, positions
          order: {symbol: BTC-USDT, side: buy, qty: 0.06, price: 50000, stop_loss: 49000}
          market: {last: 50000}              # bid/ask default to last
          breaker: {tripped: false}
          correlation.max: 0.3               # any dotted name sets that fact directly
          now: 0                             # event time, seconds
        history:                     # optional, replayed first (event time, seconds)
          - {at: 0, stop_out: {symbol: BTC-USDT, side: sell, qty: 0.01, price: 49000}}
          - {at: 1, order: {symbol: BTC-USDT}}          # one approved order counted
        expected:
          decision: reject           # approve | reject (orders)
          rule: max-position-size
          suggested_size: 0.04
          reason_contains: "3,000"
          rejecting: [max-position-size]   # orders: every reject rule whose condition held
          actions: [emergency_close] # ticks and fills: the action kinds, in order
          values: {liquidation.price: 45250}   # facts, compared to 1e-9 relative

``portfolio.positions`` is a list of ``{symbol, qty (signed), entry_price,
leverage, mark}``. Numbers are read as written (YAML/JSON numbers become
Decimal through their text, so 0.1 is 0.1).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from bot4.errors import ModelError, RuleFileError
from bot4.model import Activity, Approved, Fill, MarketData, Order, Portfolio, Position, Rejected
from bot4.risk.expr import FACT_NAME
from bot4.risk.fact_names import FILL, ORDER, STAGES, TICK
from bot4.risk.policy import Explanation, RiskPolicy
from bot4.risk.yamlsrc import YList, YMap, load_yaml
from bot4.suggest import did_you_mean

_DAY_NS = 86_400 * 10**9
_SCENARIO_KEYS = {"name", "event", "facts", "history", "expected", "description"}
_FACT_SECTIONS = {"portfolio", "order", "market", "breaker", "now", "fill", "stop_out"}
_EXPECTED_KEYS = {
    "decision",
    "rule",
    "suggested_size",
    "reason_contains",
    "rejecting",
    "actions",
    "values",
}
_TS = datetime(2024, 1, 1, tzinfo=UTC)
SEC = 1_000_000_000


@attrs.frozen(slots=True)
class Scenario:
    name: str
    path: str
    line: int
    event: str
    facts: YMap
    history: YList | None
    expected: YMap | None


def _err(path: str, line: int, message: str) -> RuleFileError:
    return RuleFileError(path, line, message)


def load_scenarios(path: Path, text: str | None = None) -> list[Scenario]:
    """Scenarios of one file (YAML; JSON is accepted as the YAML subset it is)."""
    data, _ = load_yaml(path, text)
    name = str(path)
    if isinstance(data, YMap) and "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, YList) or not items:
            raise _err(name, data.lines["scenarios"], "'scenarios' must be a non-empty list")
        return [_scenario(item, name, items.lines[i]) for i, item in enumerate(items)]
    if isinstance(data, YMap):
        return [_scenario(data, name, data.line)]
    raise _err(name, 1, "a scenario file is a scenario mapping or has a 'scenarios' list")


def _scenario(item: object, path: str, line: int) -> Scenario:
    if not isinstance(item, YMap):
        raise _err(path, line, "a scenario must be a mapping")
    if "facts" not in item and not (set(item) - _SCENARIO_KEYS):
        raise _err(path, line, "a scenario needs 'facts'")
    if "facts" not in item:
        item = _wrap(item)  # a bare facts mapping (eval on stdin)
    for key in item:
        if key not in _SCENARIO_KEYS:
            hint = did_you_mean(str(key), _SCENARIO_KEYS)
            raise _err(path, item.lines[key], f"unknown key {key!r} in a scenario{hint}")
    event = item.get("event", ORDER)
    if event not in STAGES:
        raise _err(path, item.lines.get("event", line), f"event must be one of {', '.join(STAGES)}")
    facts = item["facts"]
    if not isinstance(facts, YMap):
        raise _err(path, item.lines["facts"], "facts must be a mapping")
    history = item.get("history")
    if history is not None and not isinstance(history, YList):
        raise _err(path, item.lines["history"], "history must be a list")
    expected = item.get("expected")
    if expected is not None:
        if not isinstance(expected, YMap):
            raise _err(path, item.lines["expected"], "expected must be a mapping")
        for key in expected:
            if key not in _EXPECTED_KEYS:
                hint = did_you_mean(str(key), _EXPECTED_KEYS)
                raise _err(path, expected.lines[key], f"unknown key {key!r} in expected{hint}")
    name = item.get("name", f"{Path(path).name}:{line}")
    return Scenario(str(name), path, line, str(event), facts, history, expected)


def _wrap(item: YMap) -> YMap:
    wrapped = YMap()
    wrapped.line = item.line
    wrapped.lines = {"facts": item.line}
    wrapped["facts"] = item
    return wrapped


# --- building bot4 objects ------------------------------------------------------------


def _num(value: object, path: str, line: int, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise _err(path, line, f"{what} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _err(path, line, f"{what} must be finite")
    try:
        return Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        raise _err(path, line, f"{what} must be a number") from None


def _section(facts: YMap, key: str, path: str) -> YMap | None:
    value = facts.get(key)
    if value is None:
        return None
    if not isinstance(value, YMap):
        raise _err(path, facts.lines[key], f"{key} must be a mapping")
    return value


def _portfolio(facts: YMap, path: str, now_ns: int = 0) -> Portfolio:
    section = _section(facts, "portfolio", path)
    if section is None:
        return Portfolio(cash=Decimal(100000), peak_equity=Decimal(100000))
    portfolio_keys = (
        "equity",
        "cash",
        "peak_equity",
        "positions",
        "realized_pnl_today",
        "losing_streak",
    )
    for key in section:
        if key not in portfolio_keys:
            hint = did_you_mean(str(key), portfolio_keys)
            raise _err(path, section.lines[key], f"unknown key {key!r} in portfolio{hint}")
    line = section.line
    cash = _num(section.get("cash", section.get("equity", 100000)), path, line, "portfolio cash")
    positions: dict[str, Position] = {}
    marks: dict[str, Decimal] = {}
    opened: dict[str, int] = {}
    items = section.get("positions") or []
    if not isinstance(items, list):
        raise _err(path, section.lines["positions"], "positions must be a list")
    for i, item in enumerate(items):
        pline = items.lines[i] if isinstance(items, YList) else line
        if not isinstance(item, YMap):
            raise _err(path, pline, "a position must be a mapping")
        try:
            pos = Position(
                symbol=str(item.get("symbol", "")),
                qty=_num(item.get("qty"), path, pline, "position qty"),
                entry_price=_num(item.get("entry_price"), path, pline, "entry_price"),
                leverage=_num(item.get("leverage", 1), path, pline, "leverage"),
            )
        except ModelError as exc:
            raise _err(path, pline, str(exc)) from None
        positions[pos.symbol] = pos
        if "mark" in item:
            marks[pos.symbol] = _num(item["mark"], path, pline, "mark")
        if "opened" in item:  # seconds of event time, as `now`
            opened[pos.symbol] = _seconds(item["opened"], path, pline)
    provisional = Portfolio(cash=cash, positions=positions, marks=marks)
    if "equity" in section and "cash" not in section and positions:
        # Equity was given: cash is what makes cash + unrealised PnL equal it.
        cash = cash - provisional.unrealized_pnl
        provisional = Portfolio(cash=cash, positions=positions, marks=marks)
    peak = section.get("peak_equity")
    peak_value = (
        _num(peak, path, line, "peak_equity")
        if peak is not None
        else max(provisional.equity, Decimal(0))
    )
    streak = section.get("losing_streak", 0)
    if isinstance(streak, bool) or not isinstance(streak, int) or streak < 0:
        raise _err(path, section.lines.get("losing_streak", line), "losing_streak: a count >= 0")
    activity = Activity(
        day=now_ns // _DAY_NS,
        realized_today=_num(section.get("realized_pnl_today", 0), path, line, "realized_pnl_today"),
        losing_streak=streak,
        opened_ns=opened,
    )
    try:
        return Portfolio(
            cash=cash, positions=positions, marks=marks, peak_equity=peak_value, activity=activity
        )
    except ModelError as exc:
        raise _err(path, line, str(exc)) from None


def _order(section: YMap, path: str, cid: str = "scenario") -> Order:
    allowed = {
        "symbol",
        "side",
        "qty",
        "price",
        "stop_loss",
        "take_profit",
        "leverage",
        "reduce_only",
        "type",
    }
    for key in section:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise _err(path, section.lines[key], f"unknown key {key!r} in order{hint}")
    line = section.line
    price = section.get("price")
    try:
        return Order(
            client_order_id=cid,
            symbol=section.get("symbol", "BTC-USDT"),
            side=section.get("side", "buy"),
            type=section.get("type", "limit" if price is not None else "market"),
            qty=_num(section.get("qty", 1), path, line, "qty"),
            price=None if price is None else _num(price, path, line, "price"),
            stop_loss=None
            if section.get("stop_loss") is None
            else _num(section["stop_loss"], path, line, "stop_loss"),
            take_profit=None
            if section.get("take_profit") is None
            else _num(section["take_profit"], path, line, "take_profit"),
            leverage=_num(section.get("leverage", 1), path, line, "leverage"),
            reduce_only=bool(section.get("reduce_only", False)),
        )
    except ModelError as exc:
        raise _err(path, line, str(exc)) from None


def _market(section: YMap | None, symbol: str, path: str) -> MarketData | None:
    if section is None:
        return None
    for key in section:
        if key not in ("symbol", "bid", "ask", "last"):
            hint = did_you_mean(str(key), ("symbol", "bid", "ask", "last"))
            raise _err(path, section.lines[key], f"unknown key {key!r} in market{hint}")
    line = section.line
    last = section.get("last", section.get("bid"))
    if last is None:
        raise _err(path, line, "market needs last (or bid and ask)")
    last_d = _num(last, path, line, "last")
    try:
        return MarketData(
            symbol=section.get("symbol", symbol),
            exchange="scenario",
            bid=_num(section.get("bid", last), path, line, "bid"),
            ask=_num(section.get("ask", last), path, line, "ask"),
            last=last_d,
            volume=Decimal(0),
            timestamp=_TS,
        )
    except ModelError as exc:
        raise _err(path, line, str(exc)) from None


def _fill(section: YMap, path: str, fid: str = "scenario") -> Fill:
    line = section.line
    for key in section:
        if key not in ("symbol", "side", "qty", "price", "fee"):
            hint = did_you_mean(str(key), ("symbol", "side", "qty", "price", "fee"))
            raise _err(path, section.lines[key], f"unknown key {key!r} in fill{hint}")
    try:
        return Fill(
            fill_id=fid,
            client_order_id=fid,
            symbol=section.get("symbol", "BTC-USDT"),
            side=section.get("side", "sell"),
            qty=_num(section.get("qty", 1), path, line, "qty"),
            price=_num(section.get("price", 1), path, line, "price"),
            fee=_num(section.get("fee", 0), path, line, "fee"),
            timestamp=_TS,
        )
    except ModelError as exc:
        raise _err(path, line, str(exc)) from None


def _seconds(value: object, path: str, line: int) -> int:
    return int(_num(value, path, line, "time") * SEC)


def run_scenario(policy: RiskPolicy, scenario: Scenario) -> Explanation:
    """Evaluate one scenario on a fresh copy of ``policy`` (own breaker and
    counters). Raises RuleFileError for a malformed scenario and RiskError
    when the policy cannot decide."""
    path, facts = scenario.path, scenario.facts
    for key in facts:
        if key not in _FACT_SECTIONS and not FACT_NAME.match(key):
            hint = did_you_mean(str(key), _FACT_SECTIONS)
            raise _err(path, facts.lines[key], f"unknown fact section {key!r}{hint}")
    fresh = policy.spawn()
    try:
        now = _seconds(facts.get("now", 0), path, facts.lines.get("now", scenario.line))
        portfolio = _portfolio(facts, path, now)
        breaker = _section(facts, "breaker", path)
        if breaker is not None and breaker.get("tripped"):
            fresh.breaker.trip(str(breaker.get("reason", "tripped in the scenario")), 0)
        for i, step in enumerate(scenario.history or []):
            sline = scenario.history.lines[i] if scenario.history is not None else scenario.line
            if not isinstance(step, YMap) or "at" not in step:
                raise _err(
                    path,
                    sline,
                    "a history step is {at: seconds, order: {...}} or {at, stop_out: {...}}",
                )
            at = _seconds(step["at"], path, sline)
            if isinstance(step.get("order"), YMap):
                fresh.record_order(_order(step["order"], path, f"h{i}").symbol, at)
            elif isinstance(step.get("stop_out"), YMap):
                fresh.on_fill(_fill(step["stop_out"], path, f"h{i}"), portfolio, at, stop_out=True)
            else:
                raise _err(path, sline, "a history step needs an order or a stop_out mapping")
        now = _seconds(facts.get("now", 0), path, facts.lines.get("now", scenario.line))
        overrides = {k: _override(v, path, facts.lines[k], k) for k, v in facts.items() if "." in k}
        known = set(fresh.compiled.pack_facts) | _builtin_names()
        for name in overrides:
            if name not in known:
                hint = did_you_mean(name, known)
                raise _err(path, facts.lines[name], f"{name} is not a fact of this policy{hint}")
        if scenario.event == ORDER:
            section = _section(facts, "order", path)
            if section is None:
                raise _err(path, scenario.line, "an order scenario needs facts.order")
            order = _order(section, path)
            market = _market(_section(facts, "market", path), order.symbol, path)
            return fresh.explain(
                ORDER,
                portfolio=portfolio,
                now_ns=now,
                order=order,
                market=market,
                overrides=overrides,
            )
        if scenario.event == TICK:
            symbol = next(iter(portfolio.positions), "BTC-USDT")
            market = _market(_section(facts, "market", path), symbol, path)
            if market is None:
                raise _err(path, scenario.line, "a tick scenario needs facts.market")
            return fresh.explain(
                TICK, portfolio=portfolio, now_ns=now, market=market, overrides=overrides
            )
        section = _section(facts, "fill", path)
        if section is None:
            raise _err(path, scenario.line, "a fill scenario needs facts.fill")
        return fresh.explain(
            FILL,
            portfolio=portfolio,
            now_ns=now,
            fill=_fill(section, path),
            stop_out=bool(facts.get("stop_out", False)),
            overrides=overrides,
        )
    finally:
        fresh.close()


def _builtin_names() -> set[str]:
    from bot4.risk.fact_names import BUILTIN_FACTS

    return set(BUILTIN_FACTS)


def _override(value: object, path: str, line: int, name: str) -> object:
    if isinstance(value, bool | str):
        return value
    return _num(value, path, line, name)


# --- checking the outcome --------------------------------------------------------------


def check_expected(scenario: Scenario, result: Explanation) -> list[str]:
    """Mismatches between ``expected`` and the outcome (empty when it passes)."""
    expected = scenario.expected
    if expected is None:
        return ["the scenario has no 'expected' section"]
    problems: list[str] = []
    decision = result.decision
    if "decision" in expected:
        want = expected["decision"]
        got = (
            "approve"
            if isinstance(decision, Approved)
            else "reject"
            if isinstance(decision, Rejected)
            else "none"
        )
        if want != got:
            problems.append(f"decision: expected {want}, got {got}")
    if "rule" in expected:
        got_rule = decision.rule if isinstance(decision, Rejected) else result.decided_by
        if expected["rule"] != got_rule:
            problems.append(f"rule: expected {expected['rule']}, got {got_rule}")
    if "suggested_size" in expected:
        want_size = _num(
            expected["suggested_size"],
            scenario.path,
            expected.lines["suggested_size"],
            "suggested_size",
        )
        got_size = decision.suggested_size if isinstance(decision, Rejected) else None
        if got_size != want_size:
            problems.append(f"suggested_size: expected {want_size}, got {got_size}")
    if "reason_contains" in expected:
        text = str(expected["reason_contains"])
        reason = (
            decision.reason
            if isinstance(decision, Rejected)
            else " ".join(a.reason for a in result.actions)
        )
        if text not in reason:
            problems.append(f"reason: expected to contain {text!r}, got {reason!r}")
    if "rejecting" in expected:
        # Every reject rule whose condition held, in priority order: the trace
        # shows them all, not only the one that decided.
        want_rules = expected["rejecting"] or []
        if not isinstance(want_rules, list) or not all(isinstance(r, str) for r in want_rules):
            raise _err(
                scenario.path, expected.lines["rejecting"], "rejecting must be a list of rule names"
            )
        got_rules = [t.rule for t in result.trace if t.fired and t.outcome == "reject"]
        if list(want_rules) != got_rules:
            problems.append(f"rejecting: expected {list(want_rules)}, got {got_rules}")
    if "actions" in expected:
        want_actions = expected["actions"] or []
        got_actions = [a.kind.value for a in result.actions]
        if list(want_actions) != got_actions:
            problems.append(f"actions: expected {list(want_actions)}, got {got_actions}")
    if "values" in expected:
        values = expected["values"]
        if not isinstance(values, YMap):
            raise _err(scenario.path, expected.lines["values"], "expected values must be a mapping")
        for name, want_value in values.items():
            got_value = result.facts.get(name)
            if got_value is None:
                problems.append(f"{name}: no such fact in the outcome")
            elif isinstance(want_value, (int, float)) and not isinstance(want_value, bool):
                if not isinstance(got_value, float) or not math.isclose(
                    got_value, float(want_value), rel_tol=1e-9
                ):
                    problems.append(f"{name}: expected {want_value}, got {got_value}")
            elif got_value != want_value:
                problems.append(f"{name}: expected {want_value!r}, got {got_value!r}")
    return problems


def scenario_files(rules_path: Path) -> list[Path]:
    """Scenario files that sit beside rule files: ``<dir>/tests/*.yaml``."""
    base = rules_path if rules_path.is_dir() else rules_path.parent
    tests = base / "tests"
    return sorted(p for p in tests.glob("*.yaml") if p.is_file()) if tests.is_dir() else []


def outcome_dict(scenario: Scenario | None, result: Explanation) -> dict[str, Any]:
    """A JSON-ready summary of one evaluation (``rules eval --json``)."""
    decision = result.decision
    out: dict[str, Any] = {"stage": result.stage}
    if scenario is not None:
        out["scenario"] = scenario.name
    if isinstance(decision, Approved):
        out["decision"] = "approve"
    elif isinstance(decision, Rejected):
        out["decision"] = "reject"
        out["reason"] = decision.reason
        out["suggested_size"] = str(decision.suggested_size)
    out["decided_by"] = decision.rule if isinstance(decision, Rejected) else result.decided_by
    out["actions"] = [
        {
            "kind": a.kind.value,
            "symbol": a.symbol,
            "rule": a.rule,
            "reason": a.reason,
            "fraction": str(a.fraction),
        }
        for a in result.actions
    ]
    out["trace"] = [
        {
            "rule": t.rule,
            "where": t.where,
            "outcome": t.outcome,
            "fired": t.fired,
            "decided": t.decided,
            "when": t.condition,
            "values": dict(t.values),
        }
        for t in result.trace
    ]
    out["facts"] = dict(result.facts)
    return out
