"""A session's configuration: what ``bot4 run`` is asked to run, and where
each setting was written.

This module holds :class:`SessionConfig` and :class:`StrategyConfig` (the
JSON-able settings a recording carries), the demo session's defaults
(``DEFAULT_STRATEGY``, ``DEFAULT_STRATEGY_PARAMS``, ``DEFAULT_EXCHANGE``),
:func:`load_config` (a YAML file plus command-line overrides, every bad key
or value a :class:`~bot4.errors.ConfigError` naming its file and line) and
:func:`data_path` (the data file a config names, or the bundled sample).

:mod:`bot4.session` re-exports all of it and runs what it describes; nothing
here builds a plugin or opens a file other than the config itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from bot4.errors import ConfigError, RuleFileError
from bot4.suggest import did_you_mean

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


def data_path(config: SessionConfig) -> Path:
    from bot4 import data

    return data.sample_path() if config.data is None else Path(config.data)
