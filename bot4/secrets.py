"""Keep secrets out of anything bot4 prints, logs or stores.

Secrets reach bot4 only through the environment or files: :func:`env_value`
reads ``NAME`` or, when that is unset, the file ``NAME_FILE`` names (Docker
and compose ``secrets:`` mount them under ``/run/secrets``). Any text that
leaves the process (an error line in ``plugins list``, a log record, a journal
entry) goes through :func:`redact`, which replaces the value of every
environment variable whose name marks it as secret, and the password part of
URLs such as ``redis://:pw@host``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from bot4.errors import ConfigError

_SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL)", re.I)
_URL_PASSWORD = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I
)
MASK = "***"
# Values this short are too likely to occur by chance in ordinary text.
_MIN_SECRET_LEN = 4


# Secrets read from files or variables whose name does not say so (a webhook
# URL carries its token in the path): masked too, once read.
_READ: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` in everything :func:`redact` sees from now on."""
    if len(value) >= _MIN_SECRET_LEN:
        _READ.add(value)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of the secret-looking variables and of every secret read
    through :func:`env_value` or :func:`register_secret`, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    values |= _READ
    return sorted(values, key=len, reverse=True)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every secret value and URL password replaced by ``***``."""
    for value in secret_values(environ):
        text = text.replace(value, MASK)
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)


FILE_SUFFIX = "_FILE"


def env_value(name: str, environ: Mapping[str, str] | None = None, *, secret: bool = True) -> str:
    """``$NAME``, else the text of the file ``$NAME_FILE`` (stripped of the
    surrounding whitespace and newline an editor leaves), else "". What is
    read is a credential (unless ``secret=False``, for plain settings read
    the same way): :func:`redact` masks it from then on.

    A ``NAME_FILE`` that cannot be read is a :class:`~bot4.errors.ConfigError`
    naming the variable and the path, never the contents."""
    env = os.environ if environ is None else environ
    value = env.get(name, "")
    if value.strip():
        if secret:
            register_secret(value.strip())
        return value
    path = env.get(name + FILE_SUFFIX, "").strip()
    if not path:
        return ""
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{name}{FILE_SUFFIX}: cannot read {path}: {why}") from None
    if secret:
        register_secret(value)
    return value
