"""The monitoring half of the production stack, started natively for a test.

:class:`Monitoring` runs Debian's ``prometheus`` and ``prometheus-alertmanager``
with the project's own configs (``deploy/prometheus``, ``deploy/alertmanager``)
on free loopback ports, a local :class:`~bot4.testing.webhook.WebhookReceiver`
as the Alertmanager webhook. The configs are changed only where the compose
network's host names and the production pacing cannot work here: every compose
host name is pointed at a loopback port, the ``bot4`` job scrapes the ports the
test's sessions serve on, scrape and evaluation run every second and
Alertmanager waits 1 s (not 10 s) before it sends a group.

:func:`dashboard_queries` gives every PromQL expression of the Grafana
dashboard with its variables replaced as Grafana replaces them.

Used by tests/test_alerts.py and tests/test_stack.py. A missing tool skips a
test locally and fails it under CI=true (:func:`tests.conftest.service_missing`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bot4.testing.webhook import WebhookReceiver
from tests.conftest import service_missing
from tests.test_deploy import ALERTMANAGER, ALERTS, DASHBOARD, DATASOURCES, PROMETHEUS

# The secret compose mounts for Alertmanager's webhook URL.
WEBHOOK_SECRET = "/run/secrets/alert_webhook_url"

T = TypeVar("T")


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        service_missing(name, f"not installed (Debian: apt-get install {package})")
    assert found is not None
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for(
    what: str,
    check: Callable[[], T | None],
    procs: Sequence[subprocess.Popen[bytes]],
    timeout: float,
) -> T:
    """``check()``'s first truthy answer, polled every 0.5 s; fails at once if
    one of ``procs`` exits meanwhile, and after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{proc.args!r} exited ({proc.returncode}) waiting for {what}")
        try:
            got = check()
        except OSError:  # not listening yet
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def alertmanager_config(url: str) -> dict[str, Any]:
    """The project's Alertmanager config with the webhook URL written in:
    Debian's Alertmanager 0.25 predates ``url_file`` (0.26, the compose pins
    0.27), so the URL the secret file would hold goes in the config."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook.pop("url_file") == WEBHOOK_SECRET
            hook["url"] = url
    return config


def prometheus_config(
    bot4_ports: Sequence[int], prometheus_port: int, alertmanager_port: int
) -> dict[str, Any]:
    """The project's Prometheus config, its targets on loopback: the ``bot4``
    job's one target (``bot4:9464``) becomes one per session of the test."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    here = {
        "alertmanager:9093": f"127.0.0.1:{alertmanager_port}",
        "localhost:9090": f"127.0.0.1:{prometheus_port}",
    }
    for manager in config["alerting"]["alertmanagers"]:
        for static in manager["static_configs"]:
            static["targets"] = [here[t] for t in static["targets"]]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            if job["job_name"] == "bot4":
                assert static["targets"] == ["bot4:9464"], static
                static["targets"] = [f"127.0.0.1:{port}" for port in bot4_ports]
            else:
                static["targets"] = [here[t] for t in static["targets"]]
    return config


class Monitoring:
    """Prometheus and Alertmanager, running until :meth:`close`."""

    def __init__(self, tmp: Path, bot4_ports: Sequence[int]) -> None:
        prometheus = tool("prometheus", "prometheus")
        alertmanager = tool("prometheus-alertmanager", "prometheus-alertmanager")
        self.alert_hook = WebhookReceiver()
        self.prometheus_port = free_port()
        self.alertmanager_port = free_port()
        self.url = f"http://127.0.0.1:{self.prometheus_port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        am = alertmanager_config(self.alert_hook.url("/alerts"))
        am["route"]["group_wait"] = "1s"
        (tmp / "am").mkdir()
        (tmp / "am" / ALERTMANAGER.name).write_text(yaml.safe_dump(am))
        prom = prometheus_config(bot4_ports, self.prometheus_port, self.alertmanager_port)
        (tmp / "prom").mkdir()
        (tmp / "prom" / PROMETHEUS.name).write_text(yaml.safe_dump(prom))
        shutil.copy(ALERTS, tmp / "prom" / ALERTS.name)  # rule_files is relative
        self._logs = [(tmp / f"{name}.log").open("wb") for name in ("alertmanager", "prometheus")]
        try:
            self._start(
                self._logs[0],
                alertmanager,
                f"--config.file={tmp / 'am' / ALERTMANAGER.name}",
                f"--storage.path={tmp / 'am' / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
                "--cluster.listen-address=",  # no gossip port: one instance
            )
            self._start(
                self._logs[1],
                prometheus,
                f"--config.file={tmp / 'prom' / PROMETHEUS.name}",
                f"--storage.tsdb.path={tmp / 'prom' / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            )
        except BaseException:
            self.close()
            raise

    def _start(self, log: Any, *argv: str) -> None:
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (the series), as the HTTP API gives it."""
        got = get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert got["status"] == "success", got
        result: list[dict[str, Any]] = got["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = get_json(f"{self.url}/api/v1/targets")["data"][
            "activeTargets"
        ]
        return active

    def status(self) -> str | None:
        """The recording rule ``bot4:status`` the top row shows (None: no value yet)."""
        result = self.query("bot4:status")
        return str(result[0]["value"][1]) if result else None

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for log in self._logs:
            log.close()
        self.alert_hook.close()


def grafana_variables() -> dict[str, str]:
    """What Grafana puts in for the dashboard's variables when it opens it
    over its default range with the provisioned data source: ``$__range`` is
    the range; ``$__interval`` the range over the panel's points, never below
    the data source's ``timeInterval`` (the scrape interval, 5 s: at 30 min
    and ~1,000 points it is that); ``$__rate_interval`` is
    max(``$__interval`` + scrape interval, 4 x scrape interval)."""
    board = json.loads(DASHBOARD.read_text())
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    scrape = _seconds(source["jsonData"]["timeInterval"])
    start = board["time"]["from"]
    assert board["time"]["to"] == "now", board["time"]
    assert start.startswith("now-"), board["time"]
    span = _seconds(start.removeprefix("now-"))
    interval = max(scrape, span // 1000)
    return {
        "__range": f"{span}s",
        "__interval": f"{interval}s",
        "__rate_interval": f"{max(interval + scrape, 4 * scrape)}s",
    }


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(text[:-1]) * units[text[-1]]


def dashboard_queries(instance: str | None = None) -> list[tuple[str, str]]:
    """(where, expression) for every query of the dashboard: each panel's
    (where: its title) and each annotation's (where: ``annotation <name>``),
    its variables replaced; a variable left over fails. ``instance``: the
    session chosen on the dashboard (a scrape target's ``host:port``);
    None is "All", the default."""
    board = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            where = str(node.get("title") or where)
            if isinstance(node.get("expr"), str):
                found.append((where, node["expr"]))
            for child in node.values():
                walk(child, where)
        elif isinstance(node, list):
            for child in node:
                walk(child, where)

    walk(board["panels"], "panel")
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            found.append((f"annotation {annotation['name']}", annotation["expr"]))
    variables = grafana_variables()
    # The dashboard's one variable, the sessions shown: "All" (its default)
    # is its allValue, a regex matching every instance.
    (chosen,) = board["templating"]["list"]
    assert chosen["name"] == "instance", chosen
    assert chosen["current"]["value"] == ["$__all"], chosen["current"]
    variables["instance"] = chosen["allValue"] if instance is None else instance
    queries = []
    for where, expr in found:
        # Longest names first: $__rate_interval before $__range.
        for name in sorted(variables, key=len, reverse=True):
            expr = expr.replace(f"${{{name}}}", variables[name]).replace(
                f"${name}", variables[name]
            )
        assert "$" not in expr, f"{where}: a variable Grafana would fill is left in {expr!r}"
        queries.append((where, expr))
    return queries
