"""Risk-rule packs: which ones a policy uses, and building them.

A pack adds facts and rule files to every policy it joins, so the choice is
explicit wherever a policy is loaded: ``--packs NAME,...`` / ``--no-packs`` on
``bot4 run`` and ``bot4 rules ...``, ``packs:`` in a session config. With no
choice every installed pack is used (and the session lists them at start); a
name that is not installed is an error naming it, never ignored.

``bot4 rules ...`` commands load packs here; the kernel's session does the
same through its own plugin manager (:func:`bot4.session.run_session`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from bot4.contracts import RiskRules
from bot4.errors import ConfigError

log = logging.getLogger("bot4.risk")

NONE_WORDS = frozenset({"", "none"})


def parse_names(text: str) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``; ``""`` or ``"none"`` -> ``()``."""
    if text.strip().lower() in NONE_WORDS:
        return ()
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def choose(available: Iterable[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    """The pack names to use: all of ``available`` when ``wanted`` is None,
    else ``wanted`` (in its order), each of which must be available."""
    names = sorted(set(available))
    if wanted is None:
        return names
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ConfigError(
            f"{where}: no risk pack named {', '.join(repr(n) for n in missing)} is installed "
            f"(installed: {', '.join(names) or 'none'}; see `bot4 plugins list`)"
        )
    return list(dict.fromkeys(wanted))


def pick(
    built: Mapping[str, RiskRules], wanted: Sequence[str] | None, where: str
) -> list[RiskRules]:
    """:func:`choose` over packs already built, by name."""
    return [built[name] for name in choose(built, wanted, where)]


def installed_packs(wanted: Sequence[str] | None = None, where: str = "--packs") -> list[RiskRules]:
    """The risk-rule packs the installed plugins register, each built with an
    empty config: all of them (sorted by name) when ``wanted`` is None, else
    those named. A plugin that fails to load is logged (one line each); a
    rule that needs its facts then fails to compile, naming the fact. A named
    pack that is not registered raises ConfigError."""
    from bot4.plugins import PluginManager

    manager = PluginManager.load()
    for plugin in manager.failed():
        log.warning("plugin %s not loaded: %s", plugin.name, plugin.status)
    registry = manager.registry.risk_rules
    packs: list[RiskRules] = []
    for name in choose(registry, wanted, where):
        try:
            packs.append(registry[name].factory({}))
        except Exception as exc:  # a plugin's factory is third-party code
            if wanted is not None:  # asked for by name: it must be there
                raise ConfigError(
                    f"{where}: risk pack {name!r} could not be built: {exc}"
                ) from None
            log.warning("risk pack %s could not be built: %s", name, exc)
    return packs
