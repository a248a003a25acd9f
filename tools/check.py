"""Everything CI checks, in one command: lint, types, then every test.

Run through ``python3 dev.py test`` (which sets up the venv first). Extra
arguments go to pytest, except ``--pytest-only``, which skips ruff and mypy.
pytest runs last so its summary line closes the output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# What ruff checks and formats (the same set for both).
LINTED = ("bot4", "tests", "benchmarks", "tools", "plugins", "dev.py")


def main(args: list[str]) -> int:
    # --pytest-only: dev.py's extra pass on another Python, after ruff and
    # mypy already ran on python3.
    pytest_only = "--pytest-only" in args
    pytest_args = [a for a in args if a != "--pytest-only"]
    py = sys.executable
    plugin_src = sorted(str(p) for p in ROOT.glob("plugins/*/*/src"))
    plugin_tests = sorted(str(p) for p in ROOT.glob("plugins/*/*/tests"))
    steps = [
        ("ruff", [py, "-m", "ruff", "check", *LINTED]),
        ("ruff format", [py, "-m", "ruff", "format", "--check", *LINTED]),
        ("mypy", [py, "-m", "mypy", "bot4", *plugin_src]),
    ]
    failed = []
    for name, cmd in [] if pytest_only else steps:
        print(f"== {name}", flush=True)
        if subprocess.call(cmd, cwd=ROOT) != 0:
            failed.append(name)
    print("== pytest", flush=True)
    code = subprocess.call([py, "-m", "pytest", "tests", *plugin_tests, *pytest_args], cwd=ROOT)
    if failed:
        print(f"failed before pytest: {', '.join(failed)}", flush=True)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
