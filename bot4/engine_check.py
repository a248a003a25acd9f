"""Whether durable-rules' C engine loads on this Python and, if not, the fix.

durable-rules ships only a source distribution, so pip builds its C engine
(``durable_rules_engine``) on the user's machine. That engine calls
``PyEval_CallObject``, which Python 3.13 removed: built plainly on 3.13 it
installs without complaint and then fails at import with ``undefined symbol:
PyEval_CallObject``. Defining the old name as its replacement in CPPFLAGS
(durable-rules' setup.py overwrites CFLAGS) gives a working engine, and the
rebuild must bypass pip's cache, which holds the broken wheel.

The CLI asks first, so that a user gets one line naming the problem and the
command that fixes it instead of a traceback from deep inside bot4.risk.
"""

from __future__ import annotations

import importlib
import shlex
import sys
from importlib import metadata

ENGINE_MODULE = "durable_rules_engine"
REMOVED_CALL = "PyEval_CallObject"
DEFINE = f"CPPFLAGS=-D{REMOVED_CALL}=PyObject_CallObject"


def engine_requirement() -> str:
    """bot4's pin of durable-rules (``durable-rules==2.0.28``), as installed."""
    try:
        requires = metadata.requires("bot4") or []
    except metadata.PackageNotFoundError:
        requires = []
    for req in requires:
        if req.replace("_", "-").lower().startswith("durable-rules"):
            return req.split(";")[0].replace(" ", "")
    return "durable-rules"


def fix_command(with_define: bool) -> str:
    """The shell command that rebuilds the engine for this interpreter."""
    pip = [
        sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-cache-dir",
        "--no-binary", "durable-rules", engine_requirement(),
    ]  # fmt: skip
    command = " ".join(shlex.quote(part) for part in pip)
    return f"{DEFINE} {command}" if with_define else command


def describe(error: ImportError) -> str:
    """One line: what failed to load, on which Python, and how to fix it."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    text = str(error)
    if f"undefined symbol: {REMOVED_CALL}" in text:
        return (
            f"bot4: durable-rules' C engine does not load on Python {python} "
            f"(undefined symbol {REMOVED_CALL}); rebuild it: {fix_command(with_define=True)}"
        )
    detail = text.splitlines()[0] if text else type(error).__name__
    return (
        f"bot4: durable-rules' C engine does not load on Python {python} ({detail}); "
        f"reinstall it: {fix_command(with_define=sys.version_info >= (3, 13))}"
    )


def engine_load_problem() -> str | None:
    """None when the engine imports; else the line to show the user."""
    try:
        importlib.import_module(ENGINE_MODULE)
    except ImportError as error:
        return describe(error)
    return None
