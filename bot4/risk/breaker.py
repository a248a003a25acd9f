"""The circuit breaker: once tripped, every new order is refused (by the
``breaker.tripped`` fact and the rule that reads it) until a person resets it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("bot4.risk")


class Breaker:
    def __init__(self) -> None:
        self.tripped = False
        self.reason = ""
        self.tripped_at_ns: int | None = None
        self._on_reset: list[Callable[[], None]] = []
        self._on_trip: list[Callable[[str, int], None]] = []

    def trip(self, reason: str, now_ns: int) -> bool:
        """Trip the breaker; returns False if it was already tripped (the
        first reason is kept: it is the one a person needs to read)."""
        if self.tripped:
            return False
        self.tripped = True
        self.reason = reason
        self.tripped_at_ns = now_ns
        log.warning("circuit breaker tripped: %s", reason)
        for callback in self._on_trip:
            callback(reason, now_ns)
        return True

    def reset(self) -> None:
        """Re-arm. Also forgets counted stop-outs, or the next stop-out would
        trip it again at once."""
        self.tripped = False
        self.reason = ""
        self.tripped_at_ns = None
        for callback in self._on_reset:
            callback()
        log.warning("circuit breaker reset")

    def on_reset(self, callback: Callable[[], None]) -> None:
        self._on_reset.append(callback)

    def on_trip(self, callback: Callable[[str, int], None]) -> None:
        """``callback(reason, now_ns)`` on every trip, synchronously, before
        :meth:`trip` returns (the journal queues the new state there, so the
        kernel's next checkpoint commits it)."""
        self._on_trip.append(callback)

    def __repr__(self) -> str:
        state = f"tripped at {self.tripped_at_ns}: {self.reason}" if self.tripped else "armed"
        return f"Breaker({state})"
