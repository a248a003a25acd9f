"""The journal's errors: each names the journal (path or redacted URL) and
says what to do; a refusal means nothing was written."""

from __future__ import annotations

from bot4.errors import Bot4Error

__all__ = [
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalUnavailable",
    "RecoveryError",
    "SchemaBehind",
    "SchemaTooNew",
]


class JournalError(Bot4Error):
    """Base of the journal's errors."""


class JournalUnavailable(JournalError):
    """The journal cannot be reached (no server, refused, bad path)."""


class JournalCorrupt(JournalError):
    """The file or schema is not a bot4 journal, or is damaged. Nothing was written."""


class SchemaTooNew(JournalError):
    """The journal was written by a newer bot4; this one refuses to touch it."""

    def __init__(self, where: str, found: int, known: int) -> None:
        super().__init__(
            f"{where}: journal schema version {found} is newer than this bot4 supports "
            f"(version {known}); upgrade bot4. Nothing was written."
        )
        self.found = found
        self.known = known


class SchemaBehind(JournalError):
    """The journal needs migrations this session will not apply by itself."""


class JournalLocked(JournalError):
    """Another process is writing this journal."""


class RecoveryError(JournalError):
    """Recovery could not establish what the exchange knows: the session must not start."""
