"""The alert rules and the alert route, with the real tools.

* ``promtool test rules deploy/prometheus/alerts_test.yml``: every alert and
  the dashboard's status expression against series as bot4 exports them;
* every alert is covered by a test case, carries a severity and a summary,
  and reads only metrics a real session exports;
* ``amtool check-config`` on the Alertmanager config.

The route end to end (Prometheus and Alertmanager running with these
configs, two real sessions, the breaker alert reaching a webhook) is
tests/test_stack.py.

promtool and amtool come from Debian's ``prometheus`` and
``prometheus-alertmanager`` packages: missing, the tests skip with that
reason, and fail under CI=true.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.stack_kit import alertmanager_config, tool

# The session fixture of test_deploy, shared (a fixture is found by its name).
from tests.test_deploy import (
    ALERTS,
    live_registry,  # noqa: F401 - used as a fixture
    metric_names,
)

ALERTS_TEST = ALERTS.parent / "alerts_test.yml"


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
    """The project's Alertmanager config with the webhook URL written in
    (tests.stack_kit.alertmanager_config says why)."""
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(alertmanager_config(url)))
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
