"""bot4 installs and runs on Python 3.11, 3.12 and 3.13.

durable-rules' C engine calls PyEval_CallObject, which Python 3.13 removed: a
plain build installs and then fails at import. These tests hold the three
answers to that: dev.py builds the engine so it loads on the interpreter at
hand (and never from pip's cache), the bot4 command names the problem and
the fix in one line, and the printed fix really works. They also hold the
bookkeeping: supported versions stated alike in pyproject.toml, the README,
tools/pythons.py and the Dockerfile, and CI's extra passes on 3.12 and 3.13.

The real-build tests need a Python 3.13 (found like dev.py finds it); without
one they skip locally and fail under CI=true.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bot4.engine_check import REMOVED_CALL
from tests.conftest import in_ci, run_bot4

REPO = Path(__file__).resolve().parent.parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIN = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("durable-rules"))
FIX_DEFINE = "CPPFLAGS=-DPyEval_CallObject=PyObject_CallObject"


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _load("bot4_dev_script", REPO / "dev.py")
pythons = _load("bot4_tools_pythons", REPO / "tools" / "pythons.py")


def _shadow_engine(tmp_path: Path, error: str) -> dict[str, str]:
    """PYTHONPATH with a ``durable_rules_engine`` that fails to import like ``error``."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "durable_rules_engine.py").write_text(f"raise ImportError({error!r})\n")
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([str(shadow), *rest])}


# -- the bot4 command with an engine that does not load ------------------------


@pytest.mark.parametrize(
    "command",
    [("plugins", "list"), ("rules", "test", "rules"), ("run", "--no-chart"), ("--version",)],
)
def test_engine_built_without_the_313_fix_gives_one_line_naming_problem_and_fix(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # The text Python 3.13 gives for durable-rules 2.0.28 built plainly (seen for real).
    so = tmp_path / "site-packages" / "durable_rules_engine.cpython-313-x86_64-linux-gnu.so"
    env = _shadow_engine(tmp_path, f"{so}: undefined symbol: {REMOVED_CALL}")
    result = run_bot4(*command, env=env, cwd=tmp_path)
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    fix = (
        f"{FIX_DEFINE} {shlex.quote(sys.executable)} -m pip install --force-reinstall "
        f"--no-cache-dir --no-binary durable-rules {PIN}"
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"bot4: durable-rules' C engine does not load on Python {python} "
        f"(undefined symbol {REMOVED_CALL}); rebuild it: {fix}"
    ]


def test_engine_failing_otherwise_names_the_error_in_one_line(tmp_path: Path) -> None:
    error = "libstdc++.so.6: cannot open shared object file: No such file or directory"
    result = run_bot4("plugins", "list", env=_shadow_engine(tmp_path, error), cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("bot4: durable-rules' C engine does not load on Python ")
    assert f"({error}); reinstall it: " in line
    assert line.endswith(f"--no-cache-dir --no-binary durable-rules {PIN}")
    assert "Traceback" not in result.stderr


def test_working_engine_prints_nothing_extra() -> None:
    result = run_bot4("plugins", "list")
    assert result.returncode == 0, result.stderr
    assert "durable-rules" not in result.stderr


# -- dev.py's build of the engine ---------------------------------------------


def test_setup_defines_the_removed_call_from_313_on_and_keeps_callers_cppflags() -> None:
    assert dev.engine_build_env((3, 13, 0), {"CPPFLAGS": "-I/opt/x"})["CPPFLAGS"] == (
        "-I/opt/x -DPyEval_CallObject=PyObject_CallObject"
    )
    assert dev.engine_build_env((3, 14, 0), {})["CPPFLAGS"] == dev.ENGINE_DEFINE
    for older in ((3, 11, 7), (3, 12, 1)):
        assert "CPPFLAGS" not in dev.engine_build_env(older, {})
        assert dev.engine_build_env(older, {"CPPFLAGS": "-O1"})["CPPFLAGS"] == "-O1"
    assert f"CPPFLAGS={dev.ENGINE_DEFINE}" == FIX_DEFINE


def test_setup_rebuilds_the_pinned_engine_from_source_never_from_pips_cache() -> None:
    cmd = dev.engine_install_command(Path("py"))
    assert cmd[-1] == PIN
    assert "--no-cache-dir" in cmd
    assert "--force-reinstall" in cmd
    assert cmd[cmd.index("--no-binary") + 1] == "durable-rules"


def test_setup_stamp_names_the_interpreter_so_switching_python3_reinstalls() -> None:
    assert dev.fingerprint((3, 11, 7)) == dev.fingerprint((3, 11, 7))
    assert dev.fingerprint((3, 11, 7)) != dev.fingerprint((3, 13, 0))
    assert dev.fingerprint((3, 13, 0)) != dev.fingerprint((3, 13, 1))


def test_a_venv_made_by_another_interpreter_is_not_reused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    here = tuple(sys.version_info[:3])
    assert dev._venv_matches(venv, here)
    assert not dev._venv_matches(venv, (here[0], here[1] + 1, 0))
    assert not dev._venv_matches(tmp_path / "missing", here)


# -- finding interpreters and CI's extra passes ---------------------------------


def _fake_python(folder: Path, name: str, script: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / name
    if script is None:
        exe.symlink_to(sys.executable)
    else:
        exe.write_text(script)
        exe.chmod(0o755)
    return exe


def test_interpreters_are_found_by_what_they_report_not_by_name(tmp_path: Path) -> None:
    here = sys.version_info[:2]
    name = f"python{here[0]}.{here[1]}"
    other = (here[0], here[1] + 1)
    path_dir = tmp_path / "bin"
    # On PATH: a liar (this interpreter under the next version's name) and a
    # shim that does not start (pyenv's, for a version not selected).
    _fake_python(path_dir, f"python{other[0]}.{other[1]}")
    _fake_python(path_dir, name, "#!/bin/sh\necho 'pyenv: not selected' >&2; exit 127\n")
    root = tmp_path / "pyenv"
    newest = _fake_python(root / "versions" / f"{here[0]}.{here[1]}.99" / "bin", name)
    _fake_python(root / "versions" / f"{here[0]}.{here[1]}.3" / "bin", name)
    _fake_python(root / "versions" / f"{here[0]}.{here[1]}.100t" / "bin", name)
    env = {"PATH": str(path_dir), "PYENV_ROOT": str(root)}
    assert pythons.find(here, env) == str(newest)
    assert pythons.find(other, env) is None
    assert pythons.find(here, {"PATH": str(path_dir)}) is None


def _no_python(version: tuple[int, int]) -> str | None:
    return None


def test_missing_interpreter_is_skipped_locally_saying_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert dev.run_other_pythons([], False, dict(os.environ), finder=_no_python) == 0
    out = capsys.readouterr().out
    for version in ("3.13", "3.12"):
        if (3, int(version[2:])) == sys.version_info[:2]:
            assert f"python3 is {version}; the run above covered it" in out
        else:
            assert f"== python {version}: skipped: no Python {version} here" in out


def test_missing_interpreter_fails_under_ci(capsys: pytest.CaptureFixture[str]) -> None:
    assert dev.run_other_pythons([], True, dict(os.environ), finder=_no_python) == 1
    out = capsys.readouterr().out
    missing = [f"{v[0]}.{v[1]}" for v, _ in dev.EXTRA_RUNS if v != sys.version_info[:2]]
    for version in missing:
        assert f"== python {version}: FAILED: no Python {version} (" in out
    assert "CI=true needs it" in out
    assert out.rstrip().endswith(f"failed on Python {', '.join(missing)}")


def test_ci_runs_the_suite_on_313_and_a_smoke_test_on_312() -> None:
    assert dict(dev.EXTRA_RUNS) == {(3, 13): "suite", (3, 12): "smoke"}
    assert (REPO / ".ci" / "run").read_text().rstrip().endswith("exec python3 dev.py test")


# -- the supported versions, stated alike everywhere ------------------------------


def test_supported_versions_are_stated_alike_in_pyproject_readme_and_tools() -> None:
    project = PYPROJECT["project"]
    listed = sorted(
        tuple(int(p) for p in c.rsplit(" :: ", 1)[1].split("."))
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert listed == sorted(pythons.SUPPORTED)
    low = min(pythons.SUPPORTED)
    assert project["requires-python"] == f">={low[0]}.{low[1]}"
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Supported Pythons", 1)[1].split("\n#", 1)[0]
    for version in pythons.SUPPORTED:
        assert f"{version[0]}.{version[1]}" in section
    assert "PyEval_CallObject" in section
    assert FIX_DEFINE in section
    assert "--no-cache-dir --no-binary durable-rules" in section
    assert PIN in section


def test_dockerfile_builds_the_engine_as_dev_py_does() -> None:
    text = (REPO / "Dockerfile").read_text()
    build = text.split("pip wheel", 1)[0].rsplit("RUN ", 1)[1]
    assert "sys.version_info < (3, 13)" in build
    assert f'CPPFLAGS="{dev.ENGINE_DEFINE}"' in build
    assert re.search(r"pip wheel --no-cache-dir --no-binary durable-rules ", text)
    runtime = text.rsplit("FROM ", 1)[1]
    assert 'python -c "import durable_rules_engine"' in runtime
    default = re.search(r"^ARG PYTHON_VERSION=(\d+)\.(\d+)$", text, re.M)
    assert default is not None
    assert (int(default[1]), int(default[2])) in pythons.SUPPORTED


# -- the real thing: a broken build on Python 3.13, and both fixes -----------------


@pytest.fixture(scope="module")
def py313_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python 3.13 venv with bot4 and its dependencies but durable-rules installed.

    Without the engine, not with a plain build of it: pip would keep that
    broken wheel in the user's cache.
    """
    interpreter = pythons.find((3, 13))
    if interpreter is None:
        message = "no Python 3.13 here (not on PATH as python3.13, not among pyenv's versions)"
        if in_ci():
            pytest.fail(f"{message}; CI=true needs it")
        pytest.skip(message)
    venv = tmp_path_factory.mktemp("py313") / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    others = [d for d in PYPROJECT["project"]["dependencies"] if d != PIN]
    subprocess.run([*pip, "install", *others], check=True, timeout=600)
    subprocess.run([*pip, "install", "--no-deps", str(REPO)], check=True, timeout=600)
    return venv


def _break_engine(venv: Path) -> None:
    """Build durable-rules on 3.13 as plain pip does (no define), bypassing the
    cache both ways so the user's cache is never given a broken wheel."""
    env = {k: v for k, v in os.environ.items() if k != "CPPFLAGS"}
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q",
         "install", "--force-reinstall", "--no-cache-dir", "--no-binary", "durable-rules", PIN],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    assert REMOVED_CALL in (dev.engine_import_error(venv / "bin" / "python") or "")


def test_printed_fix_rebuilds_a_broken_engine_on_313(py313_venv: Path) -> None:
    _break_engine(py313_venv)
    python = py313_venv / "bin" / "python"
    bot4 = [str(py313_venv / "bin" / "bot4"), "plugins", "list"]
    broken = subprocess.run(bot4, capture_output=True, text=True, cwd=py313_venv, check=False)
    assert broken.returncode == 2
    [line] = broken.stderr.splitlines()
    assert line.startswith(
        f"bot4: durable-rules' C engine does not load on Python 3.13 "
        f"(undefined symbol {REMOVED_CALL}); rebuild it: {FIX_DEFINE} {python} -m pip install "
    )
    fix = line.split("; rebuild it: ", 1)[1]
    subprocess.run(fix, shell=True, check=True, timeout=600, cwd=py313_venv)
    assert dev.engine_import_error(python) is None
    fixed = subprocess.run(bot4, capture_output=True, text=True, cwd=py313_venv, check=False)
    assert fixed.returncode == 0, fixed.stderr


def test_setup_repairs_a_broken_engine_on_313(py313_venv: Path) -> None:
    _break_engine(py313_venv)
    python = py313_venv / "bin" / "python"
    version = pythons.interpreter_version(python)
    assert version is not None
    dev.ensure_engine(python, version, py313_venv)
    assert dev.engine_import_error(python) is None


# -- what Python 3.13 made an error: a connection left to the garbage collector ---


def test_a_refused_paper_state_file_leaves_no_connection_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3.13 warns about an unclosed sqlite3 connection (filterwarnings makes it an
    # error, in whichever later test the collector runs); earlier Pythons say
    # nothing, so the connections the engine opens are watched here.
    import sqlite3

    from bot4_paper.durable import TICK_FLUSH, DurableEngine

    from bot4.data import iter_sample
    from bot4.errors import ConfigError

    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def watched_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", watched_connect)
    state = tmp_path / "paper.sqlite"
    account = DurableEngine(state, balance=Decimal(5000))
    for tick in itertools.islice(iter_sample(), TICK_FLUSH):  # a flush writes the account
        account.on_tick(tick)
    account.close()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    for path, problem in ((state, "opened with balance 5000"), (junk, "not a paper state")):
        with pytest.raises(ConfigError, match=problem):
            DurableEngine(path)
    assert len(opened) == 3
    for conn in opened:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")


def test_the_smoke_session_is_two_hours_of_the_bundled_sample(tmp_path: Path) -> None:
    lines = dev.write_smoke_ticks(tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "timestamp,symbol,bid,ask,last,volume"
    assert len(lines) == 1 + 2 * 3600 * 2
    assert lines[-1].startswith("2024-03-01T01:59:59")
