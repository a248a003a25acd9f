"""Build a session from configuration and run it: the body of ``bot4 run``.

A session is: one exchange (a registered plugin; ``paper`` by default, fed
from a data file), one or more strategies, the risk-rule packs (every loaded
one, or those ``packs:`` / ``--packs`` names; listed at start), the rule
files, a portfolio tracker, the event bus with a recorder (for
``bot4 replay``) and a report. With no configuration at all it is a paper
session on the bundled sample data with the default rules and sma_cross.

The recording's first event, ``session.start``, carries everything needed to
run the session again: the configuration and the text of every rule file.
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from bot4 import codec
from bot4.bus import Bus, open_bus
from bot4.contracts import Exchange, RiskRules, Strategy
from bot4.errors import Bot4Error, ConfigError, RuleFileError
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.kernel_types import KernelStats
from bot4.model import MarketData
from bot4.plugins import PluginManager
from bot4.portfolio import PortfolioTracker
from bot4.recording import RECORDING, SessionRecorder
from bot4.suggest import did_you_mean

if TYPE_CHECKING:
    from bot4.journal.riskstate import RunHistory
    from bot4.metrics import Metrics

DEFAULT_STRATEGY = "sma_cross"
# The demo session's strategy settings: one- and ten-minute averages on the
# one-second sample, 3x leverage (the most the default policy allows) and a 3%
# stop. The default rules visibly act on it (size cuts, correlation); at 3x a
# position starts 32.8% from liquidation, so the ladder stays quiet here and
# examples/stress/ loosens thresholds in copies of the rule files to show it
# and the rest acting.
DEFAULT_STRATEGY_PARAMS = {
    "fast": 60,
    "slow": 600,
    "size": "0.01",
    "leverage": "3",
    "stop_loss_pct": "3",
    "take_profit_pct": "6",
}
DEFAULT_EXCHANGE = "paper"


@attrs.frozen
class StrategyConfig:
    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class SessionConfig:
    """Everything a session needs; JSON-able so a recording can carry it."""

    data: str | None = None  # a tick/candle file; None = the bundled sample
    exchange: str = DEFAULT_EXCHANGE
    exchange_params: Mapping[str, Any] = attrs.field(factory=dict)
    strategies: tuple[StrategyConfig, ...] = (
        StrategyConfig(DEFAULT_STRATEGY, DEFAULT_STRATEGY_PARAMS),
    )
    rules: tuple[str, ...] = ()  # files/dirs; () = the default policy
    speed: float = 0.0  # 0 = as fast as possible; 1.0 = real time; 60 = a minute per second
    out: str = "bot4-out"
    record: bool = True
    session_id: str = "s1"
    # Where the journal goes (bot4.journal): None = $BOT4_DATABASE_URL, else
    # <out>/journal.sqlite; a path; a postgresql:// URL; or "off".
    journal: str | None = None
    # Risk-rule packs by name: None = every installed one, () = none.
    packs: tuple[str, ...] | None = None
    # A candidate policy asked beside the live one, never deciding
    # (bot4.risk.shadow): rule files/dirs; () = none. Not part of a replay.
    shadow_rules: tuple[str, ...] = ()
    # Where the choice was made, for the error naming a pack not installed
    # ("session.yaml:7: packs", "--packs"); not part of the recording.
    packs_where: str = attrs.field(default="packs", eq=False)
    # Where the exchange's and each strategy's settings were written
    # ("exchange", "strategies[0]" -> "session.yaml:4"): a plugin refusing
    # one of them is reported at that line. Not part of the recording.
    origin: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    # ``feed:`` of a config file (bot4.feeds; ``bot4 run --feed`` overrides
    # it): name, symbols, interval, stale_after and the feed's own options.
    # Not part of the recording (a replay re-simulates from the ticks).
    feed: Mapping[str, Any] | None = attrs.field(default=None, eq=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "exchange": self.exchange,
            "exchange_params": dict(self.exchange_params),
            "strategies": [{"name": s.name, "params": dict(s.params)} for s in self.strategies],
            "rules": list(self.rules),
            "speed": self.speed,
            "session_id": self.session_id,
            "packs": None if self.packs is None else list(self.packs),
        }


def _need(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {what}")


def _read_yaml(path: Path) -> tuple[dict[str, Any], Mapping[str, int]]:
    """The config file as a mapping (values that know their lines) and the
    line of each key's value (bot4.risk.yamlsrc: the reader of rule files)."""
    from bot4.risk.yamlsrc import YMap, load_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    if not text.strip():
        return {}, {}
    try:
        loaded, _ = load_yaml(path, text)
    except RuleFileError as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise ConfigError(
            f"{where}: not valid YAML: {exc.message.removeprefix('YAML syntax: ')}"
        ) from None
    if not isinstance(loaded, YMap):
        line = getattr(loaded, "line", 1)
        raise ConfigError(f"{path}:{line}: the config must be a mapping of keys")
    return dict(loaded), loaded.lines


def _packs(value: object, where: str) -> tuple[str, ...] | None:
    """``packs:`` as given: a list of names, a comma string, ``none`` / ``[]``
    / ``false`` for none, absent for every installed pack."""
    from bot4.risk.packs import parse_names

    if value is None:
        return None
    if value is False:  # YAML reads a bare `off` / `no` as False
        return ()
    if isinstance(value, str):
        return parse_names(value)
    names = list(value) if isinstance(value, (list, tuple)) else [value]
    _need(
        all(isinstance(n, str) and n.strip() for n in names),
        where,
        "packs: expected a list of risk-pack names (or none)",
    )
    return tuple(dict.fromkeys(str(n).strip() for n in names))


def load_config(path: Path | None, overrides: Mapping[str, Any]) -> SessionConfig:
    """Read a YAML config file (optional) and apply command-line overrides.
    Every bad key or value is a ConfigError that names the file, the line of
    the value (``session.yaml:3: speed: ...``) and the key; a value given on
    the command line is named as such."""
    raw: dict[str, Any] = {}
    lines: Mapping[str, int] = {}
    where = str(path) if path else "command line"
    if path is not None:
        raw, lines = _read_yaml(path)
    given = {k for k, v in overrides.items() if v is not None}

    def at(key: str, index: int | None = None) -> str:
        """Where the value of ``key`` (its item ``index``) was written."""
        if key in given or path is None:
            return "command line"
        value = raw.get(key)
        item_lines = getattr(value, "lines", None)
        if index is not None and isinstance(item_lines, list) and index < len(item_lines):
            return f"{path}:{item_lines[index]}"
        line = lines.get(key)
        return f"{path}:{line}" if line is not None else where

    # `--exchange NAME` with a config whose `exchange:` mapping is for the same
    # plugin (or names none) overrides only the name: the settings are kept.
    configured, chosen = raw.get("exchange"), overrides.get("exchange")
    same_plugin = isinstance(configured, dict) and configured.get("name", chosen) == chosen
    if same_plugin and isinstance(configured, dict) and isinstance(chosen, str):
        overrides = {**overrides, "exchange": {**configured, "name": chosen}}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    known = {
        "data",
        "exchange",
        "strategy",
        "strategies",
        "rules",
        "speed",
        "out",
        "record",
        "session_id",
        "journal",
        "packs",
        "shadow_rules",
        "feed",
    }
    unknown = sorted(set(raw) - known)
    _need(
        not unknown,
        at(unknown[0]) if unknown else where,
        f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        + (did_you_mean(unknown[0], known) if unknown else ""),
    )

    exchange = raw.get("exchange", DEFAULT_EXCHANGE)
    exchange_params: dict[str, Any] = {}
    if isinstance(exchange, dict):
        exchange_params = {k: v for k, v in exchange.items() if k != "name"}
        exchange = exchange.get("name", DEFAULT_EXCHANGE)
    _need(
        isinstance(exchange, str) and bool(exchange),
        at("exchange"),
        "exchange: must be a plugin name",
    )

    strategies: list[StrategyConfig] = []
    items_key = "strategies" if "strategies" in raw else "strategy"
    items = raw.get("strategies", raw.get("strategy", DEFAULT_STRATEGY))
    for i, item in enumerate(items if isinstance(items, list) else [items]):
        key = f"strategies[{i}]"
        item_at = at(items_key, i if isinstance(items, list) else None)
        if item == DEFAULT_STRATEGY:
            strategies.append(StrategyConfig(item, DEFAULT_STRATEGY_PARAMS))
        elif isinstance(item, str):
            strategies.append(StrategyConfig(item))
        else:
            _need(
                isinstance(item, dict) and isinstance(item.get("name"), str),
                item_at,
                f"{key}: expected a name or a mapping with name and params",
            )
            params = item.get("params", {})
            _need(isinstance(params, dict), item_at, f"{key}.params: expected a mapping")
            strategies.append(StrategyConfig(item["name"], params))
    _need(bool(strategies), at(items_key), "strategies: at least one strategy is needed")

    rules = raw.get("rules", ())
    rules = (rules,) if isinstance(rules, str) else tuple(rules)
    _need(
        all(isinstance(r, str) for r in rules),
        at("rules"),
        "rules: expected a path or a list of paths",
    )
    shadow = raw.get("shadow_rules", ())
    shadow = (shadow,) if isinstance(shadow, str) else tuple(shadow)
    _need(
        all(isinstance(r, str) for r in shadow),
        at("shadow_rules"),
        "shadow_rules: expected a path or a list of paths",
    )
    speed = raw.get("speed", 0.0)
    _need(
        isinstance(speed, int | float) and not isinstance(speed, bool) and speed >= 0,
        at("speed"),
        f"speed: expected a number >= 0 (0 = as fast as possible), got {speed!r}",
    )
    data = raw.get("data")
    _need(data is None or isinstance(data, str), at("data"), "data: expected a file path")
    feed = raw.get("feed")
    _need(
        feed is None or isinstance(feed, str | dict),
        at("feed"),
        "feed: expected NAME:SOURCE or a mapping (name, symbols, interval, stale_after, options)",
    )
    origin = {"exchange": at("exchange")} if "exchange" in raw else {}
    if feed is not None:
        origin["feed"] = at("feed")
    for i in range(len(strategies)):
        origin[f"strategies[{i}]"] = at(items_key, i if isinstance(items, list) else None)
    packs_where = "--packs" if overrides.get("packs") is not None else at("packs")
    packs = _packs(raw.get("packs"), packs_where)
    if packs_where != "--packs":
        packs_where = f"{packs_where}: packs"
    return SessionConfig(
        origin={k: v for k, v in origin.items() if v not in (where, "command line")},
        data=data,
        exchange=exchange,
        exchange_params=exchange_params,
        strategies=tuple(strategies),
        rules=rules,
        speed=float(speed),
        out=str(raw.get("out", "bot4-out")),
        record=bool(raw.get("record", True)),
        session_id=str(raw.get("session_id", "s1")),
        # YAML reads a bare `off` as False.
        journal=None
        if raw.get("journal") is None
        else "off"
        if raw["journal"] is False
        else str(raw["journal"]),
        packs=packs,
        packs_where=packs_where,
        shadow_rules=shadow,
        feed=None if feed is None else {"name": feed} if isinstance(feed, str) else dict(feed),
    )


def rule_sources(paths: Sequence[Path]) -> dict[str, str]:
    """The text of every rule file the policy will load, by file name: the
    files the policy finds (an unreadable entry is an error, as there)."""
    from bot4.risk import sources
    from bot4.risk.yamlsrc import MAX_FILE_BYTES

    return {f.name: sources.read_text(f, MAX_FILE_BYTES) for f in sources.rule_files(paths)}


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


def policy_sha256(sources: Mapping[str, str]) -> str:
    """The hash of a policy's rule files (name and text, in load order): the
    same in a recording's header, in its reload events and at replay."""
    digest = hashlib.sha256()
    for name, text in sources.items():
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()


def pack_rules_sha256(pack: RiskRules) -> str:
    """The hash of the rule files a risk pack adds (their names and bytes)."""
    digest = hashlib.sha256()
    for path in pack.rule_files():
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes() + b"\0")
    return digest.hexdigest()


def plugins_used(
    manager: PluginManager, config: SessionConfig, packs: Sequence[RiskRules]
) -> list[dict[str, str]]:
    """The plugins a session uses (kind, registered name, plugin, version), for
    the recording's header: a replay names the missing ones before it starts."""
    versions = {p.name: p.version for p in manager.plugins}
    used: list[dict[str, str]] = []

    def add(kind: str, name: str, plugin: str, **extra: str) -> None:
        entry = {"kind": kind, "name": name, "plugin": plugin, "version": versions.get(plugin, "")}
        used.append({**entry, **extra})

    registry = manager.registry
    exchange = registry.exchanges.get(config.exchange)
    if exchange is not None:
        add("exchange", config.exchange, exchange.plugin)
    for s in config.strategies:
        strategy = registry.strategies.get(s.name)
        if strategy is not None and not any(
            u["kind"] == "strategy" and u["name"] == s.name for u in used
        ):
            add("strategy", s.name, strategy.plugin)
    for pack in packs:
        registered = registry.risk_rules.get(pack.name)
        plugin = registered.plugin if registered is not None else "(bot4)"
        add("risk_rules", pack.name, plugin, rules_sha256=pack_rules_sha256(pack))
    return used


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


ProgressHook = Callable[[MarketData], Awaitable[None]]


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


def data_path(config: SessionConfig) -> Path:
    from bot4 import data

    return data.sample_path() if config.data is None else Path(config.data)


def count_rows(path: Path) -> int | None:
    """Rows in a data file (less a header line), for the progress bar's ETA.
    A candle file yields several ticks per row, so this is a lower bound."""
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            first = f.readline()
            rows = sum(1 for _ in f)
    except OSError:
        return None
    return rows + (0 if first[:1].isalpha() else 1)


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
                on_tick=_pacer(config.speed, progress),
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


def recording_path(out: Path, earlier_runs: int) -> Path:
    """Where this run records: ``recording.jsonl.gz`` for a new session; a
    run that resumes one (``earlier_runs`` before it) keeps their recordings
    and writes ``recording-<run>.jsonl.gz`` (run 2, 3, ...; the next number
    free in either form, so an older plain ``recording-<run>.jsonl`` is kept
    too)."""
    if earlier_runs <= 0:
        return out / RECORDING
    run = earlier_runs + 1
    while any((out / f"recording-{run}{ext}").exists() for ext in (".jsonl", ".jsonl.gz")):
        run += 1
    return out / f"recording-{run}.jsonl.gz"


def _pacer(speed: float, progress: ProgressHook | None) -> ProgressHook | None:
    """Per-tick hook: progress display, and sleeping to replay event time at
    ``speed`` x real time (0 = no pacing)."""
    if speed <= 0:
        return progress
    state: dict[str, float] = {}

    async def pace(tick: MarketData) -> None:
        event_s = tick.timestamp.timestamp()
        if "t0" not in state:
            state["t0"], state["w0"] = event_s, time.monotonic()
        due = state["w0"] + (event_s - state["t0"]) / speed
        delay = due - time.monotonic()
        if delay > 0:
            await trio.sleep(delay)
        if progress is not None:
            await progress(tick)

    return pace


def progress_bar(total: int | None, stream: Any = sys.stderr) -> ProgressHook | None:
    """A one-line progress bar with ticks/s and ETA; None when not a terminal."""
    if not stream.isatty():
        return None
    start = time.monotonic()
    state = {"n": 0, "shown": 0.0}

    async def show(tick: MarketData) -> None:
        n = int(state["n"]) + 1
        state["n"] = n
        if n & 1023:
            return
        now = time.monotonic()
        if now - state["shown"] < 0.2:
            return
        state["shown"] = now
        rate = n / max(now - start, 1e-9)
        if total:
            frac = min(n / total, 1.0)
            bar = "#" * int(frac * 30)
            eta = (total - n) / rate if rate else 0
            line = (
                f"\r[{bar:<30}] {frac:6.1%} {n:,}/{total:,} ticks"
                f"  {rate:,.0f} ticks/s  ETA {eta:4.0f}s"
            )
        else:
            line = f"\r{n:,} ticks  {rate:,.0f} ticks/s"
        stream.write(line)
        stream.flush()

    return show
