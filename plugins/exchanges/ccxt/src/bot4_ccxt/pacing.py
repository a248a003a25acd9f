"""How fast requests go to a venue: the :class:`Pacer`, and a 429's ``Retry-After``.

An exchange object's connection (:mod:`bot4_ccxt.connection`) makes one
Pacer on its first request and waits on it before each one; a rate-limit
answer slows it down for the venue's ``Retry-After`` (:func:`_retry_after`,
read from the client's last response; the ``ccxt`` feed, :mod:`bot4_ccxt.feed`,
honours it too). ccxt's own limiter stays off: it sleeps inside worker
threads, where trio cannot cancel it.
"""

from __future__ import annotations

import math
from typing import Any

import trio

__all__ = ["Pacer"]


class Pacer:
    """Spaces requests ``interval`` seconds apart; a rate-limit answer doubles
    the spacing (up to ``ceiling``) and holds everything for ``retry_after``;
    each success lets the spacing decay back towards the base."""

    def __init__(self, interval: float, ceiling: float = 10.0) -> None:
        self.base = interval
        self.interval = interval
        self.ceiling = ceiling
        self._next = -math.inf
        self.slowed = 0  # how many times a 429 slowed us down

    async def wait(self) -> None:
        now = trio.current_time()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await trio.sleep(at - now)
        else:
            await trio.lowlevel.checkpoint()

    def slow_down(self, hold: float) -> None:
        self.slowed += 1
        self.interval = min(self.ceiling, max(self.interval * 2, self.base * 2, 0.05))
        self._next = max(self._next, trio.current_time() + hold)

    def relax(self) -> None:
        if self.interval > self.base:
            self.interval = max(self.base, self.interval * 0.9)


def _retry_after(client: Any) -> float | None:
    headers = getattr(client, "last_response_headers", None) or {}
    for key in ("Retry-After", "retry-after"):
        value = headers.get(key) if hasattr(headers, "get") else None
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None
