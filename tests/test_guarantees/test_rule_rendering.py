"""Bounded rule rendering; compiling a rule file never raises past ``file:line``.

A reason template's format specs are parsed and their width and precision
bounded before ``format()`` sees them, and a reason renders to at most
MAX_REASON_CHARS whatever the facts hold: a template over a limit is a compile
error at the reason's line. Whatever a rule file holds, compiling it raises
RuleFileError and nothing else (MemoryError and RecursionError included), and
on hot reload inside a running kernel the last good policy stays in force.
"""

from __future__ import annotations

import json
import logging
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot4.errors import RuleFileError
from bot4.model import Rejected
from bot4.risk import RiskPolicy, compiler, expr, windows, yamlsrc
from bot4.risk.reasons import MAX_FORMAT_PRECISION, MAX_FORMAT_WIDTH, MAX_REASON_CHARS, render
from tests.riskkit import market, order, portfolio
from tests.test_guarantees.reloadkit import copy_rules, run_with_broken_files

REASON_LINE = 7


def rule_file(reason: str, when: str = "order.qty > 100") -> str:
    return (
        "rules:\n"
        "  - name: wide\n"
        "    description: d\n"
        "    priority: 5\n"
        f"    when: {when}\n"
        "    reject:\n"
        f"      reason: {json.dumps(reason)}\n"
    )


def _load(path: Path) -> RiskPolicy:
    return RiskPolicy.load([path])


BAD_TEMPLATES = {
    "huge width": ("{order.qty:100000000}", f"width above {MAX_FORMAT_WIDTH}"),
    "huge width, many digits": ("{order.qty:" + "9" * 400 + "}", "width above"),
    "huge precision": ("{order.qty:.100000000f}", f"precision above {MAX_FORMAT_PRECISION}"),
    "width and precision": ("{order.qty:65.2f}", "width above"),
    "nested spec": ("{order.qty:{order.price}}", "unmatched { or }"),
    "not a spec": ("{order.qty:>>>}", "is not a format spec"),
    "over 1 KiB rendered": ("{order.qty:64}" * 17, f"at most {MAX_REASON_CHARS}"),
    "long string parameter rendered many times": ("{p}" * 11, f"at most {MAX_REASON_CHARS}"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATES))
def test_a_template_over_a_limit_is_a_compile_error_at_its_line(case: str, tmp_path: Path) -> None:
    template, message = BAD_TEMPLATES[case]
    path = tmp_path / "wide.yaml"
    text = rule_file(template)
    if "{p}" in template:
        text = "params:\n  p: " + "x" * 100 + "\n" + text
    path.write_text(text)
    line = REASON_LINE + (2 if "{p}" in template else 0)
    tracemalloc.start()
    try:
        with pytest.raises(RuleFileError) as info:
            _load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{path}:{line}: rule 'wide'")
    assert message in str(info.value)
    assert peak < 20_000_000, "the compiler formatted the huge spec"


def test_the_largest_allowed_spec_compiles_and_renders_within_the_bound(tmp_path: Path) -> None:
    spec = f"{MAX_FORMAT_WIDTH},.{MAX_FORMAT_PRECISION}f"
    path = tmp_path / "edge.yaml"
    path.write_text(rule_file(("{order.qty:" + spec + "} ") * 12, when="order.qty > 0"))
    policy = _load(path)
    decision = policy.check_order(order(qty="123456789.12345678"), portfolio(), market(), 0)
    assert isinstance(decision, Rejected)
    assert decision.rule == "wide"
    assert len(decision.reason) <= MAX_REASON_CHARS
    assert "123,456,789.12345677614212036133" in decision.reason
    policy.close()


def test_render_never_exceeds_the_bound() -> None:
    text = render("{a} and {b}", {"a": "x" * 5000, "b": 1.5})
    assert len(text) == MAX_REASON_CHARS
    assert text.endswith("\u2026")
    assert render("{a}", {"a": 2.5}) == "2.5"


# --- no exception escapes the compiler ----------------------------------------------------


def _raising(exc: BaseException) -> Callable[..., Any]:
    def boom(*args: object, **kwargs: object) -> Any:
        raise exc

    return boom


INJECTED = {
    "MemoryError parsing a condition": (expr, "parse", MemoryError()),
    "RecursionError parsing a condition": (expr, "parse", RecursionError("maximum depth")),
    "MemoryError translating for the engine": (expr, "to_durable", MemoryError()),
    "a bug in a window": (windows.WindowSpec, "parse", ZeroDivisionError("bug")),
}


@pytest.mark.parametrize("case", sorted(INJECTED))
def test_an_exception_inside_the_compiler_becomes_file_line(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target, name, exc = INJECTED[case]
    path = tmp_path / "r.yaml"
    path.write_text("windows:\n  w: {count: orders, seconds: 60}\n" + rule_file("big {order.qty}"))
    monkeypatch.setattr(target, name, _raising(exc))
    with pytest.raises(RuleFileError) as info:
        _load(path)
    line = 2 if target is windows.WindowSpec else 4  # the window's line, or the rule's
    assert str(info.value).startswith(f"{path}:{line}: cannot compile: {type(exc).__name__}")


def test_an_exception_reading_yaml_becomes_a_message_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(rule_file("big"))
    monkeypatch.setattr(yamlsrc, "_convert", _raising(MemoryError()))
    with pytest.raises(RuleFileError) as info:
        _load(path)
    assert str(info.value) == f"{path}: cannot read: MemoryError"


NESTED = {
    "parentheses": "(" * 300 + "order.qty" + ")" * 300 + " > 1",
    "not chain": "not " * 450 + "order.has_stop_loss",
    "long sum": " + ".join(["order.qty"] * 200) + " > 1",
    "unary minus chain": "-" * 1500 + "order.qty > 1",
}


@pytest.mark.parametrize("case", sorted(NESTED))
def test_deeply_nested_conditions_are_compile_errors(case: str, tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(rule_file("deep", when=json.dumps(NESTED[case])))
    with pytest.raises(RuleFileError) as info:
        _load(path)
    assert str(info.value).startswith(f"{path}:5: rule 'wide' when: ")


def test_deeply_nested_yaml_is_a_compile_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("rules: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(RuleFileError) as info:
        _load(path)
    assert str(info.value).startswith(f"{path}")


# --- hot reload in a running kernel ---------------------------------------------------------


def _write_wide(rules: Path, template: str) -> Callable[[], None]:
    def spoil() -> None:
        (rules / "15-wide.yaml").write_text(rule_file(template))

    return spoil


@pytest.mark.trio
@pytest.mark.parametrize(
    ("case", "template", "message"),
    [
        ("width", "{order.qty:1000000000000}", "width above"),
        ("precision", "{order.qty:.100000000f}", "precision above"),
        ("nested", "{order.qty:{order.price}}", "unmatched"),
    ],
)
async def test_a_bad_template_on_hot_reload_keeps_the_session_and_the_policy(
    case: str, template: str, message: str, tmp_path: Path
) -> None:
    rules = copy_rules(tmp_path)
    run = await run_with_broken_files(
        rules, _write_wide(rules, template), lambda: (rules / "15-wide.yaml").unlink()
    )
    assert run.kernel.stats.ticks == 900
    assert run.kernel.stats.reload_failures == 1
    assert run.kernel.stats.reloads == 1
    errors = [str(e) for e in run.topics("kernel.error")]
    assert len(errors) == 1
    where = f"{rules / '15-wide.yaml'}:{REASON_LINE}: "
    assert errors[0].startswith(f"rule reload refused, keeping the previous policy: {where}")
    assert message in errors[0]
    assert run.digest_at_first_buy == run.digest_before
    assert [r.rule for r in run.topics("risk.rejected")] == ["max-position-size"]  # type: ignore[attr-defined]


@pytest.mark.trio
@pytest.mark.parametrize("exc", [MemoryError(), RecursionError("maximum recursion depth")])
async def test_an_exception_while_compiling_on_hot_reload_keeps_the_session(
    exc: BaseException,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = copy_rules(tmp_path)

    def spoil() -> None:
        monkeypatch.setattr(expr, "parse", _raising(exc))

    def repair() -> None:
        monkeypatch.undo()
        # A refused state is reported once; a retry needs a change to the files.
        entry = rules / "20-entry.yaml"
        st = entry.stat()
        os.utime(entry, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    with caplog.at_level(logging.INFO, logger="bot4.risk"):
        run = await run_with_broken_files(rules, spoil, repair)
    assert run.kernel.stats.ticks == 900
    assert run.kernel.stats.reload_failures == 1
    assert run.kernel.stats.reloads == 1
    errors = [str(e) for e in run.topics("kernel.error")]
    assert len(errors) == 1
    first_rule = f"{rules / '00-exits.yaml'}:"
    assert errors[0].startswith(f"rule reload refused, keeping the previous policy: {first_rule}")
    assert f"cannot compile: {type(exc).__name__}" in errors[0]
    assert run.digest_at_first_buy == run.digest_before
    assert [r.rule for r in run.topics("risk.rejected")] == ["max-position-size"]  # type: ignore[attr-defined]
    assert "Traceback" not in caplog.text


def test_a_reload_that_raises_inside_the_policy_is_an_outcome_not_an_exception(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The net under the compiler's own: even a failure outside it (here the
    # fingerprint) leaves the policy in force and returns the error.
    rules = copy_rules(tmp_path)
    from tests.test_guarantees.reloadkit import pack

    policy = RiskPolicy.load([rules], [pack()])
    before = policy.digest
    monkeypatch.setattr(compiler.Compiler, "compile", _raising(MemoryError()))
    (rules / "20-entry.yaml").write_text((rules / "20-entry.yaml").read_text() + "\n")
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert outcome.error is not None
    assert "MemoryError" in str(outcome.error)
    assert policy.digest == before
    from bot4.risk import sources

    monkeypatch.setattr(sources, "fingerprint", _raising(RecursionError()))
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert str(outcome.error) == "<policy>: reload failed: RecursionError"
    assert policy.digest == before
    policy.close()
