"""Risk-rule packs installed as plugins, for commands that load a policy on
their own (``bot4 rules ...``). The kernel's session does the same through
the plugin manager: every registered pack, built with an empty config."""

from __future__ import annotations

import logging

from bot4.contracts import RiskRules

log = logging.getLogger("bot4.risk")


def installed_packs() -> list[RiskRules]:
    """Every risk-rule pack the installed plugins register (sorted by name).
    A plugin that fails to load is logged and skipped; a rule that needs its
    facts then fails to compile, naming the fact."""
    from bot4.plugins import PluginManager

    manager = PluginManager.load()
    for plugin in manager.failed():
        log.warning("plugin %s not loaded: %s", plugin.name, plugin.status)
    packs: list[RiskRules] = []
    for name in sorted(manager.registry.risk_rules):
        registered = manager.registry.risk_rules[name]
        try:
            packs.append(registered.factory({}))
        except Exception as exc:  # a plugin's factory is third-party code
            log.warning("risk pack %s could not be built: %s", name, exc)
    return packs
