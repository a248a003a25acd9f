"""What a session's recording carries to run it again, and where it goes.

This module holds the parts of the recording's first event,
``session.start``, that are not the configuration itself: the text of every
rule file (:func:`rule_sources`), the hashes a replay compares
(:func:`policy_sha256`, :func:`pack_rules_sha256`) and the plugins the
session uses (:func:`plugins_used`); and :func:`recording_path`, the file
each run of a session records to.

:func:`bot4.session.run_session` builds the header from them (and records
each hot reload's rule texts and hash the same way); ``bot4 replay``
(:mod:`bot4.replay`) checks a recording against the same hashes.
:mod:`bot4.session` re-exports them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

from bot4.contracts import RiskRules
from bot4.plugins import PluginManager
from bot4.recording import RECORDING
from bot4.session_config import SessionConfig


def rule_sources(paths: Sequence[Path]) -> dict[str, str]:
    """The text of every rule file the policy will load, by file name: the
    files the policy finds (an unreadable entry is an error, as there)."""
    from bot4.risk import sources
    from bot4.risk.yamlsrc import MAX_FILE_BYTES

    return {f.name: sources.read_text(f, MAX_FILE_BYTES) for f in sources.rule_files(paths)}


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
