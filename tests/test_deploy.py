"""The production stack's files: docker-compose.yml, the Dockerfile, the
Prometheus config and Grafana's provisioning and dashboard.

No Docker engine runs here, so nothing is started. What runs always: the
files parse, every service the seed names is there with a healthcheck and its
data on a named volume, no password is written down, host ports do not clash,
and every metric the dashboard queries exists in the registry of a real
session. What runs where the tool is installed (skipped with the reason
otherwise): ``docker compose config`` / ``docker-compose config`` and
``promtool check config``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot4.metrics import Metrics
from tests.conftest import REPO
from tests.test_metrics import run_with_metrics

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "bot4.yml"
DASHBOARD = GRAFANA / "dashboards" / "bot4.json"

SEED_SERVICES = {"postgres", "timescaledb", "redis", "prometheus", "grafana", "bot4"}
# Services that keep state: each must keep it on a named volume.
STATEFUL = {"postgres": "/var/lib/postgresql/data", "timescaledb": "/var/lib/postgresql/data"}
STATEFUL |= {"redis": "/data", "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|AUTH|TOKEN", re.IGNORECASE)
REQUIRED_REF = re.compile(r"^\$\{[A-Z0-9_]+:\?[^}]+\}$")
# user:password@ in a URL, either part possibly a ${...} reference
URL_CREDENTIALS = re.compile(r"://(?:\$\{[^}]*\}|[^:/@\s]*):(\$\{[^}]*\}|[^@\s]*)@")
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)")
METRICS_PORT = "9464"


def referenced_variables() -> set[str]:
    """Variables docker-compose.yml interpolates (comments aside)."""
    lines = COMPOSE.read_text().splitlines()
    return set(VARIABLE.findall("\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))))


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def host_port(spec: str | int | dict[str, Any]) -> tuple[str, int]:
    """(host address, host port) of a short or long port mapping."""
    if isinstance(spec, dict):
        return str(spec.get("host_ip", "0.0.0.0")), int(spec["published"])
    parts = str(spec).split("/")[0].split(":")
    assert len(parts) >= 2, f"port {spec!r} publishes on a random host port"
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), int(parts[-2])


def image_major(image: str) -> int:
    tag = image.rsplit(":", 1)[1]
    match = re.match(r"v?(\d+)", tag)
    assert match, image
    return int(match.group(1))


# --- docker-compose.yml ---------------------------------------------------------


def test_every_seed_service_is_present() -> None:
    assert set(services()) >= SEED_SERVICES
    images = {name: s.get("image", "") for name, s in services().items()}
    assert images["postgres"].startswith("postgres:")
    assert image_major(images["postgres"]) >= 15
    assert images["timescaledb"].startswith("timescale/timescaledb:")
    assert images["timescaledb"].endswith(("pg15", "pg16", "pg17"))
    assert images["redis"].startswith("redis:")
    assert image_major(images["redis"]) >= 7
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:")
    assert services()["bot4"]["build"] == "."


def test_no_password_is_written_in_the_file() -> None:
    checked = 0
    for name, service in services().items():
        for key, val in environment(service).items():
            if SECRET_KEY.search(key):
                assert REQUIRED_REF.match(val), f"{name}.{key} must be ${{VAR:?...}}, not {val!r}"
                checked += 1
            for secret in URL_CREDENTIALS.findall(val):
                assert REQUIRED_REF.match(secret), f"{name}.{key} has a literal password in a URL"
                checked += 1
        command = service.get("command", [])
        text = " ".join(command) if isinstance(command, list) else str(command)
        # A password on a command line must be the container's own variable.
        for secret in re.findall(r"--requirepass\s+(\S+)", text):
            assert secret.strip('"').startswith("$$"), f"{name}: literal --requirepass"
    assert checked >= 6  # postgres, timescaledb, redis x2, grafana, bot4 URLs


def test_env_example_lists_every_variable_and_no_password() -> None:
    referenced = referenced_variables()
    example: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, val = line.partition("=")
            example[key.strip()] = val.strip()
    assert referenced <= set(example), f"missing from .env.example: {referenced - set(example)}"
    secrets = {k: v for k, v in example.items() if SECRET_KEY.search(k)}
    assert secrets
    assert all(v == "" for v in secrets.values()), f"passwords must be left empty: {secrets}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False, capture_output=True
    )
    assert ignored.returncode == 0, ".env (the real passwords) must be git-ignored"


def test_healthchecks_and_named_volumes() -> None:
    declared = set(compose().get("volumes") or {})
    used: set[str] = set()
    for name, service in services().items():
        check = service.get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    for name, path in STATEFUL.items():
        mounts = [m for m in services()[name].get("volumes", []) if isinstance(m, str)]
        assert any(m.split(":")[0] in declared and m.split(":")[1] == path for m in mounts), (
            f"{name} keeps {path} on no named volume"
        )
    assert declared == used, f"declared but unused volumes: {declared - used}"
    # bot4 waits for healthy databases and Redis before it starts trading.
    depends = services()["bot4"]["depends_on"]
    for name in ("postgres", "timescaledb", "redis"):
        assert depends[name]["condition"] == "service_healthy"


def test_host_ports_are_distinct_and_on_loopback() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        for spec in service.get("ports", []):
            addr, port = host_port(spec)
            assert addr == "127.0.0.1", f"{name} publishes on {addr}: {spec}"
            assert port not in seen, f"{name} and {seen[port]} both publish {port}"
            seen[port] = name
    assert set(seen.values()) == set(services())


def test_bot4_service_runs_a_paper_session_with_metrics() -> None:
    bot4 = services()["bot4"]
    command = bot4["command"]
    assert command[:2] == ["bot4", "run"]
    assert command[command.index("--metrics-port") + 1] == METRICS_PORT
    assert command[command.index("--metrics-addr") + 1] == "0.0.0.0"
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[123]$", text, re.M), "a supported default Python"
    assert len(re.findall(r"^FROM python:\$\{PYTHON_VERSION\}-slim\b", text, re.M)) == 2
    assert "plugins/*/*/" in text, "the image installs every bundled plugin"
    assert f'"--metrics-port", "{METRICS_PORT}"' in text
    for copied in re.findall(r"^COPY (?!--)(\S+)", text, re.M):
        assert (REPO / copied).exists(), f"Dockerfile copies missing {copied}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored
    assert ".venv" in ignored


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False, timeout=60
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


@pytest.fixture
def compose_cli() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    return command


def _compose_config(cli: list[str], env_file: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    # Variables of this shell must not fill in what the env file leaves out.
    names = referenced_variables()
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["HOME"] = str(tmp)  # no user-level docker config
    return subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
        check=False,
    )


def test_compose_config_validates(compose_cli: list[str], tmp_path: Path) -> None:
    filled = tmp_path / "filled.env"
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        key = line.partition("=")[0]
        lines.append(f"{key}=pw-{key.lower()}-0" if SECRET_KEY.search(key) else line)
    filled.write_text("\n".join(lines) + "\n")
    result = _compose_config(compose_cli, filled, tmp_path)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) >= SEED_SERVICES
    env = environment(rendered["services"]["bot4"])
    assert "pw-postgres_password-0@postgres:5432" in env["BOT4_DATABASE_URL"]


def test_compose_refuses_to_start_without_passwords(compose_cli: list[str], tmp_path: Path) -> None:
    result = _compose_config(compose_cli, ENV_EXAMPLE, tmp_path)
    assert result.returncode != 0
    assert "PASSWORD in .env" in result.stderr


# --- Prometheus -----------------------------------------------------------------


def test_prometheus_scrapes_bot4() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["bot4"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"bot4:{METRICS_PORT}"]
    mount = [v for v in services()["prometheus"]["volumes"] if "prometheus.yml" in v]
    assert mount[0].split(":")[0] == "./deploy/prometheus/prometheus.yml"


def test_promtool_check_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --- Grafana ------------------------------------------------------------------------


def _mount_target(service: str, source: str) -> str:
    for mount in services()[service]["volumes"]:
        parts = mount.split(":")
        if parts[0] == source:
            return str(parts[1])
    raise AssertionError(f"{service} does not mount {source}")


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def walk(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for child in node.values():
            yield from walk(child)
    elif isinstance(node, list):
        for child in node:
            yield from walk(child)


def test_grafana_provisioning_parses_and_fits_together() -> None:
    sources = yaml.safe_load(DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services()["prometheus"]["ports"]
    providers = yaml.safe_load(PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # The provider reads the folder compose mounts the repo's dashboards on.
    assert provider["options"]["path"] == _mount_target("grafana", "./deploy/grafana/dashboards")
    assert _mount_target("grafana", "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    board = dashboard()
    assert board["uid"] == "bot4-session"
    assert board["title"]
    uids = {n["datasource"]["uid"] for n in walk(board) if isinstance(n.get("datasource"), dict)}
    assert uids == {source["uid"]}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


# --- every metric the dashboard queries exists --------------------------------------

# PromQL words that are not metric names (functions are recognised by their
# opening parenthesis and need no list).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping labels
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.groups()
        if call is None and word.lower() not in KEYWORDS:
            names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, rule) (rate(bot4_x_bucket{outcome="a b",'
        ' rule=~"r.*"}[$__rate_interval]))) / on (job) group_left(version) bot4_y offset 5m'
        " > bool 1e3 and max_over_time(bot4_z[5m:1m]) unless bot4_w"
    )
    assert metric_names(expr) == {"bot4_x_bucket", "bot4_y", "bot4_z", "bot4_w"}


@pytest.fixture(scope="module")
def live_registry(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names a real paper session exports (histograms as their
    _bucket/_sum/_count series)."""
    metrics: Metrics
    metrics, _ = run_with_metrics(tmp_path_factory.mktemp("deploy-session"), seconds=600)
    return {sample.name for family in metrics.registry.collect() for sample in family.samples}


def test_dashboard_queries_only_exported_metrics(live_registry: set[str]) -> None:
    exprs = [n["expr"] for n in walk(dashboard()) if isinstance(n.get("expr"), str)]
    assert len(exprs) >= 30
    used: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - live_registry
        assert not missing, f"{expr!r} queries metrics bot4 does not export: {missing}"
        used |= names
    # The panels cover what the issue asks to watch.
    for name in (
        "bot4_decisions_total",
        "bot4_decision_latency_seconds_bucket",
        "bot4_orders_total",
        "bot4_fills_total",
        "bot4_cancels_total",
        "bot4_equity",
        "bot4_pnl",
        "bot4_exposure",
        "bot4_leverage",
        "bot4_drawdown_ratio",
        "bot4_breaker_tripped",
        "bot4_breaker_trips_total",
        "bot4_risk_actions_total",
        "bot4_bus_queue_depth",
        "bot4_bus_dropped_events_total",
        "bot4_plugin_load_failures",
        "bot4_journal_write_seconds_bucket",
    ):
        assert name in used, f"no panel shows {name}"
