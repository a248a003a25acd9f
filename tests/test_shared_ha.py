"""Shared risk state on a Redis Cluster and on a Sentinel set (issue 16).

Both deployments are real: the fixtures start three cluster nodes, or a
master, a replica and three sentinels, on loopback ports
(:mod:`tests.redis_ha_kit`), and stop them after the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from bot4.errors import ConfigError
from bot4.shared.breaker import BreakerListener, SharedBreaker
from bot4.shared.budget import BudgetLimits, SharedBudget
from bot4.shared.connection import RedisConfig, SharedConnection, SharedUnavailable
from tests.conftest import run_bot4
from tests.redis_ha_kit import ClusterSet, SentinelSet
from tests.shared_kit import namespace, url

__all__ = ["namespace", "url"]  # fixtures

D = Decimal
SYMBOL = "BTC-USDT"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSet]:
    nodes = ClusterSet(tmp_path)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    group = SentinelSet(tmp_path)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def test_urls_name_the_deployment() -> None:
    cluster = RedisConfig.from_env({"BOT4_REDIS_URL": "redis+cluster://a:7000,b:7001"})
    assert cluster is not None
    assert cluster.mode == "cluster"
    assert cluster.key("breaker") == "{bot4}:breaker"  # one hash tag: one slot
    assert cluster.endpoints().hosts == (("a", 7000), ("b", 7001))
    sentinel = RedisConfig.from_env(
        {"BOT4_REDIS_URL": "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2"}
    )
    assert sentinel is not None
    ends = sentinel.endpoints()
    assert (sentinel.mode, ends.service, ends.db, ends.password) == (
        "sentinel",
        "mymaster",
        2,
        "pw",
    )
    assert sentinel.key("breaker") == "bot4:breaker"  # as a single server: same keys
    assert "pw" not in sentinel.safe_url
    for bad, why in [
        ("redis+sentinel://s1:26379", "names the service"),
        ("redis+cluster://a:70000", "is not host:port"),
        ("redis+cluster://a:7000/3", "only database 0"),
    ]:
        with pytest.raises(ConfigError, match=why):
            RedisConfig.from_env({"BOT4_REDIS_URL": bad})


def _all_keys(cluster: ClusterSet, prefix: str) -> list[str]:
    keys: list[str] = []
    for node in cluster.nodes:
        keys += node.client().keys(f"{prefix}:*")
    return keys


def test_budget_breaker_and_listener_work_on_a_cluster(cluster: ClusterSet) -> None:
    config = RedisConfig(url=cluster.url, namespace="desk", process="p1")
    heard: list[tuple[str, dict[str, Any]]] = []
    connected = threading.Event()

    def forward(kind: str, message: dict[str, Any]) -> None:
        heard.append((kind, message))
        if kind == "connected":
            connected.set()

    listener = BreakerListener(config, forward)
    listener.start()
    try:
        with SharedConnection(config) as conn:
            budget = SharedBudget(conn, BudgetLimits(max_exposure=D(1000)))
            assert budget.reserve_sync("o1", SYMBOL, D(600), D(1000)).ok
            assert budget.reserve_sync("o2", SYMBOL, D(600), D(1000)).code == "exposure"
            assert budget.settle_sync("o1", SYMBOL, D(600), D(600)) == D(0)
            figures = budget.figures_sync()  # a MULTI pipeline on the one slot
            assert (figures.exposure, figures.reserved, figures.processes) == (D(600), D(0), 1)
            assert connected.wait(10)
            breaker = SharedBreaker(conn)
            breaker.change_sync("trip", "drawdown 16%", "test")
            assert breaker.state_sync().tripped
            deadline = time.monotonic() + 10
            while not any(k == "message" for k, _ in heard) and time.monotonic() < deadline:
                time.sleep(0.05)
            messages = [m for k, m in heard if k == "message"]
            assert messages
            assert messages[0]["action"] == "trip"
        # Every key bot4 wrote is under the hash tag, so in one slot.
        keys = _all_keys(cluster, "{desk}")
        assert len(keys) >= 5
        probe = RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
        try:
            assert len({probe.keyslot(k) for k in keys}) == 1
        finally:
            probe.close()
    finally:
        listener.stop()


def test_breaker_status_and_trip_from_the_command_line_on_a_cluster(cluster: ClusterSet) -> None:
    env = {"BOT4_REDIS_URL": cluster.url, "BOT4_REDIS_NAMESPACE": "cli"}
    tripped = run_bot4("breaker", "trip", "--reason", "operator test", env=env)
    assert tripped.returncode == 0, tripped.stderr
    status = run_bot4("breaker", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["tripped"] is True
    assert state["reason"] == "operator test"
    assert state["namespace"] == "cli"


def test_a_failover_fails_closed_then_resumes_with_the_state(sentinels: SentinelSet) -> None:
    config = RedisConfig(url=sentinels.url, namespace="ha", process="p1")
    with SharedConnection(config) as conn:
        budget = SharedBudget(conn, BudgetLimits(max_exposure=D(1000)))
        breaker = SharedBreaker(conn)
        assert budget.reserve_sync("o1", SYMBOL, D(400), D(1000)).ok
        breaker.change_sync("trip", "three stop-outs", "p1")
        # What a write has to survive a failover: being on the replica (bot4's
        # own recovery re-pushes a process's reservations and a local trip if
        # a failover loses the last writes; see the README).
        assert conn.client.wait(1, 2000) == 1
        old = sentinels.master_port()
        assert sentinels.master is not None
        sentinels.master.stop()
        # The master is gone and not yet replaced: calls fail, and fail closed.
        with pytest.raises(SharedUnavailable, match="unreachable"):
            budget.reserve_sync("o2", SYMBOL, D(100), D(1000))
        started = time.monotonic()
        new = sentinels.failover()
        assert new != old
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = budget.reserve_sync("o3", SYMBOL, D(700), D(1000))
                break
            except SharedUnavailable:
                time.sleep(0.2)
        resumed = time.monotonic() - started
        # On the new master: the reservation from before counts (400 + 700 > 1000)
        # and the breaker is still tripped.
        assert answer is not None, "bot4 did not reconnect to the new master"
        assert answer.code == "exposure"
        assert budget.figures_sync().reserved == D(400)
        assert breaker.state_sync().tripped
        assert resumed < 30
    direct = redis.Redis(port=new, decode_responses=True)
    try:
        assert direct.hget("ha:breaker", "tripped") == "1"
    finally:
        direct.close()


def test_breaker_status_lists_processes_by_live_lease(url: str, namespace: str) -> None:
    # url/namespace: the machine's own Redis (tests.shared_kit fixtures).
    with (
        SharedConnection(RedisConfig(url=url, namespace=namespace, process="gone")) as c1,
        SharedConnection(RedisConfig(url=url, namespace=namespace, process="alive")) as c2,
    ):
        SharedBudget(c1, lease=0.3).heartbeat_sync(D(1000))
        SharedBudget(c2, lease=30).heartbeat_sync(D(1000))
        time.sleep(0.6)  # the first lease has expired; its name is still registered
        assert c1.client.sismember(f"{namespace}:procs", "gone")
    env = {"BOT4_REDIS_URL": url, "BOT4_REDIS_NAMESPACE": namespace}
    shown = json.loads(run_bot4("breaker", "status", "--json", env=env).stdout)
    assert shown["processes"] == ["alive"]
    assert 25 < shown["leases"]["alive"] <= 30
    text = run_bot4("breaker", "status", env=env).stdout
    assert "processes: 1 live by lease (alive, lease " in text
