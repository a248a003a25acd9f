"""ccxt's client for a venue, as this plugin configures it.

:func:`new_client` builds the synchronous client that an exchange object runs
in its worker threads (:mod:`bot4_ccxt.connection`): the options of the venue
and its market type (:mod:`bot4_ccxt.settings`, :mod:`bot4_ccxt.venues`), the
account's keys, ccxt's own rate limiter off (a :class:`~bot4_ccxt.pacing.Pacer`
paces the requests instead), numbers as strings (Decimal without binary
rounding), its request logs through :class:`_ScrubbedLogger`, and at another
``api_url`` (a proxy, the fake venues) the venue's hosts rewritten with the
market type's error table kept (:func:`_errors_by_market_type`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here

from bot4_ccxt.settings import DEFAULT_OPTIONS, VENUE_OPTIONS, CcxtSettings
from bot4_ccxt.venues import market_options

__all__ = ["new_client"]


class _ScrubbedLogger:
    """What ccxt calls as ``client.logger``: records go to ``bot4_ccxt.wire``
    with every secret of the exchange masked."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        self._scrub = scrub
        self._log = logging.getLogger("bot4_ccxt.wire")

    def _emit(self, level: int, msg: object, *args: object) -> None:
        if self._log.isEnabledFor(level):
            text = str(msg) % args if args else str(msg)
            self._log.log(level, "%s", self._scrub(text))

    def debug(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.DEBUG, msg, *args)

    def info(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.INFO, msg, *args)

    def warning(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.WARNING, msg, *args)

    def error(self, msg: object, *args: object, **_: object) -> None:
        self._emit(logging.ERROR, msg, *args)


def new_client(settings: CcxtSettings, scrub: Callable[[str], str]) -> Any:
    """ccxt's client for ``settings``; ``scrub`` masks the keys in its logs."""
    s = settings
    klass = getattr(ccxt, s.exchange)
    options = {
        **DEFAULT_OPTIONS,
        **market_options(s.profile, s.market_type),
        **VENUE_OPTIONS.get(s.exchange, {}),
        **s.options,
    }
    if s.recv_window is not None:
        options["recvWindow"] = s.recv_window
    params: dict[str, Any] = {
        "enableRateLimit": False,
        "timeout": int(s.timeout * 1000),
        "options": options,
    }
    for key, value in (("apiKey", s.api_key), ("secret", s.secret), ("password", s.password)):
        if value:
            params[key] = value
    client = klass(params)
    # ccxt logs every request with its headers (the API key) at DEBUG: its
    # records go through a logger that scrubs them first.
    client.logger = _ScrubbedLogger(scrub)
    client.number = str  # numbers as strings: Decimal without binary rounding
    if s.sandbox:
        client.set_sandbox_mode(True)
    api = client.urls.get("api")
    if s.api_url and isinstance(api, dict):
        base = s.api_url.rstrip("/")
        for key, url in list(api.items()):
            if isinstance(url, str):
                api[key] = re.sub(r"^[a-z]+://[^/]+", base, url)
    if s.urls and isinstance(api, dict):
        api.update(s.urls)
    if s.api_url or s.urls:
        _errors_by_market_type(client, s.profile, s.market_type)
    return client


def _errors_by_market_type(client: Any, profile: Any, kind: str) -> None:
    """Binance's ccxt client picks the error codes of a market type (``linear``:
    -2021 "would immediately trigger" is InvalidOrder) by the request's host;
    at another ``api_url`` (a proxy, the fake venues) it would find none, so
    the table of the configured market type is merged into the common one."""
    ccxt_type = (profile.market_types if profile is not None else {}).get(kind, kind)
    table = client.exceptions.get(ccxt_type) if isinstance(client.exceptions, dict) else None
    if not isinstance(table, dict):
        return
    for how in ("exact", "broad"):
        if isinstance(table.get(how), dict) and isinstance(client.exceptions.get(how), dict):
            client.exceptions[how] = {**client.exceptions[how], **table[how]}
