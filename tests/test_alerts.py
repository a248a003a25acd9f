"""The alert rules and the alert route, with the real tools.

* ``promtool test rules deploy/prometheus/alerts_test.yml``: every alert and
  the dashboard's status expression against series as bot4 exports them;
* every alert is covered by a test case, carries a severity and a summary,
  and reads only metrics a real session exports;
* ``amtool check-config`` on the Alertmanager config;
* the whole route, natively (no Docker here): Debian's Prometheus and
  Alertmanager run with the project's configs (targets pointed at loopback
  ports), scraping a real ``bot4 run`` of the stress example; the breaker
  trips, the alert reaches a webhook receiver through Alertmanager, bot4's
  own webhook notification reaches another, and a SIGTERM then stops the
  session cleanly with its summary written.

promtool, amtool, prometheus and prometheus-alertmanager come from Debian's
``prometheus`` and ``prometheus-alertmanager`` packages: missing, the tests
skip with that reason, and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot4.testing.webhook import WebhookReceiver
from tests.conftest import REPO, service_missing

# The session fixture of test_deploy, shared (a fixture is found by its name).
from tests.test_deploy import (
    ALERTMANAGER,
    ALERTS,
    PROMETHEUS,
    live_registry,  # noqa: F401 - used as a fixture
    metric_names,
)

ALERTS_TEST = ALERTS.parent / "alerts_test.yml"
STRESS = REPO / "examples" / "stress" / "session.yaml"
# The stress example's 5 hours of data trip the breaker 3.9 hours in: at this
# pace that is about a minute in, and the data ends some 15 s later.
SPEED = "240"
DEADLINE_S = 240.0


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        service_missing(name, f"not installed (Debian: apt-get install {package})")
    assert found is not None
    return found


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_promtool_unit_tests_pass() -> None:
    promtool = tool("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_catches_a_wrong_rule(tmp_path: Path) -> None:
    """The unit tests can fail: a breaker alert that never fires is caught."""
    promtool = tool("promtool", "prometheus")
    broken = ALERTS.read_text().replace(
        'bot4_breaker_info{state="tripped"}) == 1', 'bot4_breaker_info{state="tripped"}) == 2'
    )
    assert broken != ALERTS.read_text()
    (tmp_path / ALERTS.name).write_text(broken)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "Bot4BreakerTripped" in result.stdout + result.stderr


def test_every_alert_is_tested_and_says_what_to_do(live_registry: set[str]) -> None:  # noqa: F811
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    # An alert case that expects it to fire, for every alert.
    firing = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = [r for r in rules() if "alert" in r]
    names = {r["alert"] for r in alerts}
    assert names == tested, f"untested alerts: {names - tested}"
    assert names - {"Bot4BusDroppingEvents"} <= firing, names - firing
    required = {
        "Bot4Down",
        "Bot4FeedStale",
        "Bot4BreakerTripped",
        "Bot4KillSwitch",
        "Bot4DrawdownWarning",
        "Bot4JournalLag",
        "Bot4ExchangeErrors",
        "Bot4LiquidationRiskAction",
    }
    assert required <= names
    for rule in alerts:
        assert rule["labels"]["severity"] in ("page", "warn"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= live_registry, f"{rule['alert']} reads {used - live_registry}"


def _amtool_config(tmp_path: Path, url: str) -> Path:
    """The project's Alertmanager config, for the installed Alertmanager:
    Debian's 0.25 predates ``url_file`` (0.26), so the URL is written in a copy."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook.pop("url_file") == "/run/secrets/alert_webhook_url"
            hook["url"] = url
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_alertmanager_config_is_valid(tmp_path: Path) -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    path = _amtool_config(tmp_path, "http://127.0.0.1:9/hook")
    result = subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The route pages and warns through the webhook, bot-down first.
    routed = subprocess.run(
        [amtool, "config", "routes", "test", "--config.file", str(path), "severity=page"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert routed.stdout.strip() == "webhook", routed.stdout + routed.stderr


# --- the route, end to end --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait(what: str, check: Any, procs: list[subprocess.Popen[bytes]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None and proc.args[0] != sys.executable:
                raise AssertionError(
                    f"{proc.args[0]} exited ({proc.returncode}) waiting for {what}"
                )
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    prometheus = tool("prometheus", "prometheus")
    alertmanager = tool("prometheus-alertmanager", "prometheus-alertmanager")
    alert_hook = WebhookReceiver()
    bot_hook = WebhookReceiver()
    ports = {name: free_port() for name in ("bot4", "prometheus", "alertmanager")}
    # Alertmanager: the project's config, the URL written in (see _amtool_config),
    # and a 1 s group_wait so the test does not sit out the production 10 s.
    am_config = _amtool_config(tmp_path, alert_hook.url("/alerts"))
    loaded = yaml.safe_load(am_config.read_text())
    loaded["route"]["group_wait"] = "1s"
    am_config.write_text(yaml.safe_dump(loaded))
    # Prometheus: the project's config and rules, the compose host names
    # pointed at loopback ports, scraping and evaluating every second.
    text = PROMETHEUS.read_text()
    text = text.replace("bot4:9464", f"127.0.0.1:{ports['bot4']}")
    text = text.replace("alertmanager:9093", f"127.0.0.1:{ports['alertmanager']}")
    text = text.replace("localhost:9090", f"127.0.0.1:{ports['prometheus']}")
    text = re.sub(r"scrape_interval: \S+", "scrape_interval: 1s", text)
    text = re.sub(r"scrape_timeout: \S+", "scrape_timeout: 1s", text)
    text = re.sub(r"evaluation_interval: \S+", "evaluation_interval: 1s", text)
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "prometheus.yml").write_text(text)
    shutil.copy(ALERTS, tmp_path / "prom" / ALERTS.name)
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("am", "prom", "bot4")}
    try:
        procs.append(
            subprocess.Popen(
                [
                    alertmanager,
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'am-data'}",
                    f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
                    "--cluster.listen-address=",
                ],
                stdout=logs["am"],
                stderr=subprocess.STDOUT,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={tmp_path / 'prom' / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                    f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                ],
                stdout=logs["prom"],
                stderr=subprocess.STDOUT,
            )
        )
        yield {
            "tmp": tmp_path,
            "ports": ports,
            "procs": procs,
            "alert_hook": alert_hook,
            "bot_hook": bot_hook,
            "bot4_log": logs["bot4"],
        }
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in logs.values():
            log.close()
        alert_hook.close()
        bot_hook.close()


def test_breaker_alert_reaches_a_person(stack: dict[str, Any]) -> None:
    ports = stack["ports"]
    prom = f"http://127.0.0.1:{ports['prometheus']}"
    out = stack["tmp"] / "out"
    env = {
        **os.environ,
        "BOT4_DATABASE_URL": "",
        "BOT4_REDIS_URL": "",
        "BOT4_WEBHOOK_URL": stack["bot_hook"].url("/bot4"),
    }
    bot4 = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot4",
            "run",
            "--config",
            str(STRESS.relative_to(REPO)),
            "--out",
            str(out),
            "--no-chart",
            "--speed",
            SPEED,
            "--metrics-port",
            str(ports["bot4"]),
        ],
        cwd=REPO,
        env=env,
        stdout=stack["bot4_log"],
        stderr=subprocess.STDOUT,
    )
    procs = [*stack["procs"], bot4]
    try:

        def targets_up() -> bool:
            active = get_json(f"{prom}/api/v1/targets")["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health == {"bot4": "up", "prometheus": "up", "alertmanager": "up"}

        wait("every target up", targets_up, procs, 60)

        def running() -> bool:
            # The recording rule is evaluated on its own interval: after the
            # first scrape it may still hold the value from before (DOWN).
            status = get_json(f"{prom}/api/v1/query?query=bot4:status")["data"]["result"]
            return bool(status) and status[0]["value"][1] == "1"  # RUNNING

        wait("bot4:status reads RUNNING", running, procs, 30)

        def alert_arrived() -> list[Any]:
            return [
                alert
                for body in stack["alert_hook"].bodies()
                for alert in body.get("alerts", [])
                if alert["labels"]["alertname"] == "Bot4BreakerTripped"
                and alert["status"] == "firing"
            ]

        (alert, *_) = wait("the breaker alert at the webhook", alert_arrived, procs, DEADLINE_S)
        assert alert["labels"]["severity"] == "page"
        assert "stop-outs" in alert["labels"]["reason"]
        assert alert["annotations"]["summary"].startswith("circuit breaker tripped: ")
        # bot4 said it too, on its own webhook.
        bodies = stack["bot_hook"].bodies()
        assert any(b["event"] == "breaker_trip" for b in bodies), bodies
        tripped = get_json(f"{prom}/api/v1/query?query=bot4:status")["data"]["result"]
        assert tripped[0]["value"][1] == "2"  # TRIPPED
        # SIGTERM: a clean stop, the summary written, the end notified.
        assert bot4.poll() is None, "the session ended before the alert arrived"
        bot4.send_signal(signal.SIGTERM)
        assert bot4.wait(timeout=60) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["breaker_trips"] == 1
        assert any(b["event"] == "session_end" for b in stack["bot_hook"].bodies())
        # Prometheus sees it go: DOWN.
        wait(
            "status DOWN",
            lambda: (
                get_json(f"{prom}/api/v1/query?query=bot4:status")["data"]["result"][0]["value"][1]
                == "0"
            ),
            stack["procs"],
            30,
        )
    finally:
        if bot4.poll() is None:
            bot4.kill()
            bot4.wait()
