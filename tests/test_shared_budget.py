"""The shared risk budget against a real Redis (skips locally without one,
fails under CI=true): the Lua scripts, the gate check, the facts pack, and
several processes competing for one limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from bot4.contracts import FactContext
from bot4.errors import ConfigError
from bot4.model import Order, OrderType, Portfolio, Side
from bot4.shared.budget import BudgetLimits, SharedBudget, SharedBudgetCheck
from bot4.shared.connection import RedisConfig, SharedConnection, SharedUnavailable
from bot4.shared.facts import FACTS, SharedFacts
from tests.conftest import REPO
from tests.shared_kit import free_port, namespace, url

__all__ = ["namespace", "url"]  # fixtures

D = Decimal
SYMBOL = "BTC-USDT"


def _config(url: str, ns: str, process: str = "p1") -> RedisConfig:
    return RedisConfig(url=url, namespace=ns, process=process)


def _order(cid: str, qty: str = "1", *, reduce_only: bool = False, symbol: str = SYMBOL) -> Order:
    return Order(cid, symbol, Side.BUY, OrderType.MARKET, D(qty), reduce_only=reduce_only)


# --- configuration ------------------------------------------------------------


def test_config_from_env(tmp_path: Path) -> None:
    assert RedisConfig.from_env({}) is None
    secret = tmp_path / "pw"
    secret.write_text("s3cret-file\n")
    config = RedisConfig.from_env(
        {
            "BOT4_REDIS_URL": "redis://127.0.0.1:6379/0",
            "BOT4_REDIS_PASSWORD_FILE": str(secret),
            "BOT4_REDIS_NAMESPACE": "desk1",
            "BOT4_REDIS_PROCESS": "bot-a",
        }
    )
    assert config is not None
    assert (config.password, config.namespace, config.process) == ("s3cret-file", "desk1", "bot-a")
    assert "s3cret" not in repr(config)
    assert config.key("breaker") == "desk1:breaker"
    with pytest.raises(ConfigError, match="BOT4_REDIS_URL"):
        RedisConfig.from_env({"BOT4_REDIS_URL": "http://x"})


def test_errors_never_show_the_password() -> None:
    config = RedisConfig(url=f"redis://:hunter22@127.0.0.1:{free_port()}/0", namespace="x")
    assert "hunter22" not in config.safe_url

    async def main() -> None:
        with SharedConnection(config) as conn, pytest.raises(SharedUnavailable) as caught:
            await conn.call(lambda c: c.ping())
        message = str(caught.value)
        assert "hunter22" not in message
        assert message.startswith("Redis at redis://:***@127.0.0.1:")

    trio.run(main)


def test_limits_from_env() -> None:
    limits = BudgetLimits.from_env(
        {"BOT4_SHARED_MAX_EXPOSURE": "5000", "BOT4_SHARED_MAX_LEVERAGE": "2.5"}
    )
    assert limits == BudgetLimits(D(5000), None, D("2.5"))
    with pytest.raises(ConfigError, match="BOT4_SHARED_MAX_EXPOSURE"):
        BudgetLimits.from_env({"BOT4_SHARED_MAX_EXPOSURE": "-1"})


# --- the scripts ----------------------------------------------------------------


def test_reserve_checks_every_limit_in_one_step(url: str, namespace: str) -> None:
    limits = BudgetLimits(max_exposure=D(1000), max_symbol_exposure=D(600), max_leverage=D(2))
    with SharedConnection(_config(url, namespace)) as conn:
        budget = SharedBudget(conn, limits)
        first = budget.reserve_sync("o1", SYMBOL, D(500), D(1000))
        assert (first.ok, first.code, first.used, first.equity) == (True, "ok", D(500), D(1000))
        again = budget.reserve_sync("o1", SYMBOL, D(500), D(1000))
        assert (again.ok, again.code, again.used) == (True, "held", D(500))  # idempotent
        assert budget.reserve_sync("o2", SYMBOL, D(200), D(1000)).code == "symbol"
        assert budget.reserve_sync("o3", "ETH-USDT", D(500), D(1000)).code == "ok"
        assert budget.reserve_sync("o4", "ETH-USDT", D("0.000001"), D(1000)).code == "exposure"
        # Leverage: 1000 used against 2 x equity; less equity, less room.
        budget.release_sync("o3")
        assert budget.reserve_sync("o5", "ETH-USDT", D(100), D(200)).code == "leverage"
        # A fill moves reservation into exposure; a cancel frees the rest.
        assert budget.settle_sync("o1", SYMBOL, D(300), D(300)) == D(200)
        figures = budget.figures_sync()
        assert (figures.exposure, figures.reserved) == (D(300), D(200))
        assert figures.symbol(SYMBOL).exposure == D(300)
        assert budget.release_sync("o1") == D(200)
        assert budget.held == {}
        # Selling half the position: exposure follows the book, down to 150.
        budget.settle_sync("sell-1", SYMBOL, D(150), D(150))
        assert budget.figures_sync().exposure == D(150)
        assert budget.withdraw_sync() == 0
        assert budget.figures_sync().used == 0


def test_reservations_round_up_never_down(url: str, namespace: str) -> None:
    with SharedConnection(_config(url, namespace)) as conn:
        budget = SharedBudget(conn, BudgetLimits(max_exposure=D(1)))
        assert budget.reserve_sync("a", SYMBOL, D("0.9999991")).ok
        assert not budget.reserve_sync("b", SYMBOL, D("0.0000001")).ok  # 1.000000 used


def test_dead_process_reservations_are_swept_and_restored(url: str, namespace: str) -> None:
    with (
        SharedConnection(_config(url, namespace, "dead")) as c1,
        SharedConnection(_config(url, namespace, "alive")) as c2,
    ):
        dead = SharedBudget(c1, lease=0.3)
        alive = SharedBudget(c2, lease=5)
        dead.reserve_sync("d1", SYMBOL, D(100), D(1000))
        dead.settle_sync("fill-d", SYMBOL, D(50), D(50))
        alive.reserve_sync("a1", SYMBOL, D(10), D(1000))
        assert alive.sweep_sync() == (0, 0)
        time.sleep(0.4)
        assert alive.sweep_sync() == (1, 1)
        figures = alive.figures_sync()
        # The reservation is gone; the filled exposure stays (positions outlive bots).
        assert (figures.reserved, figures.exposure, figures.processes) == (D(10), D(50), 1)
        assert figures.equity == D(1000)
        # The "dead" one was only slow: its heartbeat says so, and restore puts it back.
        assert dead.heartbeat_sync(D(1000)) is False
        assert dead.restore_sync(D(1000), {SYMBOL: D(50)}) == 1
        assert alive.figures_sync().reserved == D(110)
        assert dead.heartbeat_sync(D(1000)) is True


# --- the gate check and the facts -------------------------------------------------


def test_check_reserves_or_rejects_with_the_numbers(url: str, namespace: str) -> None:
    portfolio = Portfolio(cash=D(10_000), marks={SYMBOL: D(100)})

    async def main() -> None:
        with SharedConnection(_config(url, namespace)) as conn:
            budget = SharedBudget(conn, BudgetLimits(max_exposure=D(250)))
            check = SharedBudgetCheck(budget)
            assert await check.check(_order("a", "2"), portfolio) is None
            refused = await check.check(_order("b", "1"), portfolio)
            assert refused is not None
            assert refused.rule == "shared-budget"
            assert "shared exposure limit: 200.00 in use" in refused.reason
            assert refused.values["limit"] == "250"
            # Reduce-only orders take risk off: never held back, never reserved.
            assert await check.check(_order("c", "9", reduce_only=True), portfolio) is None
            assert budget.held == {"a": (SYMBOL, 200_000_000)}
            no_mark = await check.check(_order("d", symbol="ETH-USDT"), portfolio)
            assert no_mark is not None
            assert "no price" in no_mark.reason

    trio.run(main)


def test_check_fails_closed_naming_redis() -> None:
    config = RedisConfig(url=f"redis://127.0.0.1:{free_port()}/0", namespace="x")
    portfolio = Portfolio(cash=D(10_000), marks={SYMBOL: D(100)})

    async def main() -> None:
        with SharedConnection(config) as conn:
            check = SharedBudgetCheck(SharedBudget(conn))
            for cid in ("a", "b"):  # the second is refused without a new attempt
                refused = await check.check(_order(cid), portfolio)
                assert refused is not None
                assert refused.rule == "shared-budget"
                assert "shared risk budget unavailable" in refused.reason
                assert "Redis at redis://127.0.0.1:" in refused.reason

    trio.run(main)


def test_facts_pack_serves_a_fresh_copy_or_fails(url: str, namespace: str) -> None:
    pack = SharedFacts(max_age=0.5)
    ctx = FactContext(_order("x", "2"), Portfolio(cash=D(1000), marks={SYMBOL: D(100)}), None)
    with pytest.raises(SharedUnavailable, match="no shared risk figures"):
        pack.facts(ctx)
    with SharedConnection(_config(url, namespace)) as conn:
        budget = SharedBudget(conn)
        budget.reserve_sync("o1", SYMBOL, D(300), D(1000))
        pack.update(budget.figures_sync())
    facts = pack.facts(ctx)
    assert set(facts) == FACTS
    assert facts["shared.used"] == D(300)
    assert facts["shared.used_after"] == D(500)
    assert facts["shared.leverage"] == D("0.3")
    time.sleep(0.6)
    with pytest.raises(SharedUnavailable, match="old"):
        pack.facts(ctx)


def test_example_rule_file_compiles_with_the_pack() -> None:
    from bot4.risk import RiskPolicy
    from bot4.risk.packs import installed_packs

    policy = RiskPolicy.load(
        [REPO / "rules", REPO / "rules" / "examples" / "shared-exposure.yaml"],
        [*installed_packs(), SharedFacts()],
    )
    assert "shared-exposure" in policy.rule_names


# --- several processes ---------------------------------------------------------------


def _driver(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.shared_driver", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_three_processes_never_exceed_one_limit(url: str, namespace: str) -> None:
    limit = D(5000)
    stop = threading.Event()
    seen: list[Decimal] = []

    def watch() -> None:  # an outside observer of the shared figures
        with SharedConnection(_config(url, namespace, "watcher")) as conn:
            budget = SharedBudget(conn)
            while not stop.is_set():
                seen.append(budget.figures_sync().used)

    watcher = threading.Thread(target=watch)
    watcher.start()
    common = ["--url", url, "--namespace", namespace, "--limit", str(limit), "--notional", "10"]
    try:
        procs = [
            _driver("storm", "--process", f"p{i}", "--orders", "1000", *common) for i in range(3)
        ]
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        stop.set()
        watcher.join()
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    with SharedConnection(_config(url, namespace, "judge")) as conn:
        final = SharedBudget(conn).figures_sync()
    attempts = sum(r["approved"] + sum(r["rejected"].values()) for r in results)
    assert attempts == 3000
    assert all(set(r["rejected"]) <= {"shared-budget"} for r in results)
    assert sum(r["approved"] for r in results) > limit / 10  # cancels freed room for more
    assert max(seen) <= limit, f"limit exceeded: {max(seen)}"
    assert len(seen) > 10
    filled = sum(D(r["filled_notional"]) for r in results)
    assert final.reserved == 0
    assert final.exposure == filled  # the reservations of filled orders, exactly
    assert final.exposure == sum(D(r["position"]) for r in results)
    assert filled <= limit


def test_killed_process_releases_its_reservations_after_the_lease(url: str, namespace: str) -> None:
    lease = "1.0"
    common = ["--url", url, "--namespace", namespace, "--limit", "1000", "--lease", lease]
    victim = _driver("hold", "--process", "victim", "--orders", "50", "--notional", "10", *common)
    survivor = None
    try:
        assert victim.stdout is not None
        assert json.loads(victim.stdout.readline()) == {"ready": True, "held": 50}
        survivor = _driver(
            "hold", "--process", "survivor", "--orders", "60", "--notional", "10", *common
        )
        assert survivor.stdout is not None
        # 500 of 1000 left: the survivor gets 50 of its 60.
        assert json.loads(survivor.stdout.readline()) == {"ready": True, "held": 50}
        with SharedConnection(_config(url, namespace, "judge")) as conn:
            budget = SharedBudget(conn)
            assert budget.figures_sync().reserved == D(1000)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(10)
            killed_at = time.monotonic()
            assert budget.figures_sync().reserved == D(1000)  # held until the lease ends
            line = json.loads(survivor.stdout.readline())  # the survivor's sweep
            freed_after = time.monotonic() - killed_at
            assert line == {"swept": 1, "released": 50, "more": True}
            assert freed_after < float(lease) * 2 + 1
            figures = budget.figures_sync()
            assert figures.reserved == D(510)  # the survivor's 50 + 1 more
            assert figures.processes == 1
        assert survivor.poll() is None  # it goes on
    finally:
        for proc in (victim, survivor):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=10)
