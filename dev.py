#!/usr/bin/env python3
"""Set up bot4 in ./.venv and run it: the two commands of the README.

    python3 dev.py run [bot4 run options]   # paper session on the bundled data
    python3 dev.py test [pytest options]    # every test, lint and type check

Needs only Python 3.11, 3.12 or 3.13 and pip. The first call creates ``.venv``
with whichever of them is ``python3`` and installs bot4 with every bundled
plugin in editable mode; later calls reinstall only when a ``pyproject.toml``
or the interpreter changed (both are in a stamp kept in the venv).

durable-rules ships only a source distribution whose C engine calls
``PyEval_CallObject``, which Python 3.13 removed; set-up builds it for the
venv's interpreter (see ``engine_build_env``), never from pip's wheel cache,
and checks that the engine imports before it says it is done.

``python3 dev.py test --all-pythons`` (implied under ``CI=true``) also runs
the whole test suite on Python 3.13 in ``.venv-3.13`` and a smoke test
(install, ``rules test``, a short session, ``plugins list``) on 3.12 in
``.venv-3.12``. An interpreter that is not on this machine is skipped with a
line saying so; under ``CI=true`` that is a failure.

Other commands pass straight to the venv: ``python3 dev.py bot4 plugins list``,
``python3 dev.py bench``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
import pythons  # noqa: E402 - tools/pythons.py, found through the line above

VENV = ROOT / ".venv"
STAMP_NAME = ".bot4-setup-stamp"
ENGINE_MODULE = "durable_rules_engine"
# The Python 3.13 fix: the C engine's only use of the removed call, mapped onto
# its replacement (same arguments, same result). setup.py overwrites CFLAGS,
# so the define has to travel in CPPFLAGS.
ENGINE_DEFINE = "-DPyEval_CallObject=PyObject_CallObject"
# Extra passes of `test --all-pythons`: the newest release gets the whole
# suite, the one between it and python3 a smoke test.
EXTRA_RUNS: tuple[tuple[tuple[int, int], str], ...] = (((3, 13), "suite"), ((3, 12), "smoke"))


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def venv_for(version: tuple[int, ...], default: bool) -> Path:
    """``.venv`` for python3; ``.venv-3.13`` etc. for the extra passes."""
    return VENV if default else ROOT / f".venv-{version[0]}.{version[1]}"


def plugin_dirs() -> list[Path]:
    """Every bundled plugin distribution: plugins/<kind>/<name>/pyproject.toml."""
    return sorted(p.parent for p in (ROOT / "plugins").glob("*/*/pyproject.toml"))


def fingerprint(version: tuple[int, ...]) -> str:
    """What a venv was set up from: every pyproject.toml and the interpreter version."""
    digest = hashlib.sha256()
    digest.update(f"python {'.'.join(map(str, version[:3]))}\n".encode())
    for path in [ROOT / "pyproject.toml", *(d / "pyproject.toml" for d in plugin_dirs())]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def engine_requirement() -> str:
    """The durable-rules pin of bot4's pyproject.toml, e.g. ``durable-rules==2.0.28``."""
    import tomllib  # here, not at the top: the top must run on 3.10 to say it is too old

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return str(next(d for d in deps if d.replace("_", "-").lower().startswith("durable-rules")))


def engine_build_env(
    version: tuple[int, ...], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment to build durable-rules in for Python ``version``.

    On 3.13 and later CPPFLAGS gains ENGINE_DEFINE (after whatever the caller
    had). Older Pythons still have PyEval_CallObject, and there the build is
    left exactly as pip does it.
    """
    env = dict(os.environ if environ is None else environ)
    if tuple(version[:2]) >= (3, 13):
        env["CPPFLAGS"] = f"{env.get('CPPFLAGS', '')} {ENGINE_DEFINE}".strip()
    return env


def engine_install_command(python: Path) -> list[str]:
    """Rebuild durable-rules from source for ``python``'s venv.

    --no-cache-dir: pip keeps the wheel it built last time, and one built
    without the define is broken on 3.13 yet would be reused forever.
    """
    return [
        str(python), "-m", "pip", "--disable-pip-version-check", "-q",
        "install", "--force-reinstall", "--no-deps", "--no-cache-dir",
        "--no-binary", "durable-rules", engine_requirement(),
    ]  # fmt: skip


def engine_import_error(python: Path) -> str | None:
    """None when the venv's durable-rules engine imports, else the error's last line."""
    out = subprocess.run(
        [str(python), "-c", f"import {ENGINE_MODULE}"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if out.returncode == 0:
        return None
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {out.returncode}"


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def _venv_matches(venv: Path, version: tuple[int, int, int]) -> bool:
    python = bin_dir(venv) / "python"
    return python.exists() and pythons.interpreter_version(python) == version


def ensure_engine(python: Path, version: tuple[int, ...], venv: Path) -> None:
    """Build durable-rules for this venv unless its engine already imports."""
    if engine_import_error(python) is None:
        return
    env = engine_build_env(version)
    if "CPPFLAGS" in env:
        print(f"+ CPPFLAGS={env['CPPFLAGS']!r}", flush=True)
    _run(engine_install_command(python), env=env)
    error = engine_import_error(python)
    if error is not None:
        sys.exit(
            f"dev.py: durable-rules' C engine does not import in {venv.name} on Python "
            f"{'.'.join(map(str, version[:3]))} after rebuilding it: {error}"
        )


def setup(interpreter: str = sys.executable, venv: Path = VENV) -> Path:
    """Create or refresh ``venv`` with ``interpreter``; return its bin folder."""
    version = pythons.interpreter_version(interpreter)
    if version is None:
        sys.exit(f"dev.py: cannot run {interpreter}")
    if version[:2] < (3, 11):
        sys.exit(f"bot4 needs Python 3.11 or later; {interpreter} is {'.'.join(map(str, version))}")
    bindir = bin_dir(venv)
    python = bindir / "python"
    stamp = venv / STAMP_NAME
    if not _venv_matches(venv, version):
        # New, or made by another interpreter (python3 changed): start clean.
        print(f"creating {venv.relative_to(ROOT)} with Python {'.'.join(map(str, version))} ...",
              flush=True)  # fmt: skip
        _run([interpreter, "-m", "venv", "--clear", str(venv)])
    wanted = fingerprint(version)
    if not (stamp.exists() and stamp.read_text() == wanted):
        stamp.unlink(missing_ok=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        _run([*pip, "install", "--upgrade", "pip"])
        # Before bot4 itself, so that its dependency on durable-rules is already
        # met by a working build and pip never picks a cached one.
        ensure_engine(python, version, venv)
        editables: list[str] = ["-e", f"{ROOT}[test,chart]"]
        for d in plugin_dirs():
            editables += ["-e", str(d)]
        _run([*pip, "install", *editables])
    # Every time, as it is cheap: a venv whose engine broke since is rebuilt.
    ensure_engine(python, version, venv)
    stamp.write_text(wanted)
    return bindir


SMOKE_TICKS = 2 * 3600 * 2  # two hours of the bundled sample's two symbols


def write_smoke_ticks(path: Path) -> Path:
    """The first two hours of the bundled sample: enough for the averages to
    warm up and orders to fill, in a few seconds instead of the whole sample's
    minute or two."""
    with gzip.open(ROOT / "bot4" / "data" / "sample" / "ticks.csv.gz", "rt") as sample:
        lines = [line for _, line in zip(range(SMOKE_TICKS + 1), sample, strict=False)]
    path.write_text("".join(lines))
    return path


def smoke(bindir: Path, env: Mapping[str, str]) -> int:
    """What a new user does first: rules test, a short session, plugins list."""
    with tempfile.TemporaryDirectory(prefix="bot4-smoke-") as tmp:
        ticks = write_smoke_ticks(Path(tmp) / "ticks.csv")
        out = str(Path(tmp) / "out")
        steps = [
            [str(bindir / "bot4"), "rules", "test", "rules"],
            [str(bindir / "bot4"), "run", "--data", str(ticks), "--out", out],
            [str(bindir / "bot4"), "plugins", "list"],
        ]
        for cmd in steps:
            print("+ bot4", " ".join(cmd[1:]), flush=True)
            code = subprocess.call(cmd, cwd=ROOT, env=dict(env))
            if code != 0:
                print(f"smoke step failed with exit code {code}: bot4 {' '.join(cmd[1:])}")
                return code
    return 0


def run_other_pythons(
    rest: list[str],
    ci: bool,
    env: Mapping[str, str],
    finder: Callable[[tuple[int, int]], str | None] = pythons.find,
) -> int:
    """The extra passes on the other supported Pythons; 0 when all ran and passed."""
    current = sys.version_info[:2]
    failures: list[str] = []
    for version, kind in EXTRA_RUNS:
        label = f"{version[0]}.{version[1]}"
        if version == current:
            print(f"== python {label}: python3 is {label}; the run above covered it", flush=True)
            continue
        interpreter = finder(version)
        if interpreter is None:
            where = f"not on PATH as python{label} and not among pyenv's versions"
            if ci:
                print(f"== python {label}: FAILED: no Python {label} ({where}); "
                      f"CI=true needs it", flush=True)  # fmt: skip
                failures.append(label)
            else:
                print(f"== python {label}: skipped: no Python {label} here ({where})", flush=True)
            continue
        print(f"== python {label} ({kind}): {interpreter}", flush=True)
        bindir = setup(str(interpreter), venv_for(version, default=False))
        if kind == "suite":
            # ruff and mypy ran above; their results do not depend on the
            # interpreter (mypy checks python_version 3.11 everywhere).
            cmd = [str(bindir / "python"), str(ROOT / "tools" / "check.py"), "--pytest-only", *rest]
            code = subprocess.call(cmd, cwd=ROOT, env=dict(env))
        else:
            code = smoke(bindir, env)
        if code != 0:
            failures.append(label)
    if failures:
        print(f"failed on Python {', '.join(failures)}", flush=True)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under whatever python3 is
        sys.exit(f"bot4 needs Python 3.11 or later; this is {sys.version.split()[0]}")
    command, rest = argv[0], argv[1:]
    bindir = setup()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if command == "setup":
        return 0
    if command == "run":
        return subprocess.call([str(bindir / "bot4"), "run", *rest], cwd=ROOT, env=env)
    if command == "test":
        ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
        all_pythons = ci or "--all-pythons" in rest
        rest = [a for a in rest if a != "--all-pythons"]
        code = subprocess.call(
            [str(bindir / "python"), str(ROOT / "tools" / "check.py"), *rest], cwd=ROOT, env=env
        )
        if all_pythons:
            code = max(code, run_other_pythons(rest, ci, env))
        return code
    if command == "bench":
        # From the caller's folder: a relative `--vs-nautilus PYTHON` is theirs.
        return subprocess.call(
            [str(bindir / "python"), str(ROOT / "benchmarks" / "run.py"), *rest], env=env
        )
    exe = bindir / command
    if exe.exists():
        return subprocess.call([str(exe), *rest], cwd=ROOT, env=env)
    print(f"unknown command {command!r}; see `python3 dev.py --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
