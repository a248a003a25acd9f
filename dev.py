#!/usr/bin/env python3
"""Set up bot4 in ./.venv and run it: the two commands of the README.

    python3 dev.py run [bot4 run options]   # paper session on the bundled data
    python3 dev.py test [pytest options]    # every test, lint and type check

Needs only Python >= 3.11 and pip. The first call creates ``.venv`` and
installs bot4 with every bundled plugin in editable mode; later calls reinstall
only when a ``pyproject.toml`` changed (a hash of them is kept in the venv).
Other commands pass straight to the venv: ``python3 dev.py bot4 plugins list``,
``python3 dev.py bench``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".bot4-setup-stamp"


def plugin_dirs() -> list[Path]:
    """Every bundled plugin distribution: plugins/<kind>/<name>/pyproject.toml."""
    return sorted(p.parent for p in (ROOT / "plugins").glob("*/*/pyproject.toml"))


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in [ROOT / "pyproject.toml", *(d / "pyproject.toml" for d in plugin_dirs())]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(cmd: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs under whatever python3 is
        sys.exit(f"bot4 needs Python >= 3.11; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    fingerprint = _fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--upgrade", "pip"])
    editables: list[str] = ["-e", f"{ROOT}[test,chart]"]
    for d in plugin_dirs():
        editables += ["-e", str(d)]
    _run([*pip, "install", *editables])
    STAMP.write_text(fingerprint)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    setup()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if command == "setup":
        return 0
    if command == "run":
        return subprocess.call([str(BIN / "bot4"), "run", *rest], cwd=ROOT, env=env)
    if command == "test":
        return subprocess.call(
            [str(PY), str(ROOT / "tools" / "check.py"), *rest], cwd=ROOT, env=env
        )
    if command == "bench":
        # From the caller's folder: a relative `--vs-nautilus PYTHON` is theirs.
        return subprocess.call([str(PY), str(ROOT / "benchmarks" / "run.py"), *rest], env=env)
    exe = BIN / command
    if exe.exists():
        return subprocess.call([str(exe), *rest], cwd=ROOT, env=env)
    print(f"unknown command {command!r}; see `python3 dev.py --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
