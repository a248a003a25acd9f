"""The journal's public names, gathered from the modules that define them
(kept so that ``from bot4.journal.base import ...`` goes on working):

* :mod:`~bot4.journal.errors`: the errors;
* :mod:`~bot4.journal.records`: record kinds, records, stored rows, checksums;
* :mod:`~bot4.journal.encoding`: a payload as exact JSON (a record's body);
* :mod:`~bot4.journal.rows`: a batch as table rows and the SQL writing them;
* :mod:`~bot4.journal.store`: the synchronous store every backend extends;
* :mod:`~bot4.journal.verify`: ``bot4 journal verify``;
* :mod:`~bot4.journal.facade`: :class:`Journal`, the store for trio code.
"""

from __future__ import annotations

from bot4.journal.errors import (
    JournalCorrupt,
    JournalError,
    JournalLocked,
    JournalUnavailable,
    RecoveryError,
    SchemaBehind,
    SchemaTooNew,
)
from bot4.journal.facade import Journal
from bot4.journal.records import (
    OPEN_STATUSES,
    FillRow,
    OrderRow,
    Record,
    RecordKind,
    StoredRecord,
    checksum,
    ns_of,
)
from bot4.journal.rows import Tx
from bot4.journal.store import Store
from bot4.journal.verify import VerifyReport

__all__ = [
    "OPEN_STATUSES",
    "FillRow",
    "Journal",
    "JournalCorrupt",
    "JournalError",
    "JournalLocked",
    "JournalUnavailable",
    "OrderRow",
    "Record",
    "RecordKind",
    "RecoveryError",
    "SchemaBehind",
    "SchemaTooNew",
    "Store",
    "StoredRecord",
    "Tx",
    "VerifyReport",
    "checksum",
    "ns_of",
]
