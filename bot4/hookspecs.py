"""The plugin contract: registration hooks a ``bot4`` plugin may implement.

Each hook hands the plugin a ``register`` callback instead of collecting
return values, so what gets registered never depends on the order pluggy
calls plugins in (the kernel sorts and checks for clashes itself). Hooks are
synchronous and cheap: they only register factories. The objects those
factories build (:mod:`bot4.contracts`) carry the async interface the kernel
awaits; pluggy itself has no async support.

A plugin module also declares the API version it targets::

    BOT4_API = 1

    @bot4.hookimpl
    def register_exchanges(register):
        register("paper", PaperExchange.from_config, description="Simulated venue")
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import pluggy

from bot4.contracts import Exchange, RiskRules, Strategy
from bot4.feeds import Feed
from bot4.notify import Notifier

hookspec = pluggy.HookspecMarker("bot4")
hookimpl = pluggy.HookimplMarker("bot4")

Config = Mapping[str, Any]


class RegisterExchange(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Config], Exchange], *, description: str = ""
    ) -> None: ...


class RegisterStrategy(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Config], Strategy], *, description: str = ""
    ) -> None: ...


class RegisterRiskRules(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Config], RiskRules], *, description: str = ""
    ) -> None: ...


class RegisterNotifier(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Config], Notifier | None], *, description: str = ""
    ) -> None: ...


class RegisterFeed(Protocol):
    def __call__(
        self, name: str, factory: Callable[[Config], Feed], *, description: str = ""
    ) -> None: ...


class RegisterCommand(Protocol):
    def __call__(
        self,
        name: str,
        configure: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
        *,
        description: str = "",
    ) -> None: ...


@hookspec
def register_exchanges(register: RegisterExchange) -> None:
    """Register exchange factories: ``register(name, factory)``."""


@hookspec
def register_strategies(register: RegisterStrategy) -> None:
    """Register strategy factories: ``register(name, factory)``."""


@hookspec
def register_risk_rules(register: RegisterRiskRules) -> None:
    """Register risk-rule packs (facts and extra rule files)."""


@hookspec
def register_notifiers(register: RegisterNotifier) -> None:
    """Register notifiers: ``register(name, factory)``. The factory reads
    its configuration (environment, secrets files) and returns a
    :class:`bot4.notify.Notifier`, or None when it is not configured; bot4
    feeds every configured one (:mod:`bot4.notify`)."""


@hookspec
def register_feeds(register: RegisterFeed) -> None:
    """Register market-data feeds: ``register(name, factory)``. The factory
    gets the feed's configuration (:class:`bot4.feeds.FeedConfig` as a
    mapping: ``source``, ``symbols``, ``interval``, its own options) and
    returns a :class:`bot4.feeds.Feed`; ``bot4 run --feed NAME:SOURCE``
    trades on it (the paper engine fills the orders)."""


@hookspec
def register_commands(register: RegisterCommand) -> None:
    """Register ``bot4 <name>`` sub-commands."""
