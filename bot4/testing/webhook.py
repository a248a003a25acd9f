"""A real HTTP server on loopback that records the JSON POSTed to it.

For testing notifiers and alert routes against something that speaks HTTP
(never a mock)::

    with WebhookReceiver() as hook:
        os.environ["BOT4_WEBHOOK_URL"] = hook.url("/hooks/T000/secret")
        ...
        bodies = hook.wait_for(lambda got: len(got) >= 2, timeout=10)

``status`` sets the HTTP status it answers with; ``delay`` makes it wait that
many seconds before answering (a slow or hung receiver).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import attrs

__all__ = ["Received", "WebhookReceiver"]


@attrs.frozen
class Received:
    path: str
    headers: dict[str, str]
    body: Any  # the decoded JSON (or the raw text if it was not JSON)


class WebhookReceiver:
    """Serves on ``127.0.0.1:<free port>`` in a background thread until closed."""

    def __init__(self, *, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.received: list[Received] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    receiver._lock.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests read self.received

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[Any]:
        with self._lock:
            return [r.body for r in self.received]

    def wait_for(self, done: Callable[[list[Any]], bool], timeout: float = 10.0) -> list[Any]:
        """The bodies received once ``done(bodies)`` holds; raises
        TimeoutError with what arrived if it does not within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r.body for r in self.received]
                if done(got):
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"webhook receiver: condition not met; got {got!r}")
                self._lock.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
