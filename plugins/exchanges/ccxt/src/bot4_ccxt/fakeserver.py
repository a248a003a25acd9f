"""The HTTP side every fake venue shares: a threaded server on 127.0.0.1,
fault injection and the log of the requests it saw. No venue's endpoints,
signing or error format is in here.

:class:`FakeServer` is the part of :class:`~bot4_ccxt.fakebinance.FakeBinance`
(and so of every fake venue built on it: USDⓈ-M futures, Bybit, market
history) that listens, serves and fails on purpose:

* **lifecycle**: :meth:`~FakeServer.start` listens on ``host:port`` (any free
  port for 0) and serves from a background thread; :meth:`~FakeServer.stop`
  cuts every open connection (a dropped link) and keeps the venue's state,
  so ``start`` brings the same venue back on the same port;
* **ticks**: :meth:`~FakeServer.feed` pushes ticks from a thread, one per
  interval, optionally holding all but the first until a client first asks
  for a quote (any path with ``ticker`` in it);
* **faults**: :meth:`~FakeServer.inject` queues a :class:`Fault` for the next
  matching requests: 429 (with ``Retry-After``), 500, 503, a hang or a
  dropped connection, optionally after executing the request (``process``:
  the order exists, the reply is lost);
* **hits**: every request answered or failed is a :class:`Hit` in ``hits``
  (status 0: no reply), what tests read to see how the client behaved.

A request goes from :class:`_Handler` (one thread per connection, one request
per connection) to :meth:`FakeServer.handle`: an injected fault first, then
the venue's ``_route`` (its endpoint table and signature check). An endpoint
refuses by raising :class:`_ApiError`, which the venue's ``_error`` turns
into its status and body. Every request runs in its handler's thread; the
venue's endpoints hold ``lock``, as do the fault queue and the hit log.

A mixin, so these are the venue's own methods, bound as before. It knows the
venue only through the hooks declared in :class:`FakeServer` (``push``,
``_route``, ``_error``, ``_rate_limited``) and imports no venue module.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Self

import attrs

if TYPE_CHECKING:
    from bot4.model import MarketData

__all__ = ["FAULTS", "FakeServer", "Fault", "Hit"]

FAULTS = ("429", "500", "503", "hang", "drop")


class _ApiError(Exception):
    """A refusal in the venue's terms: the HTTP status, the venue's error code
    and message, and any headers the reply carries (``Retry-After``)."""

    def __init__(self, status: int, code: int, msg: str, headers: Mapping[str, str] | None = None):
        self.status = status
        self.code = code
        self.msg = msg
        self.headers = dict(headers or {})
        super().__init__(msg)


@attrs.define
class Fault:
    """One injected failure: applies to the next ``count`` matching requests."""

    method: str | None
    path: str | None
    kind: str
    count: int = 1
    process: bool = False
    delay: float = 0.0
    retry_after: int = 1
    skip: int = 0  # let this many matching requests through first

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path == path
        )


@attrs.frozen
class Hit:
    """One request the server saw (for tests: how the client behaved)."""

    at: float  # time.monotonic()
    method: str
    path: str
    status: int  # 0: the connection was dropped without a reply


class FakeServer:
    """Serving, fault injection and the hit log of a fake venue (module docstring)."""

    if TYPE_CHECKING:
        # What this part uses of the venue (defined there).
        def push(self, tick: MarketData) -> None: ...

        def _route(self, method: str, path: str, query: str, body: str, req: _Handler) -> object:
            """The endpoint's answer (raises _ApiError)."""

        def _error(self, err: _ApiError) -> tuple[int, object]: ...

        def _rate_limited(self) -> _ApiError: ...

    def _init_server(self, host: str, port: int, clock_offset: float) -> None:
        """The server's state (the venue's ``__init__`` calls this)."""
        self.host = host
        self.port = port
        self.clock_offset = clock_offset  # seconds added to the server's clock
        self.hits: list[Hit] = []
        self.lock = threading.RLock()
        self._faults: list[Fault] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._quoted = threading.Event()  # a client has asked for a quote
        self._feeder: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        """Listen (again, on the same port after :meth:`stop`) and serve."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.app = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (a dropped link).
        The engine keeps its state: :meth:`start` brings the same venue back."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.drop_connections()
        server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self._feeder is not None:
            self._feeder.join()
            self._feeder = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- control (in-process) --------------------------------------------------------

    def feed(
        self, ticks: Iterable[MarketData], interval: float, *, on_first_quote: bool = False
    ) -> None:
        """Push ``ticks`` from a background thread, one per ``interval`` seconds
        (the last quote stays up when they run out). With ``on_first_quote``
        the first tick is pushed at once and the rest wait until a client first
        asks for a quote, so a client that is slow to start (a loaded machine)
        still sees every tick."""

        def run() -> None:
            for n, tick in enumerate(ticks):
                self.push(tick)
                if n == 0 and on_first_quote:
                    while not self._quoted.wait(0.05):
                        if self._stopping.is_set():
                            return
                if self._stopping.wait(interval):
                    return

        self._feeder = threading.Thread(target=run, daemon=True)
        self._feeder.start()

    def inject(
        self,
        method: str | None,
        path: str | None,
        kind: str,
        *,
        count: int = 1,
        process: bool = False,
        delay: float = 0.0,
        retry_after: int = 1,
        skip: int = 0,
    ) -> Fault:
        """The next ``count`` requests matching ``method`` and ``path`` (None:
        any) fail with ``kind``: "429", "500", "503", "hang" (no reply for
        ``delay`` seconds, then the connection closes), "drop" (the connection
        closes at once). ``process``: execute the request before failing;
        ``skip``: let that many matching requests through first."""
        if kind not in FAULTS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULTS)}")
        fault = Fault(method, path, kind, count, process, delay, retry_after, skip)
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def server_time(self) -> int:
        return int((time.time() + self.clock_offset) * 1000)

    def hits_of(self, method: str, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.method == method and h.path == path]

    # --- request handling -----------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.hits.append(Hit(time.monotonic(), method, path, status))

    def handle(self, req: _Handler) -> None:
        method = req.command
        path, _, query = req.path.partition("?")
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length).decode() if length else ""
        fault = self._take_fault(method, path)
        if fault is not None and not fault.process:
            self._fail(req, fault, method, path)
            return
        if "ticker" in path:
            self._quoted.set()
        try:
            status, payload, headers = 200, self._route(method, path, query, body, req), {}
        except _ApiError as err:
            status, payload = self._error(err)
            headers = err.headers
        if fault is not None:
            self._fail(req, fault, method, path)
            return
        self._log(method, path, status)
        req.reply(status, payload, headers)

    def _fail(self, req: _Handler, fault: Fault, method: str, path: str) -> None:
        if fault.kind == "429":
            self._log(method, path, 429)
            status, payload = self._error(self._rate_limited())
            req.reply(status, payload, {"Retry-After": str(fault.retry_after)})
        elif fault.kind == "500":
            self._log(method, path, 500)
            # Binance's body whatever the venue: a fake Bybit sends it too, and
            # ccxt's bybit reads it as an ExchangeError (no retCode), not an outage.
            req.reply(
                500,
                {"code": -1000, "msg": "An unknown error occurred while processing the request."},
            )
        elif fault.kind == "503":
            self._log(method, path, 503)
            req.reply_text(503, "Service Unavailable")
        elif fault.kind == "hang":
            self._log(method, path, 0)
            self._stopping.wait(fault.delay)
            req.drop()
        else:
            self._log(method, path, 0)
            req.drop()


class _Server(ThreadingHTTPServer):
    """Joins its handler threads on close and can cut open connections."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    app: FakeServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def drop_connections(self) -> None:
        with self.conn_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read :attr:`FakeServer.hits` instead."""

    def _serve(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.server.app.handle(self)

    do_GET = do_POST = do_DELETE = do_PUT = _serve

    def reply(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def reply_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
