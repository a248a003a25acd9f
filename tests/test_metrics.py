"""Prometheus metrics: a real ``bot4 run --metrics-port`` scraped over HTTP
while it runs, an in-process session whose final figures match the kernel's
own counts, and the bounds on label values."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
from prometheus_client.parser import text_string_to_metric_families

from bot4.metrics import OTHER, Metrics, _Bounded
from bot4.session import SessionConfig, SessionResult, StrategyConfig, run_session
from tests.conftest import REPO, write_ticks

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOLS = {"BTC-USDT", "ETH-USDT"}
STRATEGY = StrategyConfig(
    "sma_cross",
    {"fast": 10, "slow": 60, "size": "0.01", "stop_loss_pct": "2", "take_profit_pct": "4"},
)
CONFIG = """
strategies:
  - name: sma_cross
    params: {fast: 10, slow: 60, size: "0.01", stop_loss_pct: "2", take_profit_pct: "4"}
"""
# Order, fill and correlation ids look like "s1-e-12"; none may be a label value.
ORDER_ID = re.compile(r"^s\d*-[a-z]-\d+$")
# Generous deadlines: they only bound a broken run, a healthy one is far faster.
DEADLINE_S = 90.0

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Exposition text -> sample name -> [(labels, value)]; the parser
    rejects anything that is not valid Prometheus text format."""
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((dict(s.labels), s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    found = [
        v for lbl, v in samples.get(name, []) if all(lbl.get(k) == w for k, w in labels.items())
    ]
    assert found, f"no sample {name}{labels}; have {sorted(samples)}"
    return sum(found)


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers.get("Content-Type", ""), response.read().decode()


def assert_bounded_labels(samples: Samples) -> None:
    """No id-like label values, few values per label, few series overall."""
    per_label: dict[tuple[str, str], set[str]] = defaultdict(set)
    series = 0
    for name, rows in samples.items():
        for labels, _ in rows:
            series += 1
            for key, val in labels.items():
                assert not ORDER_ID.match(val), f"{name} carries an order id label {key}={val}"
                per_label[(name, key)].add(val)
    assert series < 600, f"{series} series"
    for (name, key), values in per_label.items():
        limit = 40 if key == "le" else 12  # histogram buckets, else a handful
        assert len(values) <= limit, f"{name}{{{key}}} has {len(values)} values: {values}"
    for name in ("bot4_orders_total", "bot4_fills_total", "bot4_exposure"):
        symbols = {labels["symbol"] for labels, _ in samples.get(name, [])}
        assert symbols <= SYMBOLS, symbols


# --- the real command, scraped over HTTP while it runs --------------------------


def _wait_for(what: str, proc: subprocess.Popen[bytes], check: object) -> object:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = check()  # type: ignore[operator]
        if result:
            return result
        assert proc.poll() is None, f"bot4 run exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {DEADLINE_S:g} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``bot4 run --metrics-port 0`` paced at 20x: the 50 minutes of data take
    2.5 minutes of wall time, far longer than the scrapes need; the process is
    stopped when the tests are done."""
    tmp = tmp_path_factory.mktemp("metrics-live")
    data = write_ticks(tmp / "ticks.csv")
    config = tmp / "session.yaml"
    config.write_text(CONFIG)
    stderr = tmp / "stderr.txt"
    with stderr.open("wb") as err, (tmp / "stdout.txt").open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bot4", "run", "--data", str(data)),
                *("--config", str(config), "--out", str(tmp / "out"), "--no-chart"),
                *("--speed", "20", "--metrics-port", "0"),
            ],
            stdout=out,
            stderr=err,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:

        def announced() -> str | None:
            found = re.search(r"metrics: (http://\S+/metrics)", stderr.read_text())
            return found.group(1) if found else None

        url = _wait_for("metrics address on stderr", proc, announced)
        assert isinstance(url, str)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_running_session_serves_metrics(live: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = live
    assert url.startswith("http://127.0.0.1:"), "binds to loopback unless told otherwise"

    def trading() -> Samples | None:
        content_type, text = scrape(url)
        assert content_type.startswith("text/plain"), content_type
        samples = parse(text)
        fills = sum(v for _, v in samples.get("bot4_fills_total", []))
        return samples if fills > 0 else None

    samples = _wait_for("fills in the metrics", proc, trading)
    assert isinstance(samples, dict)
    assert value(samples, "bot4_session_running") == 1
    assert value(samples, "bot4_session_info", session_id="s1", exchange="paper") == 1
    assert value(samples, "bot4_ticks_total") > 0
    assert value(samples, "bot4_decisions_total", outcome="approved", rule="none") > 0
    assert value(samples, "bot4_orders_total", exchange="paper") > 0
    assert value(samples, "bot4_decision_latency_seconds_count") > 0
    latency = value(samples, "bot4_decision_latency_seconds_sum") / value(
        samples, "bot4_decision_latency_seconds_count"
    )
    assert 0 < latency < 1.0
    equity = value(samples, "bot4_equity")
    assert 9000 < equity < 11000
    assert value(samples, "bot4_pnl") == pytest.approx(equity - 10000, abs=0.01)
    assert 0 <= value(samples, "bot4_drawdown_ratio") < 1
    assert value(samples, "bot4_leverage") >= 0
    assert value(samples, "bot4_breaker_tripped") in (0, 1)
    assert value(samples, "bot4_plugin_load_failures") == 0
    # Registered before the journal writes anything: a panel has a series.
    assert value(samples, "bot4_journal_write_seconds_count") == 0
    subscribers = {labels["subscriber"] for labels, _ in samples["bot4_bus_queue_depth"]}
    assert {"recorder", "metrics"} <= subscribers
    for kind in ("emergency_close", "reduce_position", "add_margin", "trip_breaker"):
        assert value(samples, "bot4_risk_actions_total", kind=kind) >= 0
    assert_bounded_labels(samples)


def test_counters_advance_between_scrapes(live: tuple[str, subprocess.Popen[bytes]]) -> None:
    url, proc = live
    first = value(parse(scrape(url)[1]), "bot4_ticks_total")
    _wait_for(
        "ticks to advance",
        proc,
        lambda: value(parse(scrape(url)[1]), "bot4_ticks_total") > first,
    )


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "bot4", "run", "--metrics-port", str(port)),
                *("--out", str(tmp_path / "out"), "--no-chart"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


# --- in process: the final figures equal the kernel's own ------------------------


def run_with_metrics(tmp: Path, seconds: int = 900) -> tuple[Metrics, SessionResult]:
    """A short real paper session (sma_cross, default rules) feeding Metrics."""
    data = write_ticks(tmp / "ticks.csv", seconds)
    config = SessionConfig(data=str(data), strategies=(STRATEGY,), out=str(tmp / "out"))
    metrics = Metrics()
    result = trio.run(lambda: run_session(config, metrics=metrics))
    return metrics, result


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Metrics, SessionResult]:
    return run_with_metrics(tmp_path_factory.mktemp("metrics-session"))


def test_final_figures_match_the_kernel(finished: tuple[Metrics, SessionResult]) -> None:
    metrics, result = finished
    stats = result.stats
    with metrics.serve(0) as server:
        samples = parse(scrape(server.url)[1])
    assert value(samples, "bot4_session_running") == 0
    assert value(samples, "bot4_ticks_total") == stats.ticks == 1800
    assert value(samples, "bot4_signals_total") == stats.signals
    assert value(samples, "bot4_decisions_total", outcome="approved") == stats.approved > 0
    assert value(samples, "bot4_decisions_total", outcome="rejected") == stats.rejected > 0
    for rule, count in stats.rejections_by_rule.items():
        assert value(samples, "bot4_decisions_total", outcome="rejected", rule=rule) == count
    for kind, count in stats.actions.items():
        assert value(samples, "bot4_risk_actions_total", kind=kind) == count
    assert value(samples, "bot4_breaker_trips_total") == stats.breaker_trips
    assert value(samples, "bot4_liquidations_total") == stats.liquidations
    # Every gate decision is timed; min-qty and kill-switch rejections never
    # reach the gate, so the histogram counts at most the decisions.
    assert (
        0 < value(samples, "bot4_decision_latency_seconds_count") <= stats.approved + stats.rejected
    )
    # The metrics observer lost nothing, so its event counts are exact too.
    assert value(samples, "bot4_bus_dropped_events_total", subscriber="metrics") == 0
    assert value(samples, "bot4_fills_total") == stats.fills > 0
    assert value(samples, "bot4_orders_total") == stats.approved - stats.exchange_refusals
    assert value(samples, "bot4_equity") == pytest.approx(float(result.report.tracker.equity))
    assert_bounded_labels(samples)


def test_metrics_have_their_own_registry(finished: tuple[Metrics, SessionResult]) -> None:
    from prometheus_client import REGISTRY

    metrics, _ = finished
    assert metrics.registry is not REGISTRY
    assert not any(f.name.startswith("bot4_") for f in REGISTRY.collect())
    # A second instance in the same process does not clash with the first.
    Metrics().observe_journal_write(0.002)


def test_journal_latency_before_and_after_a_write() -> None:
    metrics = Metrics()
    assert metrics.sample_values()["bot4_journal_write_seconds_count"] == 0
    metrics.observe_journal_write(0.003)
    values = metrics.sample_values()
    assert values["bot4_journal_write_seconds_count"] == 1
    assert values['bot4_journal_write_seconds_bucket{le="0.005"}'] == 1
    assert values['bot4_journal_write_seconds_bucket{le="0.001"}'] == 0


def test_orders_and_fills_are_counted_in_publish_order() -> None:
    # A scrape may come between any two handler calls: at every one, no
    # more fills may be counted than orders placed before them. (With one
    # subscription per topic, trio ran the two delivery tasks in either
    # order, and a scrape could see a fill before its order.)
    from bot4.bus import open_bus
    from bot4.model import Fill, Order, OrderState, OrderStatus

    metrics = Metrics()
    seen: list[tuple[float, float]] = []
    handle = metrics.handle

    def watched(event: Any) -> None:
        handle(event)
        values = metrics.sample_values()

        def total(name: str) -> float:
            return sum(v for k, v in values.items() if k.split("{")[0] == name)

        seen.append((total("bot4_orders_total"), total("bot4_fills_total")))

    metrics.handle = watched  # type: ignore[method-assign]

    async def main() -> None:
        async with open_bus() as bus:
            metrics.attach(bus, exchange="paper")
            assert [s.name for s in metrics.subscriptions] == ["metrics"]
            for i in range(200):
                order = Order(f"c{i}", "BTC-USDT", "buy", "market", Decimal(1))
                state = OrderState(order=order, status=OrderStatus.FILLED, filled_qty=Decimal(1))
                fill = Fill(
                    f"f{i}", f"c{i}", "BTC-USDT", "buy", Decimal(1), Decimal(100), Decimal(0), T0
                )
                await bus.publish("order.placed", state, ts=i)
                await bus.publish("fill.BTC-USDT", fill, ts=i)
                bus.post("market.BTC-USDT", None, ts=i)  # not routed to the metrics at all
                await trio.lowlevel.checkpoint()
            await bus.drain()

    trio.run(main)
    assert seen[-1] == (200, 200)
    assert all(fills <= orders for orders, fills in seen)
    assert len(seen) == 400


def test_label_values_are_capped() -> None:
    bounded = _Bounded(3)
    assert [bounded(v) for v in ("a", "b", "a", "c", "d", "e", "b")] == [
        "a",
        "b",
        "a",
        "c",
        OTHER,
        OTHER,
        "b",
    ]
