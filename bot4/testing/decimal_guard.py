"""A check that a test leaves the Decimal context as it found it.

Python's Decimal context is per thread (a context variable), but the Context
object in it is shared by every copy of the variables: a library that
changes the *current* context in place (ccxt's precision helper sets its
rounding to ROUND_HALF_UP and traps Underflow) changes how the caller, and
every later test in the process, rounds. Used by bot4's own suites as an
autouse fixture; a plugin's tests can do the same::

    @pytest.fixture(autouse=True)
    def decimal_context_unchanged() -> Iterator[None]:
        with decimal_context_kept():
            yield
"""

from __future__ import annotations

import contextlib
import decimal
from collections.abc import Iterator
from typing import Any

__all__ = ["decimal_context_kept"]


def _state() -> tuple[Any, ...]:
    ctx = decimal.getcontext()
    traps = tuple(sorted((t.__name__, v) for t, v in ctx.traps.items()))
    return (ctx.prec, ctx.rounding, ctx.Emin, ctx.Emax, ctx.capitals, ctx.clamp, traps)


@contextlib.contextmanager
def decimal_context_kept() -> Iterator[None]:
    """Fail (AssertionError naming the change) when the body leaves the
    current Decimal context changed; the context is put back first, so a
    later test rounds as before."""
    saved = decimal.getcontext().copy()
    before = _state()
    yield
    after = _state()
    if after != before:
        decimal.setcontext(saved)
        raise AssertionError(f"the Decimal context was changed: {before} -> {after}")
