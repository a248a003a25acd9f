"""ccxt's exceptions as bot4's errors.

:func:`map_error` sorts every ccxt exception onto bot4's refused/failed split
(:mod:`bot4.errors`; the table is in :mod:`bot4_ccxt.exchange`'s docstring,
**Errors**): a refusal is raised as it is, a failure is retried by the
connection (:mod:`bot4_ccxt.connection`) with backoff. :class:`ClockSkew` is
the one failure answered differently there: the venue's clock is measured
again before the retry.
"""

from __future__ import annotations

from collections.abc import Callable

import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here

from bot4.errors import (
    ExchangeError,
    ExchangeRefused,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    RateLimited,
)
from bot4.secrets import redact

__all__ = ["ClockSkew", "map_error"]


class ClockSkew(ExchangeUnavailable):
    """A signed request was refused for its timestamp: resync the clock, retry."""


def map_error(exc: BaseException, what: str, scrub: Callable[[str], str] = redact) -> ExchangeError:
    """bot4's error for a ccxt exception (see the module docstring)."""
    text = scrub(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, ccxt.OrderNotFound):
        return OrderNotFound(text)
    if isinstance(exc, ccxt.InsufficientFunds):
        return InsufficientFunds(text)
    if isinstance(exc, ccxt.InvalidOrder | ccxt.BadRequest):
        return InvalidOrder(text)
    if isinstance(exc, ccxt.ExchangeError):
        return ExchangeRefused(text)
    if isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
        return RateLimited(text)
    if isinstance(exc, ccxt.RequestTimeout):
        return ExchangeTimeout(text)
    if isinstance(exc, ccxt.InvalidNonce):
        return ClockSkew(text)
    return ExchangeUnavailable(text)
