"""Plugin discovery and loading: real installed distributions, each plugin in
its own error boundary, and a listing that never fails because one plugin did."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot4.plugins import PluginManager
from bot4.plugins.finder import selected_names
from tests.conftest import make_plugin_dist, run_bot4

BUNDLED = {"paper", "sma_cross", "correlation"}

GOOD = """
import bot4
from bot4.contracts import RiskRules

BOT4_API = 1

class Pack(RiskRules):
    name = "demo"
    def fact_names(self):
        return frozenset({"demo.x"})
    def facts(self, ctx):
        return {"demo.x": 1}

@bot4.hookimpl
def register_risk_rules(register):
    register("demo", lambda config: Pack(), description="demo pack")
"""


def _listing(env: dict[str, str | None]) -> dict[str, dict[str, object]]:
    result = run_bot4("plugins", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def _with_site(site: Path) -> dict[str, str | None]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    # Every installed plugin: without the suite's BOT4_PLUGINS (tests/conftest.py).
    return {"PYTHONPATH": path, "BOT4_PLUGINS": None}


def test_bundled_plugins_load() -> None:
    rows = _listing({})
    for name in BUNDLED:
        assert name in rows, f"bundled plugin {name} not installed: {sorted(rows)}"
        assert rows[name]["status"] == "loaded", rows[name]
        assert rows[name]["distribution"] == f"bot4-plugin-{name.replace('_', '-')}"
    assert rows["paper"]["kind"] == "exchange"
    assert rows["sma_cross"]["kind"] == "strategy"
    assert rows["correlation"]["kind"] == "risk rules"
    assert "register_exchanges" in rows["paper"]["hooks"]
    # Where it came from: the source folder of the editable install.
    assert rows["paper"]["origin"].endswith("plugins/exchanges/paper (editable)")


def test_plugin_raising_on_import_is_reported_and_others_load(tmp_path: Path) -> None:
    site = make_plugin_dist(
        tmp_path / "site",
        dist="bot4-plugin-broken",
        module="bot4_broken",
        source="raise RuntimeError('cannot reach the mothership')\n",
        entry_name="broken",
    )
    make_plugin_dist(
        site, dist="bot4-plugin-demo", module="bot4_demo", source=GOOD, entry_name="demo"
    )
    rows = _listing(_with_site(site))
    assert rows["broken"]["status"] == "failed: RuntimeError: cannot reach the mothership"
    assert rows["broken"]["distribution"] == "bot4-plugin-broken"
    assert rows["broken"]["origin"] == str(site / "bot4_plugin_broken-0.1.0.dist-info")
    assert rows["demo"]["status"] == "loaded"
    assert rows["demo"]["kind"] == "risk rules"
    for name in BUNDLED:
        assert rows[name]["status"] == "loaded"
    table = run_bot4("plugins", "list", env=_with_site(site))
    assert table.returncode == 0
    assert "failed: RuntimeError" in table.stdout


def test_misspelt_hook_fails_that_plugin(tmp_path: Path) -> None:
    source = (
        "import bot4\nBOT4_API = 1\n@bot4.hookimpl\ndef register_exchange(register):\n    pass\n"
    )
    site = make_plugin_dist(
        tmp_path, dist="bot4-plugin-typo", module="bot4_typo", source=source, entry_name="typo"
    )
    rows = _listing({**_with_site(site), "BOT4_PLUGINS": "typo,paper"})
    assert rows["typo"]["status"].startswith("failed:")
    assert "register_exchange" in rows["typo"]["status"]
    assert rows["paper"]["status"] == "loaded"
    assert set(rows) == {"typo", "paper"}


def test_api_version_mismatch_is_reported_not_loaded(tmp_path: Path) -> None:
    source = GOOD.replace("BOT4_API = 1", "BOT4_API = 99")
    site = make_plugin_dist(
        tmp_path,
        dist="bot4-plugin-future",
        module="bot4_future",
        source=source,
        entry_name="future",
    )
    rows = _listing({**_with_site(site), "BOT4_PLUGINS": "future"})
    assert "API 99" in rows["future"]["status"]
    assert rows["future"]["status"].startswith("failed:")


def test_hook_that_raises_registers_nothing(tmp_path: Path) -> None:
    source = GOOD.replace(
        'register("demo"',
        'register("half", lambda c: None)\n    raise ValueError("boom")\n    register("demo"',
    )
    site = make_plugin_dist(
        tmp_path, dist="bot4-plugin-half", module="bot4_half", source=source, entry_name="half"
    )
    rows = _listing({**_with_site(site), "BOT4_PLUGINS": "half"})
    assert rows["half"]["status"] == "failed: register_risk_rules raised ValueError: boom"


def test_secrets_never_printed(tmp_path: Path) -> None:
    source = "import os\nraise RuntimeError('login failed with ' + os.environ['ACME_API_SECRET'])\n"
    site = make_plugin_dist(
        tmp_path, dist="bot4-plugin-leaky", module="bot4_leaky", source=source, entry_name="leaky"
    )
    env = {**_with_site(site), "ACME_API_SECRET": "s3cr3t-v4lue-xyz", "BOT4_PLUGINS": "leaky"}
    for args in (("plugins", "list", "--json"), ("plugins", "list")):
        out = run_bot4(*args, env=env)
        assert out.returncode == 0
        assert "s3cr3t-v4lue-xyz" not in out.stdout + out.stderr
        assert "login failed with ***" in out.stdout


def test_selection_env_var() -> None:
    assert selected_names({}) is None
    assert selected_names({"BOT4_PLUGINS": ""}) == frozenset()
    assert selected_names({"BOT4_PLUGINS": "none"}) == frozenset()
    assert selected_names({"BOT4_PLUGINS": " paper, sma_cross ,"}) == {"paper", "sma_cross"}
    manager = PluginManager.load({"BOT4_PLUGINS": "paper,nosuch"})
    by_name = {p.name: p for p in manager.plugins}
    assert by_name["paper"].ok
    assert by_name["nosuch"].status == "failed: not installed (named in BOT4_PLUGINS)"
    assert "sma_cross" not in by_name


def test_name_clash_is_refused_for_the_later_plugin() -> None:
    import types

    import bot4

    def make(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.BOT4_API = 1  # type: ignore[attr-defined]

        @bot4.hookimpl
        def register_strategies(register):  # type: ignore[no-untyped-def]
            register("same", lambda config: None)

        mod.register_strategies = register_strategies  # type: ignore[attr-defined]
        return mod

    manager = PluginManager.load({"BOT4_PLUGINS": ""})
    first = manager.add("first", make("first"))
    second = manager.add("second", make("second"))
    assert first.ok
    assert second.status == "failed: strategy 'same' is already registered by plugin 'first'"
    assert manager.registry.strategy("same").plugin == "first"


def test_unknown_name_lookup_names_known_ones() -> None:
    manager = PluginManager.load({"BOT4_PLUGINS": "paper"})
    with pytest.raises(Exception, match=r"no strategy named 'nope'.*bot4 plugins list"):
        manager.registry.strategy("nope")
