"""Where the shared state lives: the Redis URL, its password and the key namespace.

Configuration comes from the environment only:

* ``BOT4_REDIS_URL`` (``redis://host:6379/0``, ``rediss://`` for TLS). Unset
  means no Redis: bot4 runs single-process as before.
* ``BOT4_REDIS_PASSWORD``, or ``BOT4_REDIS_PASSWORD_FILE`` (a file holding
  it, e.g. a Docker secret), when the URL carries no password.
* ``BOT4_REDIS_NAMESPACE``: every key starts with ``<namespace>:`` (default
  ``bot4``), so several deployments (or test runs) share one server apart.
* ``BOT4_REDIS_PROCESS``: this process's name in the shared budget (default
  ``<host>:<pid>``); give a stable one to a bot that restarts, so its
  restart takes over the figures it left.

Every message that may carry the URL goes through :func:`bot4.secrets.redact`
and the password is never part of ``repr``.

trio and redis-py: redis-py's asyncio client runs on asyncio only (trio
support through AnyIO was proposed upstream, redis/redis-py#3647, and not
merged), so bot4 uses the synchronous client from worker threads
(``trio.to_thread.run_sync`` with a small :class:`trio.CapacityLimiter`) and
a dedicated thread for the blocking pub/sub listener. The client's
connection pool is thread-safe; each call borrows one connection.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import redis
import trio

from bot4.errors import Bot4Error, ConfigError
from bot4.secrets import redact

ENV_URL = "BOT4_REDIS_URL"
ENV_PASSWORD = "BOT4_REDIS_PASSWORD"
ENV_PASSWORD_FILE = "BOT4_REDIS_PASSWORD_FILE"
ENV_NAMESPACE = "BOT4_REDIS_NAMESPACE"
ENV_PROCESS = "BOT4_REDIS_PROCESS"
DEFAULT_NAMESPACE = "bot4"
# A Redis call that takes longer than this counts as Redis being unreachable:
# the pre-trade gate's own deadline (2 s) must not be the first to notice.
SOCKET_TIMEOUT = 1.0

T = TypeVar("T")


class SharedUnavailable(Bot4Error):
    """Redis is configured but cannot be reached (or answered an error)."""


def _password(env: Mapping[str, str]) -> str | None:
    value = env.get(ENV_PASSWORD)
    if value:
        return value
    path = env.get(ENV_PASSWORD_FILE)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(
                f"{ENV_PASSWORD_FILE}: cannot read {path}: {exc.strerror or exc}"
            ) from None
    return None


@attrs.frozen
class RedisConfig:
    """How to reach the shared state. Build with :meth:`from_env`."""

    url: str
    namespace: str = DEFAULT_NAMESPACE
    process: str = attrs.field(factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    password: str | None = attrs.field(default=None, repr=False)
    socket_timeout: float = SOCKET_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RedisConfig | None:
        """The configuration in the environment, or None when BOT4_REDIS_URL is unset."""
        env = os.environ if environ is None else environ
        url = env.get(ENV_URL, "").strip()
        if not url:
            return None
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"{ENV_URL}: expected redis://host:port/db (or rediss://, unix://), "
                f"got {redact(url, env)!r}"
            )
        namespace = env.get(ENV_NAMESPACE, "").strip() or DEFAULT_NAMESPACE
        if not namespace.isprintable() or any(c in namespace for c in " {}"):
            raise ConfigError(f"{ENV_NAMESPACE}: {namespace!r} is not a usable key prefix")
        process = env.get(ENV_PROCESS, "").strip()
        kwargs: dict[str, Any] = {"url": url, "namespace": namespace, "password": _password(env)}
        if process:
            kwargs["process"] = process
        return cls(**kwargs)

    @property
    def safe_url(self) -> str:
        """The URL with any password masked: the only form bot4 prints."""
        return redact(self.url)

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def client(self) -> redis.Redis:
        """A new client (its own connection pool): close it when done."""
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "health_check_interval": 0,
            "client_name": f"bot4:{self.process}"[:64].replace(" ", "_"),
        }
        if self.password is not None:
            kwargs["password"] = self.password
        return redis.Redis.from_url(self.url, **kwargs)

    def describe_error(self, exc: BaseException) -> str:
        """One line naming Redis and where it is, without any secret."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        if self.password:
            text = text.replace(self.password, "***")
        return redact(f"Redis at {self.safe_url} unreachable: {type(exc).__name__}: {text}")


class SharedConnection:
    """One client plus the thread limiter every call goes through. All
    blocking calls run in worker threads so the trio loop never waits on a
    socket; :meth:`call` turns any Redis error into :class:`SharedUnavailable`
    naming the (redacted) server."""

    def __init__(self, config: RedisConfig, *, threads: int = 4) -> None:
        self.config = config
        self.client = config.client()
        self.limiter = trio.CapacityLimiter(threads)
        self._closed = False

    def run(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(client)`` here (synchronously), errors as SharedUnavailable."""
        try:
            return fn(self.client)
        except redis.RedisError as exc:
            raise SharedUnavailable(self.config.describe_error(exc)) from None
        except OSError as exc:
            raise SharedUnavailable(self.config.describe_error(exc)) from None

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """Run ``fn(client)`` in a worker thread."""
        return await trio.to_thread.run_sync(self.run, fn, limiter=self.limiter)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> SharedConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
