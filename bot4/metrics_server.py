"""The HTTP endpoint that serves a :class:`~bot4.metrics.Metrics` registry on
``/metrics``, in a background thread (prometheus-client's own server). The
thread only reads prometheus-client objects, which are thread-safe."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import start_http_server

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["DEFAULT_ADDR", "MetricsServer"]

DEFAULT_ADDR = "127.0.0.1"


class MetricsServer:
    """The HTTP endpoint. ``port=0`` picks a free port (see :attr:`port`).
    Use as a context manager, or call :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = DEFAULT_ADDR) -> None:
        server, thread = start_http_server(port, addr=addr, registry=registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.addr = addr
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
