"""Plugin discovery (:mod:`.finder`) and loading (:mod:`.manager`)."""

from bot4.plugins.finder import ENTRY_POINT_GROUP, SELECT_ENV, PluginSpec, find_plugins
from bot4.plugins.manager import LoadedPlugin, PluginManager, Registered, Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "SELECT_ENV",
    "LoadedPlugin",
    "PluginManager",
    "PluginSpec",
    "Registered",
    "Registry",
    "find_plugins",
]
