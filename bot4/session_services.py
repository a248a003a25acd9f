"""Session services and risk packs: the optional parts a session is built with.

This module holds :class:`SessionContext` (every part of the running
session, as a service sees it), :data:`SessionService` (the shape of a
service), :func:`default_services` (the journal, shared risk state and
notifiers, chosen by configuration and environment), and the choice of the
risk-rule packs a session loads (:func:`session_packs`, :func:`default_packs`).

:func:`bot4.session.run_session` awaits each service once before the kernel
starts. The optional parts of bot4 that provide them
(:mod:`bot4.journal.service`, :mod:`bot4.shared.service`, :mod:`bot4.notify`)
are imported inside :func:`default_services` and :func:`default_packs`, when a
session asks for them, as they were in :mod:`bot4.session`:
:mod:`bot4.shared.service` imports :mod:`bot4.session` at its top, so
importing it here at the top would be a cycle.
:mod:`bot4.session` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bot4.bus import Bus
from bot4.contracts import Exchange, RiskRules
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.plugins import PluginManager
from bot4.portfolio import PortfolioTracker
from bot4.session_config import SessionConfig

if TYPE_CHECKING:
    from bot4.journal.riskstate import RunHistory
    from bot4.metrics import Metrics


@attrs.define
class SessionContext:
    """What a session service sees: every part of the running session."""

    config: SessionConfig
    manager: PluginManager
    exchange: Exchange
    policy: Any  # bot4.risk.RiskPolicy
    tracker: PortfolioTracker
    gate: RiskGate
    bus: Bus
    kernel: Kernel
    out: Path
    # The session's metrics when it exports them: the journal reports its
    # write latency there (Metrics.observe_journal_write).
    metrics: Metrics | None = None
    # The earlier runs of this session, set by the journal service (runs 0
    # when this run starts a new one); None without a journal.
    history: RunHistory | None = None


# A session service (journal, shared risk state, metrics, ...) is awaited once
# before the kernel starts, in list order: it may restore state, add gate
# checks, set ``kernel.journal``, subscribe to the bus and start background
# tasks in the nursery, which is cancelled when the kernel's run is over.
SessionService = Callable[[SessionContext, trio.Nursery], Awaitable[None]]


def default_services(config: SessionConfig) -> list[SessionService]:
    """The services a session runs, chosen by configuration and environment
    (BOT4_DATABASE_URL, BOT4_REDIS_URL, ...). Each optional part of bot4 adds
    itself here."""
    services: list[SessionService] = []
    from bot4.journal.service import journal_service  # <out>/journal.sqlite or PostgreSQL

    services.extend(journal_service(config))
    from bot4.shared.service import shared_services  # BOT4_REDIS_URL: shared risk state

    services.extend(shared_services(config))
    from bot4.notify import notify_services  # notifier plugins (bot4.notify)

    services.extend(notify_services(config))
    return services


def default_packs(config: SessionConfig) -> list[RiskRules]:
    """Risk-fact packs bot4 itself provides, chosen by environment: with
    BOT4_REDIS_URL, ``shared`` (the shared budget's figures as facts)."""
    from bot4.shared.service import shared_packs

    return shared_packs()


def session_packs(manager: PluginManager, config: SessionConfig) -> list[RiskRules]:
    """The risk packs a session uses: the registered ones and bot4's own
    (:func:`default_packs`), all of them or those ``config.packs`` names (an
    unknown name is a ConfigError). Only the chosen ones are built."""
    from bot4.risk.packs import choose

    registry = manager.registry.risk_rules
    own = {p.name: p for p in default_packs(config)}
    names = choose([*registry, *own], config.packs, config.packs_where)
    return [own[name] if name in own else registry[name].factory({}) for name in names]
