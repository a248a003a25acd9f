"""Hot reload: a policy's rule files polled for edits, and what a reload did.

:class:`RuleFileWatch` holds the files and packs a policy was built from.
Each :meth:`~RuleFileWatch.poll` compares their fingerprint (identity, mode,
times and size: :func:`bot4.risk.sources.fingerprint`) with the policy in
force and, when it changed, builds the policy afresh (:mod:`bot4.risk.build`).
The new policy is handed to the caller's ``install`` only when it compiled
and its content hash differs; a file that fails is refused whole, reported
once per distinct broken state, and the last good policy stays in force.
:class:`ReloadOutcome` says which happened, for the kernel to publish.
:meth:`bot4.risk.policy.RiskPolicy.reload_if_changed` is the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from bot4.contracts import RiskRules
from bot4.errors import RuleFileError
from bot4.risk import sources
from bot4.risk.build import ActivePolicy, build

__all__ = ["ReloadOutcome", "RuleFileWatch"]

log = logging.getLogger("bot4.risk")


@attrs.frozen(slots=True)
class ReloadOutcome:
    """What a reload did. ``error`` is set when the new files were refused
    (the previous policy stays in force)."""

    reloaded: bool
    files: tuple[str, ...]
    error: RuleFileError | None = None
    rules: int = 0  # of the policy now in force, when reloaded
    digest: str = ""  # sha256 of the policy now in force, when reloaded

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def message(self) -> str:
        """One line for a person: what is in force now."""
        if self.error is not None:
            return f"rule reload refused, keeping the previous policy: {self.error}"
        return f"policy reloaded: {self.rules} rules, sha256 {self.digest[:16]}"


class RuleFileWatch:
    """The rule files and packs of one policy, polled for edits."""

    __slots__ = ("_failed_signature", "_packs", "_paths")

    def __init__(self, paths: Sequence[Path], packs: Sequence[RiskRules]) -> None:
        self._paths = tuple(paths)
        self._packs = tuple(packs)
        # The fingerprint of the files last refused: the same broken state
        # is not compiled (nor reported) again.
        self._failed_signature: tuple[Any, ...] | None = None

    def poll(
        self, active: ActivePolicy, install: Callable[[ActivePolicy], None]
    ) -> ReloadOutcome | None:
        """Recompile if a file changed since ``active`` was built. A policy
        that compiled goes to ``install`` (which puts it in force); the
        replaced one, or the unneeded fresh one, is closed. Returns None when
        nothing changed that a person must hear of. Raises only on a bug
        (RiskPolicy.reload_if_changed is the net)."""
        signature = sources.fingerprint(self._paths, self._packs)
        if signature == active.signature or signature == self._failed_signature:
            return None
        try:
            fresh = build(self._paths, self._packs)
        except RuleFileError as exc:
            self._failed_signature = signature
            # A refused file is an expected outcome, not a crash: no traceback.
            log.error("rule reload refused, keeping the previous policy: %s", exc)  # noqa: TRY400
            return ReloadOutcome(reloaded=False, files=active.compiled.files, error=exc)
        recovered = self._failed_signature is not None
        self._failed_signature = None
        if fresh.digest == active.digest:
            fresh.close()
            kept = attrs.evolve(active, signature=signature)
            install(kept)  # the same rules, but the bands start afresh
            if recovered:
                log.warning(
                    "rule files readable again; the policy in force is unchanged: %s",
                    kept.summary,
                )
            return None
        install(fresh)
        active.close()
        outcome = ReloadOutcome(
            reloaded=True,
            files=fresh.compiled.files,
            rules=len(fresh.compiled.rules),
            digest=fresh.digest,
        )
        # A warning, not info: a changed policy in a live session is what the
        # person running it must see (bot4 run shows warnings and errors).
        log.warning("%s (%s)", outcome.message, ", ".join(outcome.files))
        return outcome
