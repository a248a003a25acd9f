"""Find bot4 plugins from installed metadata, without importing them.

Every installed distribution with an entry point in the ``bot4`` group is a
plugin. Finding reads metadata only, so a plugin that cannot even be imported
is still listed; loading (:mod:`bot4.plugins.manager`) happens afterwards,
one plugin at a time, each inside its own error boundary.

``BOT4_PLUGINS`` picks what is loaded, so tests never depend on whatever
happens to be installed: unset means every installed plugin, an empty value
(or ``none``) means none, otherwise a comma list of plugin names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

import attrs

ENTRY_POINT_GROUP = "bot4"
SELECT_ENV = "BOT4_PLUGINS"


@attrs.frozen(slots=True)
class PluginSpec:
    """One plugin as its metadata describes it."""

    name: str
    distribution: str
    version: str
    value: str  # "module" or "module:attr", as written in the entry point
    origin: str  # where the distribution is installed (its metadata folder)

    def load(self) -> object:
        return metadata.EntryPoint(self.name, self.value, ENTRY_POINT_GROUP).load()


def selected_names(environ: Mapping[str, str] | None = None) -> frozenset[str] | None:
    """Names chosen by ``BOT4_PLUGINS``; None when every plugin is wanted."""
    env = os.environ if environ is None else environ
    raw = env.get(SELECT_ENV)
    if raw is None:
        return None
    names = {part.strip() for part in raw.split(",") if part.strip()}
    return frozenset() if names == {"none"} else frozenset(names)


def _origin(dist: metadata.Distribution) -> str:
    """Where the plugin came from: the source folder of an editable or local
    install (PEP 610's direct_url.json), else the folder holding its metadata."""
    direct = dist.read_text("direct_url.json")
    if direct:
        try:
            info = json.loads(direct)
        except ValueError:
            info = {}
        url = info.get("url", "") if isinstance(info, dict) else ""
        if isinstance(url, str) and url:
            editable = isinstance(info.get("dir_info"), dict) and info["dir_info"].get("editable")
            where = url.removeprefix("file://")
            return f"{where} (editable)" if editable else where
    # PathDistribution keeps its metadata folder in a private attribute; there
    # is no public accessor, so fall back to locate_file, which every finder has.
    path = getattr(dist, "_path", None)
    return str(path if path is not None else Path(str(dist.locate_file(""))))


def _from_distributions(dists: Iterable[metadata.Distribution]) -> list[PluginSpec]:
    seen: dict[str, PluginSpec] = {}
    for dist in dists:
        name = dist.metadata["Name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            # The same distribution can be visible twice on sys.path (an
            # editable install plus a build folder); the first one wins, as
            # it does for imports.
            seen.setdefault(
                ep.name,
                PluginSpec(
                    name=ep.name,
                    distribution=name,
                    version=dist.version,
                    value=ep.value,
                    origin=_origin(dist),
                ),
            )
    return sorted(seen.values(), key=lambda spec: spec.name)


def find_plugins(environ: Mapping[str, str] | None = None) -> tuple[list[PluginSpec], list[str]]:
    """Installed plugins chosen by ``BOT4_PLUGINS``, sorted by name, and the
    chosen names that are not installed."""
    specs = _from_distributions(metadata.distributions())
    wanted = selected_names(environ)
    if wanted is None:
        return specs, []
    found = [s for s in specs if s.name in wanted]
    missing = sorted(wanted - {s.name for s in found})
    return found, missing
