"""Where the shared state lives: the Redis URL, its password and the key namespace.

Configuration comes from the environment only:

* ``BOT4_REDIS_URL``: unset means no Redis (bot4 runs single-process as
  before); otherwise one of three deployments (see the README, "Which Redis"):

  - ``redis://host:6379/0`` (``rediss://`` for TLS, ``unix://``): one server;
  - ``redis+sentinel://host:26379,host:26380,host:26381/mymaster/0``: a
    Sentinel set that names the master of service ``mymaster``; the client
    asks the sentinels for the master and, after a failover, for the new
    one (``rediss+sentinel://`` for TLS to the data nodes);
  - ``redis+cluster://host:7000,host:7001,host:7002``: a Redis Cluster (any
    of its nodes; the client learns the rest). Every key is then under the
    hash tag ``{<namespace>}`` (``{bot4}:budget:res``), so all of bot4's keys
    live in one slot and each Lua script's keys are on the node it runs on.
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
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import unquote

import attrs
import redis
import trio
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from bot4.errors import Bot4Error, ConfigError
from bot4.secrets import redact

ENV_URL = "BOT4_REDIS_URL"
ENV_PASSWORD = "BOT4_REDIS_PASSWORD"
ENV_PASSWORD_FILE = "BOT4_REDIS_PASSWORD_FILE"
ENV_NAMESPACE = "BOT4_REDIS_NAMESPACE"
ENV_PROCESS = "BOT4_REDIS_PROCESS"
DEFAULT_NAMESPACE = "bot4"
SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
_SCHEMES = {
    "redis://": SINGLE,
    "rediss://": SINGLE,
    "unix://": SINGLE,
    "redis+sentinel://": SENTINEL,
    "rediss+sentinel://": SENTINEL,
    "redis+cluster://": CLUSTER,
    "rediss+cluster://": CLUSTER,
}
# A Redis call that takes longer than this counts as Redis being unreachable:
# the pre-trade gate's own deadline (2 s) must not be the first to notice.
SOCKET_TIMEOUT = 1.0

T = TypeVar("T")


class _Endpoints(NamedTuple):
    hosts: tuple[tuple[str, int], ...]
    service: str  # a sentinel set's master name
    db: int
    password: str | None  # from the URL
    tls: bool


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
        if not url.startswith(tuple(_SCHEMES)):
            raise ConfigError(
                f"{ENV_URL}: expected redis://host:port/db (or rediss://, unix://), "
                "redis+sentinel://host:port,.../service/db or redis+cluster://host:port,..., "
                f"got {redact(url, env)!r}"
            )
        namespace = env.get(ENV_NAMESPACE, "").strip() or DEFAULT_NAMESPACE
        if not namespace.isprintable() or any(c in namespace for c in " {}"):
            raise ConfigError(f"{ENV_NAMESPACE}: {namespace!r} is not a usable key prefix")
        process = env.get(ENV_PROCESS, "").strip()
        kwargs: dict[str, Any] = {"url": url, "namespace": namespace, "password": _password(env)}
        if process:
            kwargs["process"] = process
        config = cls(**kwargs)
        config.endpoints()  # a malformed host list fails here, naming the variable
        return config

    @property
    def mode(self) -> str:
        """``single``, ``sentinel`` or ``cluster``, from the URL's scheme."""
        for scheme, mode in _SCHEMES.items():
            if self.url.startswith(scheme):
                return mode
        return SINGLE

    @property
    def prefix(self) -> str:
        """What every key starts with: the namespace, hash-tagged on a cluster."""
        return f"{{{self.namespace}}}" if self.mode == CLUSTER else self.namespace

    def endpoints(self) -> _Endpoints:
        """Hosts, service, db and URL password of a sentinel or cluster URL."""
        if self.mode == SINGLE:
            return _Endpoints((), "", 0, None, self.url.startswith("rediss"))
        rest = self.url.split("://", 1)[1]
        password: str | None = None
        if "@" in rest.split("/", 1)[0]:
            auth, rest = rest.split("@", 1)
            password = unquote(auth.rsplit(":", 1)[-1]) or None
        hosts_part, _, path = rest.partition("/")
        hosts: list[tuple[str, int]] = []
        for item in hosts_part.split(","):
            host, sep, port = item.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"{ENV_URL}: {redact(item, {})!r} is not host:port in {self.safe_url}"
                )
            hosts.append((host.strip("[]"), int(port)))
        parts = [p for p in path.split("/") if p]
        service, db = "", 0
        if self.mode == SENTINEL:
            if not parts:
                raise ConfigError(
                    f"{ENV_URL}: a sentinel URL names the service: "
                    f"redis+sentinel://host:port,.../mymaster/0, got {self.safe_url}"
                )
            service = parts[0]
            parts = parts[1:]
        if parts:
            if len(parts) > 1 or not parts[0].isdigit():
                raise ConfigError(f"{ENV_URL}: bad database number in {self.safe_url}")
            db = int(parts[0])
            if self.mode == CLUSTER and db != 0:
                raise ConfigError(f"{ENV_URL}: a Redis Cluster has only database 0")
        return _Endpoints(tuple(hosts), service, db, password, self.url.startswith("rediss"))

    @property
    def safe_url(self) -> str:
        """The URL with any password masked: the only form bot4 prints."""
        return redact(self.url)

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def client(self) -> redis.Redis:
        """A new client (its own connection pool): close it when done. For a
        sentinel URL, a client of the current master that follows failovers;
        for a cluster, a cluster client (typed as a Redis: bot4 only calls
        commands both have)."""
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "client_name": f"bot4:{self.process}"[:64].replace(" ", "_"),
        }
        mode = self.mode
        if mode == SINGLE:
            if self.password is not None:
                kwargs["password"] = self.password
            return redis.Redis.from_url(self.url, health_check_interval=0, **kwargs)
        ends = self.endpoints()
        password = ends.password or self.password
        if password is not None:
            kwargs["password"] = password
        if ends.tls:
            kwargs["ssl"] = True
        if mode == SENTINEL:
            # redis-py leaves Sentinel, master_for and ClusterNode unannotated.
            sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(ends.hosts),
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                # The sentinels themselves: the same password when one is set
                # (Sentinel's requirepass), never the client name's prefix.
                sentinel_kwargs={"password": password} if password else {},
            )
            master = sentinel.master_for(ends.service, db=ends.db, **kwargs)  # type: ignore[no-untyped-call]
            return cast(redis.Redis, master)
        nodes = [ClusterNode(host, port) for host, port in ends.hosts]  # type: ignore[no-untyped-call]
        return cast(redis.Redis, RedisCluster(startup_nodes=nodes, **kwargs))

    def describe_error(self, exc: BaseException) -> str:
        """One line naming Redis and where it is, without any secret."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        for secret in (self.password, self.endpoints().password):
            if secret:
                text = text.replace(secret, "***")
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
