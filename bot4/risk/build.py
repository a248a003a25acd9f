"""Building a policy from its rule files and packs, and what a built one holds.

:func:`build` reads the files (:mod:`bot4.risk.sources`), checks the packs'
facts (:mod:`bot4.risk.pack_facts`), compiles (:mod:`bot4.risk.compiler`)
and starts one durable-rules session per stage that has rules
(:mod:`bot4.risk.engine`). Whatever the files hold, the only exception it
raises is a RuleFileError, so a hot reload can refuse bad files and keep the
last good policy. The result, an :class:`ActivePolicy`, is what
:class:`~bot4.risk.policy.RiskPolicy` decides with, and what its reloads
(:mod:`bot4.risk.reload`) replace whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bot4.contracts import RiskRules
from bot4.errors import RuleFileError
from bot4.risk import sources
from bot4.risk.compiler import CompiledPolicy, Compiler, describe_error, read_file
from bot4.risk.engine import EngineRuleset
from bot4.risk.pack_facts import declared_owners, declared_types

__all__ = ["ActivePolicy", "build"]


@attrs.frozen(slots=True)
class ActivePolicy:
    """One loaded policy: compiled rules, live engines, and what it was built from."""

    compiled: CompiledPolicy
    engines: Mapping[str, EngineRuleset]
    signature: tuple[Any, ...]  # the files' and packs' fingerprint (bot4.risk.sources)
    digest: str  # sha256 over every compiled file's name and text

    @property
    def summary(self) -> str:
        """``N rules, sha256 <first 16 hex digits>``, as reloads report it."""
        return f"{len(self.compiled.rules)} rules, sha256 {self.digest[:16]}"

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def build(paths: Sequence[Path], packs: Sequence[RiskRules]) -> ActivePolicy:
    """Compile a policy. Whatever the files hold, the only exception is a
    RuleFileError (the compiler turns its own surprises into ``file:line``
    ones; this is the net under it), so a hot reload can keep the last good
    policy."""
    try:
        return _build_unguarded(paths, packs)
    except RuleFileError:
        raise
    except Exception as exc:  # MemoryError, RecursionError, a bug: never a traceback
        where = ", ".join(str(p) for p in paths) or "<policy>"
        message = f"cannot compile the policy: {describe_error(exc)}"
        raise RuleFileError(where, None, message) from None


def _build_unguarded(paths: Sequence[Path], packs: Sequence[RiskRules]) -> ActivePolicy:
    signature = sources.fingerprint(paths, packs)
    files = sources.rule_files(paths, packs)
    raws = []
    digest = hashlib.sha256()
    for f in files:
        raw, text = read_file(f)
        raws.append(raw)
        digest.update(str(f).encode() + b"\0" + text.encode() + b"\0")
    owners = declared_owners(packs)
    compiled = Compiler(owners, declared_types(packs, owners)).compile(raws)
    engines: dict[str, EngineRuleset] = {}
    try:
        for stage, plan in compiled.stages.items():
            if plan.rules:
                engines[stage] = EngineRuleset(stage, plan.definition)
    except Exception as exc:
        for engine in engines.values():
            engine.close()
        raise RuleFileError(
            ", ".join(compiled.files), None, f"the engine refused the compiled rules: {exc}"
        ) from None
    return ActivePolicy(compiled, engines, signature, digest.hexdigest())
