"""The fuzz test: random rule files and random facts against the compiler
and the C engine, in a subprocess (tests/fuzz_rules.py), so a crash of the
engine fails this test instead of killing pytest.

Bounded by default (a few seconds); the long mode is one command:

    BOT4_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_rules_fuzz.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.riskkit import REPO

WORKER = REPO / "tests" / "fuzz_rules.py"


def _run(code_or_args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *code_or_args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def test_fuzz_compiler_and_engine_in_a_subprocess() -> None:
    examples = int(os.environ.get("BOT4_FUZZ_EXAMPLES", "200"))
    result = _run([str(WORKER), "--examples", str(examples)], timeout=max(120.0, examples * 0.2))
    if result.returncode < 0:
        name = signal.Signals(-result.returncode).name
        pytest.fail(f"fuzz worker killed by signal {name}\n{result.stderr[-3000:]}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fuzz ok" in result.stdout
    # The run exercised both sides: files refused and files compiled and fired.
    assert "'refused'" in result.stdout
    assert "'messages'" in result.stdout


def test_the_hazard_is_real_a_raw_zero_division_kills_the_process() -> None:
    # Why the compiler never emits $div: durable-rules 2.0.28 dies of SIGFPE.
    # This is the failure the subprocess isolation above would report.
    code = textwrap.dedent(
        """
        import json, durable_rules_engine as d
        rule = {"$gt": {"a": {"$div": {"$l": {"$m": "b"}, "$r": {"$m": "c"}}}}}
        h = d.create_ruleset("div", json.dumps({"r": {"all": [{"m": rule}]}}))
        d.assert_fact(h, json.dumps({"a": 1, "b": 1, "c": 0, "sid": "0"}))
        """
    )
    result = _run(["-c", code], timeout=60)
    assert result.returncode == -signal.SIGFPE
