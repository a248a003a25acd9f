"""Real Redis deployments the HA tests start and stop themselves, on loopback.

* :class:`ClusterSet`: three redis-server nodes with ``cluster-enabled``,
  joined by ``redis-cli --cluster create`` (three masters, all 16384 slots);
* :class:`SentinelSet`: a master, a replica of it, and three sentinels
  watching them (quorum 2, down after 1 s).

Each lives in a temporary directory (configs, ``nodes.conf``), keeps nothing
on disk, and is torn down by the fixture that made it. Without the
``redis-server`` / ``redis-cli`` binaries the tests skip, saying so (fail
under ``CI=true``).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from tests.conftest import service_missing
from tests.shared_kit import free_port


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        service_missing(name, "the binary is not on PATH (Debian package redis-server)")
    assert path is not None
    return path


def _wait(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{what} within {timeout:g} s" + (f" ({last})" if last else ""))


class _Server:
    def __init__(self, port: int, args: list[str], folder: Path) -> None:
        self.port = port
        self.args = args
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_binary("redis-server"), *self.args],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait(lambda: self.client().ping(), f"redis-server on port {self.port} did not start")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
        )


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, Redis's rule) is
    free too; Redis refuses a cluster port above 55535."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _data_args(port: int) -> list[str]:
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


class ClusterSet:
    """Three cluster masters on free loopback ports."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.nodes: list[_Server] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        _binary("redis-cli")
        for _ in range(3):
            port = cluster_port()
            folder = self.folder / f"node-{port}"
            folder.mkdir()
            args = [*_data_args(port), "--cluster-enabled", "yes"]
            args += ["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"]
            node = _Server(port, args, folder)
            node.start()
            self.nodes.append(node)
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create"]
            + [f"127.0.0.1:{n.port}" for n in self.nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        for node in self.nodes:
            _wait(
                lambda node=node: node.client().cluster("INFO")["cluster_state"] == "ok",
                f"cluster node {node.port} did not report cluster_state:ok",
            )

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelSet:
    """A master, its replica and three sentinels (service ``bot4test``)."""

    SERVICE = "bot4test"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.master: _Server | None = None
        self.replica: _Server | None = None
        self.sentinels: list[_Server] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> None:
        mport, rport = free_port(), free_port()
        self.master = _Server(mport, _data_args(mport), self.folder)
        self.master.start()
        self.replica = _Server(
            rport, [*_data_args(rport), "--replicaof", "127.0.0.1", str(mport)], self.folder
        )
        self.replica.start()
        _wait(
            lambda: self.replica_client().info("replication")["master_link_status"] == "up",
            "the replica did not sync with its master",
        )
        for i in range(3):
            port = free_port()
            conf = self.folder / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {mport} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            sentinel = _Server(port, [str(conf), "--sentinel"], self.folder)
            sentinel.start()
            self.sentinels.append(sentinel)
        # Every sentinel has found the replica and the other sentinels.
        for s in self.sentinels:
            _wait(
                lambda s=s: s.client().sentinel_master(self.SERVICE)["num-other-sentinels"] == 2,
                f"sentinel {s.port} did not see the other two",
            )

    def replica_client(self) -> redis.Redis:
        assert self.replica is not None
        return self.replica.client()

    def master_port(self) -> int:
        """The port the sentinels name as master now."""
        host_port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.SERVICE)
        return int(host_port[1])

    def failover(self) -> int:
        """Kill the master; wait until the sentinels promote the replica. Returns
        the new master's port."""
        assert self.master is not None
        assert self.replica is not None
        old = self.master.port
        self.master.stop()
        _wait(lambda: self.master_port() != old, "the sentinels did not fail over", 30)
        _wait(
            lambda: self.replica_client().info("replication")["role"] == "master",
            "the replica was not promoted",
        )
        return self.master_port()

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for server in (self.replica, self.master):
            if server is not None:
                server.stop()
