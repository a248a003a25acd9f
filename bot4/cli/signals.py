"""SIGINT and SIGTERM during ``bot4 run``: the first stops the session cleanly,
a second one exits at once.

The first signal asks the kernel to stop (:meth:`bot4.kernel.Kernel.request_stop`):
no event is taken after the one being handled, so no new order is sent; the
session then ends as if its data had run out (journal flushed and closed, its
lock released, recording and summary written) and ``bot4 run`` exits 0. A
second signal, while that shutdown runs, ends the process at once with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM).

The handlers are plain :mod:`signal` handlers, installed before trio starts
(so trio does not turn SIGINT into a KeyboardInterrupt raised anywhere). A
handler does only signal-safe things: a write to stderr, and handing the stop
to the trio loop with ``TrioToken.run_sync_soon``, which is made for that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import trio

from bot4.kernel import Kernel

__all__ = ["SignalStop"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SignalStop:
    """Turns the first SIGINT/SIGTERM into a clean stop of one kernel."""

    def __init__(self) -> None:
        self.received: str | None = None  # the first signal's name
        self._count = 0
        self._kernel: Kernel | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @contextmanager
    def installed(self) -> Iterator[SignalStop]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread may handle signals (an embedding app's thread)
            return
        previous: dict[signal.Signals, Any] = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def attach(self, kernel: Kernel) -> None:
        """Called inside trio with the session's kernel, before it runs."""
        self._kernel = kernel
        self._token = trio.lowlevel.current_trio_token()
        if self.received is not None:  # a signal came while the session was being built
            kernel.request_stop(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count > 1:
            os.write(2, f"bot4: {name} again: exiting now\n".encode())
            os._exit(128 + signum)
        self.received = name
        os.write(
            2,
            f"bot4: {name}: stopping (no new orders); a second signal exits at once\n".encode(),
        )
        kernel, token = self._kernel, self._token
        if kernel is not None and token is not None:
            # RunFinishedError: the session is over already, its summary is being written.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(kernel.request_stop, name)
