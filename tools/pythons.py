"""Find the Python interpreters bot4 supports, by version, on this machine.

``dev.py`` uses it to run the extra CI passes (the whole suite on 3.13, a
smoke test on 3.12) next to the default ``python3``. Standard library only:
it runs before any venv exists.

An interpreter is looked for by name on PATH (``python3.13``), then among
pyenv's installed versions (``$(pyenv root)/versions/3.13.*``, newest patch
first). A candidate counts only if it starts and reports the version asked
for: a pyenv shim for a version that is not selected is on PATH but fails,
and a ``python3`` may be anything.

    python3 tools/pythons.py          # which supported interpreters are here
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

SUPPORTED = ((3, 11), (3, 12), (3, 13))

_VERSION_SCRIPT = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def interpreter_version(
    python: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[int, int, int] | None:
    """The version ``python`` reports, or None when it does not start."""
    try:
        out = subprocess.run(
            [os.fspath(python), "-c", _VERSION_SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            env=None if env is None else dict(env),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        major, minor, micro = (int(part) for part in out.stdout.strip().split("."))
    except ValueError:
        return None
    return major, minor, micro


def _pyenv_root(env: Mapping[str, str]) -> Path | None:
    pyenv = shutil.which("pyenv", path=env.get("PATH", ""))
    if pyenv is not None:
        try:
            out = subprocess.run(
                [pyenv, "root"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env=dict(env),
            )
        except (OSError, subprocess.TimeoutExpired):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    root = env.get("PYENV_ROOT")
    return Path(root) if root else None


def _patch_key(folder: Path) -> tuple[int, ...]:
    parts = folder.name.split(".")
    return tuple(int(p) if p.isdigit() else -1 for p in parts)


def candidates(version: tuple[int, int], env: Mapping[str, str]) -> Iterator[str]:
    """Paths that may be Python ``version``, most likely first."""
    name = f"python{version[0]}.{version[1]}"
    on_path = shutil.which(name, path=env.get("PATH", ""))
    if on_path is not None:
        yield on_path
    root = _pyenv_root(env)
    if root is None:
        return
    prefix = f"{version[0]}.{version[1]}."
    # Only plain CPython releases (3.13.0, not 3.13.0t or 3.13-dev).
    folders = [d for d in (root / "versions").glob(f"{prefix}*") if d.name[len(prefix) :].isdigit()]
    for folder in sorted(folders, key=_patch_key, reverse=True):
        exe = folder / "bin" / name
        if exe.exists():
            yield str(exe)


def find(version: tuple[int, int], env: Mapping[str, str] | None = None) -> str | None:
    """An interpreter of ``version`` (major, minor) on this machine, or None."""
    environ = os.environ if env is None else env
    for exe in candidates(version, environ):
        found = interpreter_version(exe, environ)
        if found is not None and found[:2] == version:
            return exe
    return None


def main() -> int:
    for version in SUPPORTED:
        exe = find(version)
        label = f"{version[0]}.{version[1]}"
        missing = f"not found (not on PATH as python{label}, not among pyenv's versions)"
        print(f"{label}: {exe or missing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
