# ruff: noqa: E501  # the table of bad rule files reads best one file per line
"""Rule files that must be refused, each with file:line and what is wrong;
and the translation to the vetted durable-rules subset."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bot4.errors import RuleFileError
from bot4.risk import RiskPolicy, expr
from bot4.risk.compiler import Compiler, read_file
from bot4.risk.engine import EngineRuleset, number
from bot4.risk.facts import BUILTIN_FACTS
from tests.riskkit import RULES, FixedCorrelation

GOOD_RULE = """\
rules:
  - name: r
    description: d
    when: order.qty > 1
    reject: {reason: big}
"""


def _compile(tmp_path: Path, text: str, packs: dict[str, str] | None = None) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(text))
    raw, _ = read_file(path)
    Compiler(packs or {}).compile([raw])


BAD = [
    ("rules: [\n", 2, "YAML syntax"),
    ("- just\n- a list\n", 1, "a rule file is a mapping"),
    ("rulez: []\n", 1, "unknown key 'rulez'"),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1\n    reject: {reason: x}\n    reject: {reason: y}\n",
        6,
        "duplicate key 'reject'",
    ),
    (
        "rules:\n  - name: Bad Name\n    description: d\n    when: true\n    approve: true\n",
        2,
        "needs a name",
    ),
    ("rules:\n  - name: r\n    when: true\n    approve: true\n", 2, "needs a description"),
    ("rules:\n  - name: r\n    description: d\n    approve: true\n", 2, "needs a 'when'"),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1\n",
        2,
        "exactly one outcome",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qtty > 1\n    approve: true\n",
        4,
        "unknown fact 'order.qtty'",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > limit\n    approve: true\n",
        4,
        "unknown parameter 'limit'",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty / portfolio.equity > 0.02\n    approve: true\n",
        4,
        "division by a fact",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty / 0 > 1\n    approve: true\n",
        4,
        "division by zero",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty ** 2 > 1\n    approve: true\n",
        4,
        "unsupported arithmetic",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1 if true else 2\n    approve: true\n",
        4,
        "unsupported syntax",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty\n    approve: true\n",
        4,
        "must be true/false",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.side > 1\n    approve: true\n",
        4,
        "cannot compare a string",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1e400\n    approve: true\n",
        4,
        "finite",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1e16\n    approve: true\n",
        4,
        "larger than",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty >\n    approve: true\n",
        4,
        "syntax error",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: __import__('os').system('x') > 1\n    approve: true\n",
        4,
        "unsupported syntax",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1\n    reject: {reason: 'see {nope}'}\n",
        5,
        "neither a fact nor a parameter",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1\n    reject: {reason: '{order.qty:d}'}\n",
        5,
        "reason format",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1\n    reject: {reason: 'open {'}\n",
        5,
        "unmatched",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    on: tick\n    when: order.qty > 1\n    action: {kind: add_margin, reason: x}\n",
        5,
        "not available on tick",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    on: tick\n    when: true\n    reject: {reason: x}\n",
        6,
        "orders only",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    on: tick\n    when: true\n    action: {kind: explode, reason: x}\n",
        6,
        "action kind must be one of",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    on: sometimes\n    when: true\n    approve: true\n",
        4,
        "'on' names",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: liquidation.distance < 0.05\n    approve: true\n",
        2,
        "maintenance_margin_rate",
    ),
    ("settings: {maintenance_margin_rate: 2}\nrules: []\n", 1, "in [0, 1)"),
    ("windows:\n  w: {count: trades, seconds: 60}\nrules: []\n", 2, "count must be one of"),
    ("params: {max: .nan}\nrules: []\n", 1, "finite"),
    (
        "rules:\n  - name: r\n    description: d\n    priority: high\n    when: true\n    approve: true\n",
        4,
        "priority must be an integer",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: true\n    approve: true\n  - name: r\n    description: d\n    when: true\n    approve: true\n",
        6,
        "already used at",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: correlation.max > 0.7\n    approve: true\n",
        4,
        "no loaded risk pack provides it",
    ),
    (
        "rules:\n  - name: r\n    description: d\n    when: true\n    approve: true\n    colour: red\n",
        6,
        "unknown key 'colour'",
    ),
    ("description: x\nrules:\n  x: 1\n", 3, "'rules' must be a list"),
    (
        "rules:\n  - name: r\n    description: d\n    when: order.qty > 1 \x01\n    approve: true\n",
        4,
        "control character",
    ),
]


@pytest.mark.parametrize(("text", "line", "what"), BAD)
def test_bad_rule_file_is_refused_with_file_and_line(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    with pytest.raises(RuleFileError) as info:
        _compile(tmp_path, text)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'r.yaml'}:{line}: "), message
    assert what in message


def test_yaml_on_key_is_not_a_boolean(tmp_path: Path) -> None:
    # In YAML 1.1 a bare `on:` is True; keys are read as written.
    _compile(
        tmp_path,
        "rules:\n  - name: r\n    description: d\n    on: fill\n    when: fill.stop_out\n"
        "    action: {kind: trip_breaker, reason: x}\n",
    )


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    lines.append("rules: []")
    with pytest.raises(RuleFileError) as info:
        _compile(tmp_path, "\n".join(lines) + "\n")
    assert "YAML nodes" in str(info.value)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuleFileError) as info:
        RiskPolicy.load([tmp_path / "nope"])
    assert "no such file" in str(info.value)


def test_pack_fact_in_a_reserved_namespace_is_refused() -> None:
    class Clash(FixedCorrelation):
        def fact_names(self) -> frozenset[str]:
            return frozenset({"order.secret"})

    with pytest.raises(RuleFileError) as info:
        RiskPolicy.load([RULES], [Clash()])
    assert "namespace bot4 fills itself" in str(info.value)


def test_default_policy_compiles_to_the_vetted_subset() -> None:
    policy = RiskPolicy.load([RULES], [FixedCorrelation()])
    assert len(policy.compiled.stages["order"].rules) >= 10
    for plan in policy.compiled.stages.values():
        for rule in plan.definition.values():
            assert list(rule) == ["all"]
            (condition,) = rule["all"]
            assert list(condition) == ["m"]  # one fact, no joins
            expr.vet_condition(condition["m"])
            assert "$div" not in repr(condition)


def test_division_by_a_constant_is_a_multiplication(tmp_path: Path) -> None:
    tree = expr.parse(
        "order.qty / 4 > 1", lambda n: BUILTIN_FACTS[n].kind if n in BUILTIN_FACTS else None, {}
    )
    test = expr.to_durable(tree, {"order.qty": "f0"}.__getitem__)
    assert test == {"$gt": {"f0": 1.0}} or "$mul" in repr(test)
    assert "$div" not in repr(test)


def test_vet_refuses_what_the_compiler_never_emits() -> None:
    for bad in (
        {"$div": {"f0": 1.0}},
        {"$gt": {"f0": {"$div": {"$l": 1.0, "$r": {"$m": "f1"}}}}},
        {"$gt": {"f0": float("nan")}},
        {"$gt": {"f0": {"$s": "x"}}},
        {"$and": []},
        {"$gt": {"order.qty": 1.0}},
        {"$nex": {"f0": 1}},
    ):
        with pytest.raises(expr.ExprError):
            expr.vet_condition(bad)


def test_engine_number_format_is_parsed_exactly() -> None:
    # The engine's JSON parser refuses "1e-05" (error 204); number() writes 1.0e-05.
    assert number(1e-05) == "1.0e-05"
    assert number(1e20) == "1.0e+20"
    assert number(0.1) == "0.1"
    engine = EngineRuleset("t", {"tiny": {"all": [{"m": {"$lt": {"f0": 2e-05}}}]}})
    try:
        assert engine.fire('{"_z":0.0,"f0":' + number(1e-05)) == ["tiny"]
        assert engine.fire('{"_z":0.0,"f0":' + number(3e-05)) == []
    finally:
        engine.close()
