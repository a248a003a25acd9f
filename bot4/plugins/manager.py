"""A typed facade over pluggy: load plugins one by one, collect what they register.

Loading a plugin means: import its entry point, check the bot4 API version it
declares (``BOT4_API``), register it with pluggy, and ``check_pending()`` so a
misspelt hook name fails that plugin loudly instead of being ignored. Then the
registration hooks are called once per plugin, each call inside its own error
boundary, so the plugin that raises is the one reported and the rest load.

Every failure becomes a :class:`LoadedPlugin` with ``status = "failed: ..."``
(one line, secrets redacted); nothing here raises for a broken plugin.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from bot4 import hookspecs
from bot4.contracts import API_VERSION, Exchange, RiskRules, Strategy
from bot4.errors import PluginApiMismatch, PluginError
from bot4.feeds import Feed
from bot4.notify import Notifier
from bot4.plugins.finder import PluginSpec, find_plugins
from bot4.secrets import redact

T = TypeVar("T")
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

# Which registration hook makes a plugin which kind, for the listing.
KIND_OF_HOOK = {
    "register_exchanges": "exchange",
    "register_strategies": "strategy",
    "register_risk_rules": "risk rules",
    "register_notifiers": "notifier",
    "register_feeds": "feed",
    "register_commands": "other",
}


@attrs.frozen(slots=True)
class Registered(Generic[T]):
    """A factory some plugin registered under ``name``."""

    name: str
    factory: Callable[[Mapping[str, Any]], T]
    plugin: str
    description: str = ""


@attrs.frozen(slots=True)
class Command:
    name: str
    configure: Callable[..., None]
    run: Callable[..., int]
    plugin: str
    description: str = ""


@attrs.define
class LoadedPlugin:
    """One plugin's line in ``bot4 plugins list``."""

    name: str
    distribution: str
    version: str
    origin: str
    hooks: list[str] = attrs.field(factory=list)
    status: str = "loaded"

    @property
    def ok(self) -> bool:
        return self.status == "loaded"

    @property
    def kind(self) -> str:
        kinds = sorted({KIND_OF_HOOK[h] for h in self.hooks if h in KIND_OF_HOOK})
        if len(kinds) > 1 and "other" in kinds:
            kinds.remove("other")
        return " + ".join(kinds) if kinds else "other"

    def fail(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        # One line, and no secret a plugin may have put in its message.
        self.status = "failed: " + redact(" ".join(str(text).split()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "kind": self.kind,
            "hooks": sorted(self.hooks),
            "status": self.status,
            "origin": self.origin,
        }


@attrs.define
class Registry:
    """Everything the loaded plugins registered, by name."""

    exchanges: dict[str, Registered[Exchange]] = attrs.field(factory=dict)
    strategies: dict[str, Registered[Strategy]] = attrs.field(factory=dict)
    risk_rules: dict[str, Registered[RiskRules]] = attrs.field(factory=dict)
    notifiers: dict[str, Registered[Notifier | None]] = attrs.field(factory=dict)
    feeds: dict[str, Registered[Feed]] = attrs.field(factory=dict)
    commands: dict[str, Command] = attrs.field(factory=dict)

    def exchange(self, name: str) -> Registered[Exchange]:
        return _lookup(self.exchanges, name, "exchange")

    def strategy(self, name: str) -> Registered[Strategy]:
        return _lookup(self.strategies, name, "strategy")

    def risk_rule_pack(self, name: str) -> Registered[RiskRules]:
        return _lookup(self.risk_rules, name, "risk-rule pack")

    def feed(self, name: str) -> Registered[Feed]:
        return _lookup(self.feeds, name, "feed")


def _lookup(table: Mapping[str, Registered[T]], name: str, what: str) -> Registered[T]:
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table)) or "none"
        raise PluginError(
            f"no {what} named {name!r} is registered (known: {known}); "
            f"is its plugin installed and loaded? see `bot4 plugins list`"
        ) from None


class PluginManager:
    """Loads bot4 plugins and holds what they registered."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager("bot4")
        self._pm.add_hookspecs(hookspecs)
        self.plugins: list[LoadedPlugin] = []
        self.registry = Registry()

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        extra: Iterable[tuple[str, object]] = (),
    ) -> PluginManager:
        """Find installed plugins (``BOT4_PLUGINS`` chooses) and load each one;
        ``extra`` adds in-process plugins as (name, module-or-object) pairs."""
        manager = cls()
        specs, missing = find_plugins(environ)
        for spec in specs:
            manager._load_spec(spec)
        for name in missing:
            entry = LoadedPlugin(name, distribution="", version="", origin="")
            entry.fail("not installed (named in BOT4_PLUGINS)")
            manager.plugins.append(entry)
        for name, obj in extra:
            manager.add(name, obj)
        manager.plugins.sort(key=lambda p: p.name)
        return manager

    def _load_spec(self, spec: PluginSpec) -> None:
        entry = LoadedPlugin(spec.name, spec.distribution, spec.version, spec.origin)
        self.plugins.append(entry)
        try:
            obj = spec.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin's import may raise anything, even SystemExit
            entry.fail(exc)
            return
        self._register(entry, obj)

    def add(
        self, name: str, obj: object, *, distribution: str = "", version: str = ""
    ) -> LoadedPlugin:
        """Register an in-process plugin (tests, embedding applications)."""
        entry = LoadedPlugin(name, distribution or "(in-process)", version, origin="(in-process)")
        self.plugins.append(entry)
        self._register(entry, obj)
        return entry

    def _register(self, entry: LoadedPlugin, obj: object) -> None:
        try:
            _check_api(entry.name, obj)
            self._pm.register(obj, name=entry.name)
        except Exception as exc:  # pluggy validation or our own API check
            entry.fail(exc)
            return
        try:
            # A hookimpl whose name matches no hookspec (a typo) fails here.
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(obj)
            entry.fail(exc)
            return
        entry.hooks = sorted(
            caller.name
            for caller in self._pm.get_hookcallers(obj) or ()
            if caller.name in KIND_OF_HOOK
        )
        self._call_registration_hooks(entry, obj)

    def _call_registration_hooks(self, entry: LoadedPlugin, obj: object) -> None:
        # Each plugin's hookimpls are called directly, one plugin at a time, so
        # an error is attributed to the plugin that raised it. What one plugin
        # registered is kept only if all its hooks succeed: never half a plugin.
        staged = Registry()
        errors: list[str] = []
        for caller in self._pm.get_hookcallers(obj) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is not obj:
                    continue
                register = self._registrar(caller.name, entry.name, staged, errors)
                try:
                    impl.function(register=register)
                except Exception as exc:  # a plugin hook may raise anything
                    errors.append(f"{caller.name} raised {type(exc).__name__}: {exc}")
        if errors:
            self._pm.unregister(obj)
            entry.fail("; ".join(errors))
            return
        self.registry.exchanges.update(staged.exchanges)
        self.registry.strategies.update(staged.strategies)
        self.registry.risk_rules.update(staged.risk_rules)
        self.registry.notifiers.update(staged.notifiers)
        self.registry.feeds.update(staged.feeds)
        self.registry.commands.update(staged.commands)

    def _registrar(
        self, hook: str, plugin: str, staged: Registry, errors: list[str]
    ) -> Callable[..., None]:
        tables: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
            "register_exchanges": (self.registry.exchanges, staged.exchanges, "exchange"),
            "register_strategies": (self.registry.strategies, staged.strategies, "strategy"),
            "register_risk_rules": (self.registry.risk_rules, staged.risk_rules, "risk-rule pack"),
            "register_notifiers": (self.registry.notifiers, staged.notifiers, "notifier"),
            "register_feeds": (self.registry.feeds, staged.feeds, "feed"),
            "register_commands": (self.registry.commands, staged.commands, "command"),
        }
        final, stage, what = tables[hook]

        def register(name: str, *args: Any, description: str = "") -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                errors.append(f"{what} name {name!r} is not a valid name")
                return
            owner = final.get(name) or stage.get(name)
            if owner is not None:
                errors.append(f"{what} {name!r} is already registered by plugin {owner.plugin!r}")
                return
            if hook == "register_commands":
                if len(args) != 2 or not all(callable(a) for a in args):
                    errors.append(f"command {name!r}: register(name, configure, run) expected")
                    return
                stage[name] = Command(name, args[0], args[1], plugin, description)
                return
            if len(args) != 1 or not callable(args[0]):
                errors.append(
                    f"{what} {name!r}: register(name, factory) expects one callable factory"
                )
                return
            stage[name] = Registered(name, args[0], plugin, description)

        return register

    def loaded(self) -> list[LoadedPlugin]:
        return [p for p in self.plugins if p.ok]

    def failed(self) -> list[LoadedPlugin]:
        return [p for p in self.plugins if not p.ok]


def _check_api(name: str, obj: object) -> None:
    declared = getattr(obj, "BOT4_API", None)
    if declared is None:
        where = obj.__name__ if isinstance(obj, types.ModuleType) else type(obj).__name__
        raise PluginApiMismatch(
            f"{where} does not declare BOT4_API (this bot4 speaks API {API_VERSION})"
        )
    if declared != API_VERSION:
        raise PluginApiMismatch(
            f"plugin {name!r} targets bot4 API {declared!r}; this bot4 speaks API {API_VERSION}"
        )
