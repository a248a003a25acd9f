"""ccxt calls in a Decimal context of their own.

ccxt's precision helper (``ccxt.base.decimal_to_precision``, behind
``amount_to_precision`` and ``price_to_precision``, which ``create_order``
and other calls use) sets the *current* Decimal context's rounding to
ROUND_HALF_UP and traps Underflow, in place. A worker thread of
``trio.to_thread.run_sync`` runs in a copy of the caller's contextvars, and
that copy holds the caller's very Context object: the change would reach the
kernel's task, and every Decimal it rounds afterwards (a strategy's quantized
take-profit, the report's figures) would round half up on a ccxt venue and
half even on the paper one. :func:`in_own_decimal_context` runs a call in a
copy of the context, which the call may change as it likes.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["in_own_decimal_context"]

T = TypeVar("T")


def in_own_decimal_context(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with a copy of the current Decimal context as its own."""
    with decimal.localcontext():
        return fn(*args)
