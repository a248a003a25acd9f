"""Build a session from configuration and run it: the body of ``bot4 run``.

A session is: one exchange (a registered plugin; ``paper`` by default, fed
from a data file), one or more strategies, the risk-rule packs (every loaded
one, or those ``packs:`` / ``--packs`` names; listed at start), the rule
files, a portfolio tracker, the event bus with a recorder (for
``bot4 replay``) and a report. With no configuration at all it is a paper
session on the bundled sample data with the default rules and sma_cross.

The recording's first event, ``session.start``, carries everything needed to
run the session again: the configuration and the text of every rule file.

This module holds :func:`run_session` and :class:`SessionResult`, and
re-exports the names of the modules a session is built from, so
``from bot4.session import ...`` stays the one import for all of them:

* :mod:`bot4.session_config`: ``SessionConfig``, ``StrategyConfig``, the
  defaults, ``load_config`` and ``data_path``;
* :mod:`bot4.session_recording`: the recording header's rule texts, hashes
  and plugins, and ``recording_path``;
* :mod:`bot4.session_services`: ``SessionContext``, ``SessionService``,
  ``default_services`` and the choice of risk packs (``session_packs``);
* :mod:`bot4.session_progress`: ``ProgressHook``, the pacer,
  ``progress_bar`` and ``count_rows``.

``bot4 run`` (:mod:`bot4.cli.run`) looks ``run_session`` up here when it is
called, so wrapping ``bot4.session.run_session`` (benchmarks/bench_session.py,
tests/test_run.py) wraps the session ``bot4 run`` runs: it stays defined here.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from decimal import Decimal, InvalidOperation
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bot4 import codec
from bot4.bus import open_bus
from bot4.contracts import Exchange, RiskRules, Strategy
from bot4.errors import Bot4Error, ConfigError
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.kernel_types import KernelStats
from bot4.model import MarketData
from bot4.plugins import PluginManager
from bot4.portfolio import PortfolioTracker
from bot4.recording import SessionRecorder
from bot4.session_config import (
    DEFAULT_EXCHANGE,
    DEFAULT_STRATEGY,
    DEFAULT_STRATEGY_PARAMS,
    SessionConfig,
    StrategyConfig,
    data_path,
    load_config,
)
from bot4.session_progress import ProgressHook, count_rows, progress_bar, tick_pacer
from bot4.session_recording import (
    pack_rules_sha256,
    plugins_used,
    policy_sha256,
    recording_path,
    rule_sources,
)
from bot4.session_services import (
    SessionContext,
    SessionService,
    default_packs,
    default_services,
    session_packs,
)

if TYPE_CHECKING:
    from bot4.journal.riskstate import RunHistory
    from bot4.metrics import Metrics

__all__ = [
    "DEFAULT_EXCHANGE",
    "DEFAULT_STRATEGY",
    "DEFAULT_STRATEGY_PARAMS",
    "ProgressHook",
    "SessionConfig",
    "SessionContext",
    "SessionResult",
    "SessionService",
    "StrategyConfig",
    "count_rows",
    "data_path",
    "default_packs",
    "default_services",
    "load_config",
    "pack_rules_sha256",
    "plugins_used",
    "policy_sha256",
    "progress_bar",
    "recording_path",
    "rule_sources",
    "run_session",
    "session_packs",
]


@attrs.define
class SessionResult:
    stats: KernelStats
    report: Any  # bot4.report.SessionReport
    recording: Path | None
    wall_seconds: float
    rules_digest: str
    # The earlier runs when this one resumed a session, else None.
    history: RunHistory | None = None
    # Why the run ended before its data did: a signal's name, or the message
    # of the input error (``error``) that ended it; None when the data ran out.
    stopped: str | None = None
    error: Bot4Error | None = None
    # The shadow policy's counts (bot4.risk.shadow), when one was asked.
    shadow: dict[str, Any] | None = None


async def run_session(
    config: SessionConfig,
    *,
    manager: PluginManager | None = None,
    feed: Iterator[MarketData] | AsyncIterator[MarketData] | None = None,
    rule_paths: Sequence[Path] | None = None,
    progress: ProgressHook | None = None,
    services: Sequence[SessionService] | None = None,
    metrics: Metrics | None = None,
    announce: Callable[[str], None] | None = None,
    exchange: Exchange | None = None,
    pack_names: Sequence[str] | None = None,
    reload_every: float | None = None,
    on_kernel: Callable[[Kernel], None] | None = None,
) -> SessionResult:
    """Run one session to the end of its data and return what happened.
    With ``metrics``, the session also feeds those Prometheus metrics (a
    service added after the others; serving them is the caller's business).

    ``bot4 replay`` passes its own ``exchange`` (none is built from the
    config), the risk packs to load by name (``pack_names``; default: every
    registered pack plus bot4's own chosen by environment) and
    ``reload_every``. ``on_kernel`` is called with the kernel inside trio
    before it runs (``bot4 run`` connects its signal handlers there).
    ``announce`` is given one line per plugin that failed to load, then, once
    the services are up, the risk packs in use and the policy's rule count
    and digest, and then which protection mode guards the positions
    (:mod:`bot4.protection`); ``bot4 run`` prints them."""
    from bot4.report import SessionReport
    from bot4.risk import RiskPolicy, default_rules_path

    manager = manager or PluginManager.load()
    # The data file this session opens, closed however the session ends (a
    # stop mid-file would leave it to the garbage collector, which may
    # finalize the file before the reader holding it).
    opened: Iterator[Any] | None = None
    if exchange is None:
        if feed is None:
            from bot4.data import iter_batches

            opened = iter_batches(data_path(config))
            feed = chain.from_iterable(map(_batch_ticks, opened))
        with _at(config.origin.get("exchange")):
            exchange = manager.registry.exchange(config.exchange).factory(
                {**config.exchange_params, "feed": feed}
            )
    try:
        strategies: list[Strategy] = []
        for i, s in enumerate(config.strategies):
            with _at(config.origin.get(f"strategies[{i}]")):
                strategies.append(manager.registry.strategy(s.name).factory(s.params))
        packs: list[RiskRules]
        if pack_names is None:
            packs = session_packs(manager, config)
        else:
            packs = [manager.registry.risk_rule_pack(name).factory({}) for name in pack_names]
        # A plugin that failed to load is said at once (it may explain an error
        # that follows); what the session runs with is said once it starts, so
        # an error before that is the only line a person sees.
        starting: list[str] = []
        if announce is not None:
            for plugin in manager.failed():
                announce(f"plugin {plugin.name} not loaded: {plugin.status}")
        starting.append(f"risk packs in use: {', '.join(p.name for p in packs) or 'none'}")
        paths = (
            list(rule_paths)
            if rule_paths is not None
            else ([Path(p) for p in config.rules] if config.rules else [default_rules_path()])
        )
        policy = RiskPolicy.load(paths, packs)  # first: a missing file is a RuleFileError
        shadow = None
        if config.shadow_rules:
            from bot4.risk.shadow import ShadowPolicy

            # The same pack objects: the shadow reads the facts the live policy reads.
            shadow = ShadowPolicy(RiskPolicy.load([Path(p) for p in config.shadow_rules], packs))
            starting.append(
                f"shadow policy: {shadow.policy.summary} in {len(shadow.policy.files)} files "
                "(compared, never deciding)"
            )
        sources = rule_sources(paths)
        # The figures a hot reload reports, to compare with.
        starting.append(f"policy: {policy.summary} in {len(policy.files)} files")
        raw_balance = config.exchange_params.get("balance", "10000")
        try:
            balance = Decimal(str(raw_balance))
        except InvalidOperation:
            balance = Decimal("NaN")
        if not balance.is_finite() or balance <= 0 or isinstance(raw_balance, bool):
            where = config.origin.get("exchange", "exchange")
            raise ConfigError(f"{where}: balance: {raw_balance!r} is not a positive number")
        tracker = PortfolioTracker(balance)
        symbols = sorted({sym for s in config.strategies for sym in s.params.get("symbols", ())})
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the session starts
        recording: Path | None = None
        digest = hashlib.sha256(repr(sorted(sources.items())).encode()).hexdigest()[:16]

        started = time.perf_counter()
        async with open_bus() as bus:
            report = SessionReport(tracker)
            report.attach(bus)
            kernel = Kernel(
                exchange=exchange,
                strategies=strategies,
                gate=RiskGate(policy),
                policy=policy,
                tracker=tracker,
                bus=bus,
                packs=packs,
                session_id=config.session_id,
                on_tick=tick_pacer(config.speed, progress),
            )
            kernel.announce = announce
            kernel.shadow = shadow
            if reload_every is not None:
                kernel.reload_every = reload_every
            header = {
                "config": config.as_dict(),
                "rules": sources,
                "policy_sha256": policy_sha256(sources),
                "plugins": plugins_used(manager, config, packs),
                "plugins_loaded": [
                    {"name": p.name, "version": p.version} for p in manager.plugins if p.ok
                ],
                "capabilities": sorted(c.value for c in exchange.capabilities),
                "balance": str(balance),
            }

            async def record_reload(outcome: object) -> None:
                # The text as the files hold it right after the reload compiled it.
                texts = rule_sources(paths)
                await bus.publish(
                    "policy.reload",
                    {"sha256": policy_sha256(texts), "rules": texts},
                    ts=kernel.now_ns,
                )

            kernel.on_reload = record_reload
            if on_kernel is not None:
                on_kernel(kernel)
            ctx = SessionContext(
                config, manager, exchange, policy, tracker, kernel.gate, bus, kernel, out, metrics
            )
            chosen = default_services(config) if services is None else services
            if metrics is not None:
                chosen = [*chosen, metrics.service]
            async with trio.open_nursery() as nursery:
                for service in chosen:
                    await service(ctx, nursery)
                # The book as the services left it (a restart restores it):
                # from here the report follows it event by event.
                report.follow()
                if announce is not None:
                    for line in starting:
                        announce(line)
                if config.record:
                    earlier = ctx.history.runs if ctx.history is not None else 0
                    recording = recording_path(out, earlier)
                if recording is not None:
                    async with SessionRecorder(bus, recording, encode=codec.encode):
                        await bus.publish("session.start", header, ts=0)
                        stats = await kernel.run(symbols)
                        await bus.drain()
                else:
                    stats = await kernel.run(symbols)
                await bus.drain()
                nursery.cancel_scope.cancel()
        return SessionResult(
            stats,
            report,
            recording,
            time.perf_counter() - started,
            digest,
            stopped=kernel.stop_reason,
            error=kernel.stop_error,
            history=ctx.history,
            shadow=_shadow_summary(shadow),
        )
    finally:
        close = getattr(opened, "close", None)  # a generator; its file closes with it
        if close is not None:
            close()


_batch_ticks = operator.attrgetter("ticks")


def _shadow_summary(shadow: Any) -> dict[str, Any] | None:
    if shadow is None:
        return None
    shadow.close()
    return {
        **shadow.stats.as_dict(),
        "rules": list(shadow.policy.files),
        "sha256": shadow.digest,
        "errors": list(shadow.errors),
    }


@contextlib.contextmanager
def _at(where: str | None) -> Iterator[None]:
    """A plugin's ConfigError about settings written at ``where`` (file:line)
    names that place first."""
    try:
        yield
    except ConfigError as exc:
        if where is None or str(exc).startswith(where.split(":")[0]):
            raise
        raise ConfigError(f"{where}: {exc}") from None
