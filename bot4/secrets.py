"""Keep secrets out of anything bot4 prints, logs or stores.

Secrets reach bot4 only through the environment or files. Any text that
leaves the process (an error line in ``plugins list``, a log record, a journal
entry) goes through :func:`redact`, which replaces the value of every
environment variable whose name marks it as secret, and the password part of
URLs such as ``redis://:pw@host``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL)", re.I)
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I
)
MASK = "***"
# Values this short are too likely to occur by chance in ordinary text.
_MIN_SECRET_LEN = 4


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking variables, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret value and URL password replaced by ``***``."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
