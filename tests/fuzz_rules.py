"""Fuzz worker: random rule files and random facts against the compiler and
the durable-rules engine. Run in a subprocess by tests/test_rules_fuzz.py so
that a crash of the C engine (SIGFPE, SIGSEGV) fails the test instead of
killing pytest; also runnable on its own:

    .venv/bin/python tests/fuzz_rules.py --examples 20000

Checks, for every generated file:
* the compiler either compiles it or raises RuleFileError whose message
  starts with ``file:line:`` (or ``file:`` for whole-file problems); any other
  exception is a failure;
* a compiled policy's engine agrees with the Python evaluation of every
  condition on random facts (fired exactly when the condition is true);
* invalid fact values (NaN, infinities, huge numbers, wrong types) are
  refused before they reach the engine, never crash it;
* the exact confirmation of a decision (bot4.risk.exact) agrees with an
  independent evaluation in Fractions of every condition without a
  division (a division is rounded to 100 digits there, by design), and the
  stage's one generated function names the first rule that holds.
Exit status 0 when all examples pass, 1 on a failed check.
"""

from __future__ import annotations

import argparse
import ast
import math
import operator
import os
import sys
import tempfile
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bot4.errors import RiskError, RuleFileError  # noqa: E402
from bot4.risk import exact, expr  # noqa: E402
from bot4.risk.compiler import Compiler, read_file  # noqa: E402
from bot4.risk.engine import EngineRuleset  # noqa: E402
from bot4.risk.facts import BUILTIN_FACTS, ORDER, encode  # noqa: E402

STATS: Counter[str] = Counter()
NUMERIC = sorted(n for n, s in BUILTIN_FACTS.items() if s.kind == expr.NUMBER and ORDER in s.stages)
BOOLEAN = sorted(n for n, s in BUILTIN_FACTS.items() if s.kind == expr.BOOL and ORDER in s.stages)
PARAMS = ["limit", "k", "zero", "tiny"]
PARAM_VALUES = {"limit": 0.02, "k": 3, "zero": 0, "tiny": 1e-7}

good_numbers = st.one_of(
    st.sampled_from(["0", "1", "0.5", "-2", "1e-7", "3", "0.0", "2.5"]),
    st.floats(-1e6, 1e6, allow_nan=False).map(repr),
    st.integers(-10, 10).map(str),
)
wild = st.sampled_from(
    [
        "unknown.fact",
        "order",
        "x",
        "order.qty.more",
        "Order.Qty",
        "__import__('os')",
        "True",
        "1e20",
        "1e400",
        "nan",
        "inf",
        "10**400",
        "f(1)",
        "[1]",
        "'s'",
        "lambda: 1",
    ]
)
atoms = st.one_of(
    st.sampled_from(NUMERIC),
    st.sampled_from(NUMERIC),
    st.sampled_from(NUMERIC),
    st.sampled_from(PARAMS),
    good_numbers,
    good_numbers,
    wild,
)
GOOD_OPS = ["+", "-", "*", "+", "-", "*", "/"]
BAD_OPS = ["%", "**", "//", "@", "&"]


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = st.one_of(st.sampled_from(GOOD_OPS), st.sampled_from(GOOD_OPS), st.sampled_from(BAD_OPS))
    binary = st.tuples(children, ops, children)
    return st.one_of(
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"-{c}"),
    )


arith = st.recursive(atoms, _combine, max_leaves=6)
CMP = st.one_of(
    st.sampled_from(["<", "<=", ">", ">=", "==", "!="]),
    st.sampled_from(["<", ">=", "is", "in", "<>"]),
)
comparison = st.tuples(arith, CMP, arith).map(lambda t: f"{t[0]} {t[1]} {t[2]}")
boolean_atoms = st.one_of(
    comparison,
    st.sampled_from(BOOLEAN),
    st.sampled_from(
        ['order.side == "buy"', 'order.side != "sell"', "order.side > 1", "true", "false"]
    ),
)
chained = st.tuples(arith, arith, arith).map(lambda t: f"{t[0]} < {t[1]} <= {t[2]}")
boolean_atoms = st.one_of(boolean_atoms, chained)
conditions = st.recursive(
    boolean_atoms,
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["and", "or"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        c.map(lambda x: f"not {x}"),
    ),
    max_leaves=6,
)
garbage = st.text(max_size=40)
outcomes = st.one_of(
    st.just({"approve": True}),
    st.builds(
        lambda r: {"reject": {"reason": r}},
        st.sampled_from(["no", "{order.qty}", "{limit:.0%}", "{k}"]),
    ),
    st.builds(lambda r: {"reject": {"reason": r}}, st.sampled_from(["no", "{order.qty:,.2f}"])),
    st.builds(
        lambda r, s: {"reject": {"reason": r, "suggested_size": s}},
        st.sampled_from(["no", "{order.qty}", "{limit:.0%}", "{nope}", "{order.qty:d}", "{", ""]),
        arith,
    ),
    st.builds(
        lambda k: {"action": {"kind": k, "reason": "x"}},
        st.sampled_from(["emergency_close", "trip_breaker", "explode"]),
    ),
    st.just({"reject": "text"}),
)


clean_atoms = st.one_of(st.sampled_from(NUMERIC), st.sampled_from(PARAMS), good_numbers)
clean_arith = st.recursive(
    clean_atoms,
    lambda c: st.tuples(c, st.sampled_from(["+", "-", "*"]), c).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    ),
    max_leaves=5,
)
clean_conditions = st.recursive(
    st.one_of(
        st.tuples(
            clean_arith, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), clean_arith
        ).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
        st.sampled_from(BOOLEAN),
        st.sampled_from(['order.side == "buy"', 'order.side != "sell"', "true", "false"]),
    ),
    lambda c: st.one_of(
        st.tuples(c, st.sampled_from(["and", "or"]), c).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        c.map(lambda x: f"not {x}"),
    ),
    max_leaves=6,
)


@st.composite
def rule_dicts(draw: st.DrawFn, wild: bool) -> dict[str, Any]:
    if not wild:
        return {
            "name": draw(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True)),
            "description": "d",
            "when": draw(clean_conditions),
            **draw(
                st.sampled_from(
                    [{"approve": True}, {"reject": {"reason": "{order.qty} > {limit}"}}]
                )
            ),
        }
    rule: dict[str, Any] = {
        "name": draw(
            st.one_of(
                st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
                st.sampled_from(["", "Bad Name", "r"]),
            )
        ),
        "description": draw(st.sampled_from(["d", "d", "d", "", None, "a rule"])),
        "when": draw(st.one_of(conditions, garbage, st.booleans(), st.integers())),
    }
    rule.update(draw(outcomes))
    if draw(st.integers(0, 5)) == 0:
        rule["on"] = draw(
            st.sampled_from(["order", "tick", "fill", ["tick", "fill"], "never", ["order", "tick"]])
        )
    if draw(st.integers(0, 9)) == 0:
        rule[draw(st.sampled_from(["priorty", "params", "extra", "priority"]))] = draw(
            st.sampled_from([1, "x", {"a": 1}, -5])
        )
    if draw(st.integers(0, 9)) == 0:
        rule.pop(draw(st.sampled_from(sorted(rule))), None)
    return rule


@st.composite
def rule_files(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=300))
    wild = kind <= 3  # 1: edited text, 2-3: wild structure, 4-9: clean structure
    rules = draw(st.lists(rule_dicts(wild=False), min_size=1, max_size=6))
    for i, rule in enumerate(rules):
        rule["name"] = f"{rule['name']}-{i}"  # clean files have unique names
    if wild:
        rules.insert(draw(st.integers(0, len(rules))), draw(rule_dicts(wild=True)))
    doc: dict[str, Any] = {"params": dict(PARAM_VALUES), "rules": rules}
    if not wild:
        doc["settings"] = {"maintenance_margin_rate": 0.005}
    if wild and draw(st.booleans()):
        doc["settings"] = {"maintenance_margin_rate": draw(st.sampled_from([0.005, 2, "x", -1]))}
    if wild and draw(st.booleans()):
        doc["windows"] = {
            "w": {"count": draw(st.sampled_from(["orders", "stop_outs", "x"])), "seconds": 60}
        }
    text = yaml.safe_dump(doc, sort_keys=False)
    if kind == 1:  # random edits of a well-formed file
        chars = list(text)
        for _ in range(draw(st.integers(1, 5))):
            if not chars:
                break
            i = draw(st.integers(0, len(chars) - 1))
            op = draw(st.integers(0, 2))
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, draw(st.sampled_from(list(":-{}[]'\"\n #&*!|>%@`\t\x00"))))
            else:
                chars[i] = draw(st.characters())
        text = "".join(chars)
    return text


fact_values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 0.02, 3.0, 1e-7, 1e15, -1e15]),
    st.integers(-5, 5).map(float),
    # A few values drawn often, so two sides of a comparison are often equal.
    st.sampled_from([0.0, 1.0, 3.0]),
    st.sampled_from([0.0, 1.0, 3.0]),
)
bad_values = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e300, -1e16, None, object(), [1], "x" * 200, "\x00"]
)


def check_file(text: str, data: st.DataObject, directory: Path) -> None:
    path = directory / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if _encodable(
        text
    ) else path.write_bytes(text.encode("utf-8", "replace"))
    try:
        raw, _ = read_file(path)
        compiled = Compiler({"correlation.max": "correlation"}).compile([raw])
    except RuleFileError as exc:
        message = str(exc)
        # Plain checks, not pytest.raises: this worker runs outside pytest.
        if not message.startswith(str(path)):
            raise AssertionError(f"error does not name the file: {message}") from None
        if not exc.message.strip():
            raise AssertionError("empty error message") from None
        if exc.line is not None and not message.startswith(f"{path}:{exc.line}: "):
            raise AssertionError(f"error does not read file:line: {message}") from None
        STATS["refused"] += 1
        return
    STATS["compiled"] += 1
    plan = compiled.stages[ORDER]
    if not plan.rules:
        return
    engine = EngineRuleset("fuzz", plan.definition)
    try:
        for _ in range(data.draw(st.integers(1, 5))):
            facts: dict[str, Any] = {}
            for name in plan.keys:
                kind = BUILTIN_FACTS[name].kind if name in BUILTIN_FACTS else expr.NUMBER
                if kind == expr.BOOL:
                    facts[name] = data.draw(st.booleans())
                elif kind == expr.STRING:
                    facts[name] = data.draw(st.sampled_from(["buy", "sell"]))
                else:
                    facts[name] = data.draw(fact_values)
            if plan.keys and data.draw(st.integers(0, 4)) == 0:
                victim = data.draw(st.sampled_from(sorted(plan.keys)))
                facts[victim] = data.draw(bad_values)
                try:
                    _body(plan, facts)
                except RiskError:
                    STATS["bad value refused"] += 1
                    continue
                raise AssertionError(f"bad value {facts[victim]!r} for {victim} was not refused")
            fired = set(engine.fire(_body(plan, facts)))
            expected = {
                key for key, rule in plan.by_key.items() if expr.evaluate(rule.when, facts) is True
            }
            assert fired == expected, (
                f"engine fired {sorted(fired)}, Python says {sorted(expected)}\n"
                f"facts={facts}\nrules={ {k: r.when_source for k, r in plan.by_key.items()} }"
            )
            _check_exact(plan, facts)
            STATS["messages"] += 1
    finally:
        engine.close()


_CMP_FN = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _fraction(node: ast.AST, source: str, params: dict[str, Any], facts: dict[str, Any]) -> Any:
    """A condition of the rule language evaluated in Fractions (exact)."""
    if isinstance(node, ast.BoolOp):
        values = [_fraction(v, source, params, facts) is True for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp):
        inner = _fraction(node.operand, source, params, facts)
        if isinstance(node.op, ast.Not):
            return inner is not True
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Compare):
        left = _fraction(node.left, source, params, facts)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _fraction(comparator, source, params, facts)
            if not _CMP_FN[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BinOp):
        a = _fraction(node.left, source, params, facts)
        b = _fraction(node.right, source, params, facts)
        return (
            a + b
            if isinstance(node.op, ast.Add)
            else a - b
            if isinstance(node.op, ast.Sub)
            else a * b
        )
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, str)):
            return node.value
        return Fraction(ast.get_source_segment(source, node) or repr(node.value))
    if isinstance(node, ast.Name):
        if node.id in ("true", "True", "false", "False"):
            return node.id in ("true", "True")
        value = params[node.id]
        return value if isinstance(value, (bool, str)) else Fraction(Decimal(repr(float(value))))
    name = ast.unparse(node)
    value = facts[name]
    return value if isinstance(value, (bool, str)) else Fraction(value)


def _check_exact(plan: Any, facts: dict[str, Any]) -> None:
    held = []
    for rule in plan.rules:
        got = exact.holds(rule.exact, facts)
        held.append(got)
        source = rule.when_source.strip()
        if "/" in source or source in ("true", "false"):
            continue
        want = _fraction(ast.parse(source, mode="eval").body, source, dict(rule.params), facts)
        assert got == (want is True), (
            f"exact says {got} for {source!r}, Fractions say {want}; facts={facts}"
        )
        STATS["exact checked"] += 1
    first = next((r for r, h in zip(plan.rules, held, strict=True) if h), None)
    assert exact.exact_decider(plan.rules, plan.exact_first, facts) is first


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _body(plan: Any, facts: dict[str, Any]) -> str:
    parts = ['{"_z":0.0']
    for name, prefix in plan.fields:
        parts.append(prefix)
        parts.append(encode(name, facts[name]))
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--examples", type=int, default=int(os.environ.get("BOT4_FUZZ_EXAMPLES", "300"))
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)

        @settings(
            max_examples=args.examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(rule_files(), st.data())
        def fuzz(text: str, data: st.DataObject) -> None:
            check_file(text, data, directory)

        try:
            fuzz()
        except AssertionError as exc:
            print(f"FUZZ FAILURE: {exc}", file=sys.stderr)
            return 1
    print(f"fuzz ok: {dict(STATS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
