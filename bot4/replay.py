"""``bot4 replay``: run a recorded session again and check it matches.

Safe on any file. The recording's first line (``session.start``) names an
exchange and its settings, rule files, a data file: replay uses none of them
to reach anything. It builds no exchange plugin from the recorded settings,
opens no file but the recording (and a private temporary folder), connects
nowhere and reads no credentials:

* a ``paper`` recording is re-simulated by the paper engine, in memory, from
  the recorded ticks, with only the recorded settings that are plain numbers
  (fees, slippage, balance, leverage cap, market increments: see
  :data:`PAPER_SETTINGS`); a ``state:`` file, a ``feed:`` path are ignored;
* any other recording is played back by :class:`bot4.replayvenue.ReplayVenue`,
  which answers the kernel from the recording itself (ticks, fills, order
  updates, the answers to its orders).

The policy is the one recorded: the header carries the text of every rule file
and its hash, and each hot reload is a ``policy.reload`` event (new text and
hash) applied on the same tick. The plugins the session used (strategies,
risk packs, the paper engine) are listed in the header with their versions: a
missing one is named before the replay starts. Replaying records again and
compares every decision, order, fill and risk action of the two recordings,
in order; the first difference is shown whole (both records, with their line
numbers). Both files are streamed, so memory does not grow with the length of
the session.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from itertools import zip_longest
from pathlib import Path
from typing import Any

import attrs

from bot4.contracts import Capability, Exchange
from bot4.errors import ConfigError
from bot4.feeds_replay import recorded_stale_services
from bot4.plugins import PluginManager
from bot4.recording_read import read_stream
from bot4.replayvenue import RecordedPrefix, RecordedTicks, ReplayVenue, records
from bot4.session import (
    SessionConfig,
    StrategyConfig,
    pack_rules_sha256,
    policy_sha256,
    run_session,
)

# Everything the kernel decided or the exchange did; market data is input.
_OUTPUT_PREFIXES = ("signal.", "risk.", "order.", "fill.", "kernel.")

# The recorded paper settings a replay re-simulates with: numbers, a flag, a
# currency name and market increments. Nothing that names a file or a host.
PAPER_SETTINGS = frozenset(
    {"balance", "taker_fee", "maker_fee", "slippage_bps", "max_leverage", "history"}
)
_MARKET_NUMBERS = frozenset({"price_increment", "qty_increment", "min_qty"})
_NAME = re.compile(r"^[A-Z0-9]{1,16}$")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}(-[A-Z0-9]{1,20}){1,2}$")


@attrs.frozen
class ReplayResult:
    compared: int
    mismatch: str | None  # first difference, described whole; None when identical
    recording: Path
    notes: tuple[str, ...] = ()  # what the replay could not reproduce exactly, said once

    @property
    def matched(self) -> bool:
        return self.mismatch is None


def read_header(path: Path) -> dict[str, Any]:
    for number, record in records(path):
        if record["topic"] != "session.start":
            raise ConfigError(
                f"{path}:{number}: a recording starts with session.start, not {record['topic']}"
            )
        header = record.get("payload")
        if not isinstance(header, dict) or not isinstance(header.get("config"), dict):
            raise ConfigError(f"{path}:{number}: session.start carries no config")
        if not isinstance(header.get("rules"), dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in header["rules"].items()
        ):
            raise ConfigError(f"{path}:{number}: session.start carries no rule text")
        return header
    raise ConfigError(f"{path}: empty recording")


def _outputs(path: Path) -> Iterator[tuple[int, str, str]]:
    # Ticks are inputs: their columns are not even decoded.
    for number, topic, record in read_stream(path, ticks="skip"):
        if topic.startswith(_OUTPUT_PREFIXES):
            yield number, topic, json.dumps(record.get("payload"), sort_keys=True)


# -- what the header may set -------------------------------------------------------


def _plain_number(where: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: {value!r} is not a number")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if not number.is_finite():
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return str(value)


def paper_settings(params: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """The recorded paper settings replay may use, and notes on those it drops."""
    safe: dict[str, Any] = {}
    notes: list[str] = []
    for key, value in params.items():
        if key in PAPER_SETTINGS:
            safe[key] = _plain_number(f"{where}.{key}", value)
        elif (key == "attached_exits" and isinstance(value, bool)) or (
            key == "currency" and isinstance(value, str) and _NAME.match(value)
        ):
            safe[key] = value
        elif key == "markets" and isinstance(value, Mapping):
            markets: dict[str, dict[str, str]] = {}
            for symbol, spec in value.items():
                if not (isinstance(symbol, str) and _SYMBOL.match(symbol)) or not isinstance(
                    spec, Mapping
                ):
                    raise ConfigError(f"{where}.markets: {symbol!r} is not a market")
                entry = {
                    k: _plain_number(f"{where}.markets.{symbol}.{k}", v)
                    for k, v in spec.items()
                    if k in _MARKET_NUMBERS
                }
                quote = spec.get("quote_currency")
                if isinstance(quote, str) and _NAME.match(quote):
                    entry["quote_currency"] = quote
                markets[symbol] = entry
            safe[key] = markets
        else:
            notes.append(f"paper setting {key!r} is not used: the replay simulates in memory")
    return safe, notes


def _strategies(raw: object, where: str) -> tuple[StrategyConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: config.strategies: expected a list")
    out = []
    for i, s in enumerate(raw):
        named = isinstance(s, dict) and isinstance(s.get("name"), str)
        if not (named and isinstance(s.get("params"), dict)):
            raise ConfigError(f"{where}: config.strategies[{i}]: expected a name and params")
        out.append(StrategyConfig(s["name"], s["params"]))
    return tuple(out)


def config_from_header(header: Mapping[str, Any], out: Path) -> SessionConfig:
    """The replay's session: the recorded strategies and session id; no data
    file, no rule paths, no journal, no exchange settings but plain numbers."""
    c = header["config"]
    where = "session.start"
    exchange = c.get("exchange")
    if not isinstance(exchange, str) or not exchange:
        raise ConfigError(f"{where}: config.exchange: expected a name")
    session_id = c.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        raise ConfigError(f"{where}: config.session_id: expected a name")
    balance = _plain_number(f"{where}: balance", header.get("balance", "10000"))
    params = c.get("exchange_params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: config.exchange_params: expected a mapping")
    safe = paper_settings(params, f"{where}: paper")[0] if exchange == "paper" else {}
    return SessionConfig(
        data=None,
        exchange=exchange,
        exchange_params={**safe, "balance": balance},
        strategies=_strategies(c.get("strategies"), where),
        rules=(),
        speed=0.0,
        out=str(out),
        record=True,
        session_id=session_id,
        journal="off",  # a replay re-decides in a sandbox: it must not touch the live journal
        # The same risk packs (a recording from before packs were recorded: all).
        packs=None if c.get("packs") is None else tuple(c["packs"]),
    )


# -- plugins ---------------------------------------------------------------------------


def check_plugins(header: Mapping[str, Any], manager: PluginManager, path: Path) -> list[str]:
    """Raise, naming every one, if a plugin the session used is not installed;
    return notes for those installed in another version."""
    used = header.get("plugins")
    if used is None:
        return ["the recording lists no plugins (made by an older bot4): not checked"]
    if not isinstance(used, list):
        raise ConfigError(f"{path}:1: session.start: plugins: expected a list")
    registry = manager.registry
    tables: dict[str, Mapping[str, Any]] = {
        "strategy": registry.strategies,
        "risk_rules": registry.risk_rules,
        "exchange": registry.exchanges,
    }
    versions = {p.name: p.version for p in manager.plugins if p.ok}
    missing: list[str] = []
    notes: list[str] = []
    paper = header["config"].get("exchange") == "paper"
    for entry in used:
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}:1: session.start: plugins: {entry!r} is not an entry")
        kind, name = str(entry.get("kind", "")), str(entry.get("name", ""))
        plugin, version = str(entry.get("plugin", "")), str(entry.get("version", ""))
        if kind == "exchange" and not paper:
            continue  # played back from the recording: the plugin is not needed
        label = f"{kind.replace('_', ' ')} {name!r} (plugin {plugin} {version})".replace(" )", ")")
        if plugin == "(bot4)":
            missing.append(f"{label}: bot4's own pack, fed from outside; a replay runs offline")
            continue
        if name not in tables.get(kind, {}):
            missing.append(label)
            continue
        installed = versions.get(plugin)
        if installed is not None and installed != version:
            notes.append(f"{label} is installed as version {installed}")
        if kind == "risk_rules" and "rules_sha256" in entry:
            pack = manager.registry.risk_rule_pack(name).factory({})
            if pack_rules_sha256(pack) != entry["rules_sha256"]:
                notes.append(f"{label}: its rule files differ from the recorded ones")
    if missing:
        raise ConfigError(
            f"{path}:1: plugins the recorded session used are missing, so it cannot be "
            f"replayed: {'; '.join(missing)}"
        )
    return notes


# -- comparing -------------------------------------------------------------------------


def compare(original: Path, again: Path) -> tuple[int, str | None]:
    """Count the identical output events; describe the first difference whole."""
    compared = 0
    for a, b in zip_longest(_outputs(original), _outputs(again)):
        if a is None or b is None:
            ended, goes_on = ("original", "replay") if a is None else ("replay", "original")
            extra = b if a is None else a
            assert extra is not None
            return compared, (
                f"the {ended} ended early; the {goes_on} goes on with\n"
                f"  {goes_on} line {extra[0]}: {extra[1]} {extra[2]}"
            )
        if a[1:] != b[1:]:
            return compared, (
                f"event {compared + 1} differs:\n"
                f"  original line {a[0]}: {a[1]} {a[2]}\n"
                f"  replay   line {b[0]}: {b[1]} {b[2]}"
            )
        compared += 1
    return compared, None


# -- the rules, as recorded --------------------------------------------------------------


class _RecordedRules:
    """The rule files of the recording, written into a private folder; a
    recorded reload rewrites them. Files are numbered to keep the recorded
    load order, and each generation gets its own modification time, so the
    policy's change detection cannot miss a rewrite within one clock tick."""

    def __init__(self, folder: Path, path: Path) -> None:
        self.folder = folder
        self.path = path
        self.generation = 0
        folder.mkdir()

    def write(self, sources: Mapping[str, str]) -> None:
        for old in self.folder.iterdir():
            old.unlink()
        self.generation += 1
        stamp = 1_000_000_000 * self.generation
        for i, (name, text) in enumerate(sources.items()):
            # Only a bare name (never a path from the file), numbered, as *.yaml.
            base = Path(name).name
            target = self.folder / f"{i:03d}-{base.removesuffix('.yaml')}.yaml"
            target.write_text(text, encoding="utf-8")
            os.utime(target, ns=(stamp, stamp))

    def reload(self, number: int, payload: Mapping[str, Any]) -> None:
        rules = payload.get("rules")
        if not isinstance(rules, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in rules.items()
        ):
            raise ConfigError(f"{self.path}:{number}: policy.reload carries no rule text")
        if payload.get("sha256") != policy_sha256(rules):
            raise ConfigError(
                f"{self.path}:{number}: policy.reload: the rule text does not match its sha256"
            )
        self.write(rules)


def _venue(
    header: Mapping[str, Any], config: SessionConfig, recording: Path, rules: _RecordedRules
) -> Exchange:
    caps = {c.value: c for c in Capability}
    recorded = header.get("capabilities")
    if not isinstance(recorded, list):
        raise ConfigError(f"{recording}:1: session.start names no exchange capabilities")
    return ReplayVenue(
        recording,
        capabilities=frozenset(caps[c] for c in recorded if c in caps),
        balance=Decimal(str(config.exchange_params["balance"])),
        on_reload=rules.reload,
    )


async def replay(
    recording: Path, out: Path | None = None, *, manager: PluginManager | None = None
) -> ReplayResult:
    header = read_header(recording)
    if header.get("policy_sha256", policy_sha256(header["rules"])) != policy_sha256(
        header["rules"]
    ):
        raise ConfigError(f"{recording}:1: the recorded rule text does not match its sha256")
    manager = manager or PluginManager.load()
    notes = check_plugins(header, manager, recording)
    params = header["config"].get("exchange_params") or {}
    paper = header["config"].get("exchange") == "paper"
    if paper and isinstance(params, Mapping):
        notes.extend(paper_settings(params, "session.start: paper")[1])
    if header.get("plugins") is None:  # an older recording: the installed packs
        packs = sorted(manager.registry.risk_rules)
    else:  # exactly the recorded ones; never bot4's own, which reach Redis
        packs = [
            str(p["name"])
            for p in header["plugins"]
            if isinstance(p, dict) and p.get("kind") == "risk_rules"
        ]
    with tempfile.TemporaryDirectory(prefix="bot4-replay-") as tmp:
        rules = _RecordedRules(Path(tmp) / "rules", recording)
        rules.write(header["rules"])
        target = out or Path(tmp) / "out"
        config = config_from_header(header, target)
        exchange: Exchange
        if paper:
            feed = RecordedTicks(recording, rules.reload)
            paper_venue = manager.registry.exchange("paper").factory(
                {**config.exchange_params, "feed": feed}
            )
            exchange = RecordedPrefix(paper_venue, feed)
        else:
            exchange = _venue(header, config, recording, rules)
        result = await run_session(
            config,
            manager=manager,
            exchange=exchange,
            rule_paths=[rules.folder],
            # A live feed's stale-feed refusals, as recorded (bot4.feeds_replay).
            services=recorded_stale_services(recording),
            pack_names=packs,
            reload_every=0.0,  # poll on the kernel's tick schedule only, as recorded
        )
        if result.error is not None:
            raise result.error  # the recording itself is bad (a line that cannot be read)
        assert result.recording is not None
        compared, mismatch = compare(recording, result.recording)
        kept = result.recording if out is not None else recording
        return ReplayResult(compared, mismatch, kept, tuple(notes))
