"""Loading the plugin does not import ccxt: bot4 loads every installed
plugin, and a session on another venue should not pay ccxt's import (about
half a second). The client is imported by the factory, or by reading one of
the names the package exports."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import bot4_ccxt
from bot4.plugins.manager import PluginManager
manager = PluginManager.load()  # every installed plugin, ccxt's registrations too
assert manager.registry.exchange("ccxt") is not None
assert "ccxt" not in sys.modules, "loading the plugin imported ccxt"
{after}
"""


def _run(after: str) -> None:
    code = PROBE.format(after=after)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_loading_the_plugin_does_not_import_ccxt() -> None:
    _run("")


def test_the_exported_names_still_import_the_client() -> None:
    _run(
        "from bot4_ccxt import CcxtExchange, CONFIG_KEYS, map_error\n"
        "assert 'ccxt' in sys.modules and CcxtExchange.__name__ == 'CcxtExchange'\n"
        "try:\n"
        "    bot4_ccxt.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
