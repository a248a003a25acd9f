"""The production stack's files: docker-compose.yml, the Dockerfile, the
constraints file, the secrets script, the Prometheus config and Grafana's
provisioning and dashboard (the alert rules: tests/test_alerts.py).

No Docker engine runs here, so no container is started. What runs always: the
files parse, every service is there with a healthcheck and its data on a named
volume, no password is written down (every credential is a compose secret read
through a ``*_FILE`` variable), the databases publish no host port, bot4 waits
for a one-shot migration, runs under an init and pins its dependencies, and
every metric the dashboard queries exists in the registry of a real session.
What runs where the tool is installed (skipped with the reason otherwise, and
failing under CI=true for promtool): ``docker compose config`` /
``docker-compose config`` and ``promtool check config``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot4.metrics import Metrics
from tests.conftest import REPO, service_missing
from tests.test_metrics import run_with_metrics

COMPOSE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
CONSTRAINTS = REPO / "constraints.txt"
SECRETS_SCRIPT = REPO / "deploy" / "secrets.sh"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "bot4.yml"
DASHBOARD = GRAFANA / "dashboards" / "bot4.json"

SEED_SERVICES = {"postgres", "timescaledb", "redis", "prometheus", "grafana", "bot4"}
SERVICES = SEED_SERVICES | {"migrate", "alertmanager"}
# Services that keep state: each must keep it on a named volume.
STATEFUL = {"postgres": "/var/lib/postgresql/data", "timescaledb": "/var/lib/postgresql/data"}
STATEFUL |= {"redis": "/data", "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
STATEFUL |= {"alertmanager": "/alertmanager"}
# Databases are reached over the compose network only.
UNPUBLISHED = {"postgres", "timescaledb", "redis", "migrate"}
ONE_SHOT = {"migrate"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|AUTH|TOKEN|_URL$", re.IGNORECASE)
# user:password@ in a URL
URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:[^@\s]*@")
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


# A release tag: major.minor.patch (v-prefixed or not), optionally -variant;
# PostgreSQL numbers its releases major.minor.
PINNED = re.compile(r"^v?\d+\.\d+\.\d+(-[a-z0-9.]+)?$")
PINNED_POSTGRES = re.compile(r"^\d+\.\d+(-[a-z0-9.]+)?$")


def image_major(image: str) -> int:
    tag = image.rsplit(":", 1)[1]
    match = re.match(r"v?(\d+)", tag)
    assert match, image
    return int(match.group(1))


# --- docker-compose.yml ---------------------------------------------------------


def test_every_service_is_present_and_pinned() -> None:
    assert set(services()) == SERVICES
    images = {name: s.get("image", "") for name, s in services().items()}
    assert images["postgres"].startswith("postgres:")
    assert image_major(images["postgres"]) >= 15
    assert images["timescaledb"].startswith("timescale/timescaledb:")
    assert images["timescaledb"].endswith(("pg15", "pg16", "pg17"))
    assert images["redis"].startswith("redis:")
    assert image_major(images["redis"]) >= 7
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["alertmanager"].startswith("prom/alertmanager:")
    # url_file in the webhook receiver needs Alertmanager >= 0.26.
    minor = int(images["alertmanager"].rsplit(":v", 1)[1].split(".")[1])
    assert minor >= 26, images["alertmanager"]
    assert images["grafana"].startswith("grafana/grafana:")
    for name, image in images.items():
        if name in ("bot4", "migrate"):
            assert image == "bot4:latest"
            assert services()[name]["build"] == "."
            continue
        tag = image.rsplit(":", 1)[1].split("@")[0]
        tag = tag.removesuffix("-pg16").removesuffix("-pg15").removesuffix("-pg17")
        pattern = PINNED_POSTGRES if name == "postgres" else PINNED
        assert pattern.match(tag), f"{name}: {image} is not pinned to a release"


def test_no_password_is_written_anywhere() -> None:
    declared = compose()["secrets"]
    for name, spec in declared.items():
        assert spec["file"] == f"./secrets/{name}", name
    used: set[str] = set()
    for name, service in services().items():
        mine = set(service.get("secrets", []))
        used |= mine
        for key, val in environment(service).items():
            assert not URL_CREDENTIALS.search(val), f"{name}.{key} has credentials in a URL"
            if key.endswith(("_FILE", "__FILE")):
                secret = val.removeprefix("/run/secrets/")
                assert val.startswith("/run/secrets/"), f"{name}.{key}"
                assert secret in mine, f"{name}.{key} reads {secret}, not given to {name}"
            else:
                assert not re.search(r"PASSWORD|SECRET|TOKEN|AUTH", key), (
                    f"{name}.{key}: a credential must come from a secret file (*_FILE)"
                )
        command = service.get("command", [])
        text = " ".join(command) if isinstance(command, list) else str(command)
        for secret in re.findall(r"--requirepass\s+(\"[^\"]*\"|\S+)", text):
            assert secret.strip('"').startswith("$$(cat /run/secrets/"), f"{name}: --requirepass"
    assert used == set(declared), f"declared but unused secrets: {set(declared) - used}"
    # bot4 reads each credential through a *_FILE variable.
    env = environment(services()["bot4"])
    assert env["BOT4_DATABASE_URL_FILE"] == "/run/secrets/database_url"
    assert env["BOT4_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password"
    assert "@" not in env["BOT4_REDIS_URL"]
    assert env["BOT4_WEBHOOK_URL_FILE"] == "/run/secrets/notify_webhook_url"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "secrets/postgres_password"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, "secrets/ must be git-ignored"
    assert "secrets" in (REPO / ".dockerignore").read_text().split()


def test_env_example_lists_every_variable_and_no_credential() -> None:
    referenced = referenced_variables()
    example: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, val = line.partition("=")
            example[key.strip()] = val.strip()
    assert referenced <= set(example), f"missing from .env.example: {referenced - set(example)}"
    assert not [k for k in example if re.search("PASSWORD|SECRET|TOKEN", k)]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False, capture_output=True
    )
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_secrets_script_writes_every_secret_once(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_USER=trader\nPOSTGRES_DB=book\n")
    run = subprocess.run(
        ["sh", str(SECRETS_SCRIPT)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "secrets"
    assert set(p.name for p in folder.iterdir()) == set(compose()["secrets"])
    assert folder.stat().st_mode & 0o777 == 0o700
    password = (folder / "postgres_password").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{48}", password)
    assert (folder / "database_url").read_text().strip() == (
        f"postgresql://trader:{password}@postgres:5432/book"
    )
    assert (folder / "redis_password").read_text().strip() != password
    assert (folder / "notify_webhook_url").read_text().strip() == ""
    # Run again: nothing is overwritten.
    (folder / "notify_webhook_url").write_text("https://hooks.example/x\n")
    again = subprocess.run(
        ["sh", str(SECRETS_SCRIPT)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert again.returncode == 0
    assert again.stdout == ""
    assert (folder / "postgres_password").read_text().strip() == password
    assert (folder / "notify_webhook_url").read_text() == "https://hooks.example/x\n"


def test_healthchecks_and_named_volumes() -> None:
    declared = set(compose().get("volumes") or {})
    used: set[str] = set()
    for name, service in services().items():
        if name not in ONE_SHOT:
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


def test_bot4_waits_for_the_migration_and_stops_cleanly() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["bot4", "journal", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    bot4 = services()["bot4"]
    depends = bot4["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    for name in ("postgres", "redis"):
        assert depends[name]["condition"] == "service_healthy"
    # Nothing connects to TimescaleDB yet: it is not waited on, and starts
    # only with its profile.
    assert "timescaledb" not in depends
    assert services()["timescaledb"]["profiles"] == ["market-data"]
    for name in ("bot4", "migrate"):
        assert services()[name]["init"] is True, name
        assert environment(services()[name])["PGCLIENTENCODING"] == "UTF8"
    assert bot4["stop_signal"] == "SIGTERM"
    assert re.search(r"^STOPSIGNAL SIGTERM$", DOCKERFILE.read_text(), re.M)


def test_redis_runs_as_its_own_user() -> None:
    redis = services()["redis"]
    assert redis["user"] == "redis"
    # The password is read from the secret when the server starts.
    assert "/run/secrets/redis_password" in " ".join(redis["command"])
    assert "redis_password" in redis["secrets"]


def test_host_ports_are_distinct_and_on_loopback() -> None:
    seen: dict[int, str] = {}
    for name, service in services().items():
        if name in UNPUBLISHED:
            assert not service.get("ports"), f"{name} must not publish a host port"
        for spec in service.get("ports", []):
            addr, port = host_port(spec)
            assert addr == "127.0.0.1", f"{name} publishes on {addr}: {spec}"
            assert port not in seen, f"{name} and {seen[port]} both publish {port}"
            seen[port] = name
    assert set(seen.values()) == SERVICES - UNPUBLISHED


def test_bot4_service_runs_a_paper_session_with_metrics() -> None:
    bot4 = services()["bot4"]
    command = bot4["command"]
    assert command[:2] == ["bot4", "run"]
    assert command[command.index("--metrics-port") + 1] == METRICS_PORT
    assert command[command.index("--metrics-addr") + 1] == "0.0.0.0"
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_VERSION=3\.1[123]$", text, re.M), "a supported default Python"
    assert len(re.findall(r"^FROM python:\$\{PYTHON_VERSION\}-slim\b", text, re.M)) == 2
    assert "plugins/*/*/" in text, "the image installs the bundled plugins"
    assert f'"--metrics-port", "{METRICS_PORT}"' in text
    for copied in re.findall(r"^COPY (?!--)(.+) \S+$", text, re.M):
        for item in copied.split():
            assert (REPO / item).exists(), f"Dockerfile copies missing {item}"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored
    assert ".venv" in ignored


def _plugin_loop() -> str:
    """The Dockerfile's shell loop that picks the plugins to build."""
    text = DOCKERFILE.read_text().replace("\\\n", "\n")
    match = re.search(r"plugins=\$\((for p in .*?done)\)", text, re.S)
    assert match, "the plugin loop is not in the Dockerfile"
    return match.group(1)


@pytest.mark.parametrize(("with_ccxt", "has_ccxt"), [("0", False), ("1", True)])
def test_the_image_has_ccxt_only_when_asked(with_ccxt: str, has_ccxt: bool) -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG WITH_CCXT=0$", text, re.M)
    # The wheels are bind-mounted into the install, never a layer of the image.
    assert "--mount=type=bind,from=build,source=/wheels" in text
    assert "COPY --from=build /wheels" not in text
    chosen = subprocess.run(
        ["sh", "-c", _plugin_loop()],
        cwd=REPO,
        env={"WITH_CCXT": with_ccxt, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    bundled = sorted(
        f"{p.parent.relative_to(REPO)}/" for p in REPO.glob("plugins/*/*/pyproject.toml")
    )
    expected = [p for p in bundled if has_ccxt or p != "plugins/exchanges/ccxt/"]
    assert chosen == expected


def _requirement_name(text: str) -> str:
    # PEP 503: runs of -, _ and . are one - (ruamel.yaml is pinned as ruamel-yaml).
    return re.sub(r"[-_.]+", "-", re.split(r"[\s;\[<>=!~]", text, maxsplit=1)[0].lower())


def test_constraints_pin_every_runtime_dependency() -> None:
    assert "-c constraints.txt" in DOCKERFILE.read_text()
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not name==version"
            pins[name] = version
    projects = [REPO / "pyproject.toml", *sorted(REPO.glob("plugins/*/*/pyproject.toml"))]
    for project in projects:
        data = tomllib.loads(project.read_text())
        for requirement in data["project"].get("dependencies", []):
            name = _requirement_name(requirement)
            if name == "bot4" or name.startswith("bot4-plugin-"):
                continue  # ours: installed from the source tree
            assert name in pins, f"{project.relative_to(REPO)}: {name} is not in constraints.txt"
    assert pins["durable-rules"] == "2.0.28"  # pinned in pyproject.toml too


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


def test_compose_config_validates(compose_cli: list[str], tmp_path: Path) -> None:
    names = referenced_variables()
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["HOME"] = str(tmp_path)  # no user-level docker config
    result = subprocess.run(
        [*compose_cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) >= SERVICES - {"timescaledb"}
    env_bot4 = environment(rendered["services"]["bot4"])
    assert env_bot4["BOT4_DATABASE_URL_FILE"] == "/run/secrets/database_url"


# --- Prometheus -----------------------------------------------------------------


def test_prometheus_scrapes_bot4_and_alerts_through_alertmanager() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["bot4"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"bot4:{METRICS_PORT}"]
    # The folder is mounted whole: prometheus.yml finds alerts.yml beside it.
    assert _mount_target("prometheus", "./deploy/prometheus") == "/etc/prometheus"
    assert config["rule_files"] == [ALERTS.name]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in services()["alertmanager"]["ports"]
    assert _mount_target("alertmanager", "./deploy/alertmanager") == "/etc/alertmanager"
    command = services()["alertmanager"]["command"]
    assert f"--config.file=/etc/alertmanager/{ALERTMANAGER.name}" in command


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        service_missing("promtool", "not installed (Debian: apt-get install prometheus)")
    assert found is not None
    return found


def test_promtool_check_config() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(PROMETHEUS)],
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
    _bucket/_sum/_count series, counters as _total), and ``up``, which
    Prometheus adds to every scrape. A labelled family counts even before its
    first child (retries appear with the first retry)."""
    metrics: Metrics
    metrics, _ = run_with_metrics(tmp_path_factory.mktemp("deploy-session"), seconds=600)
    names = {"up"}
    for family in metrics.registry.collect():
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


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
    # The panels cover what the issues ask to watch.
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
        "bot4_journal_queue_depth",
        "bot4_journal_lag_seconds",
        "bot4_journal_write_failures_total",
        "bot4_exchange_requests_total",
        "bot4_exchange_request_seconds_bucket",
        "bot4_exchange_retries_total",
        "bot4_feed_age_seconds",
        "bot4_session_info",
        "bot4_session_start_time_seconds",
        "bot4_breaker_info",
        "bot4_halted",
        "bot4_kill_switch",
        "up",
    ):
        assert name in used, f"no panel shows {name}"


def test_the_top_row_reads_the_status(live_registry: set[str]) -> None:
    """The first panel is the status stat: the recording rule bot4:status's
    expression (tested by promtool in tests/test_alerts.py), mapped to words."""
    board = dashboard()
    top = [p for p in board["panels"] if p["gridPos"]["y"] == 1]
    status = min(top, key=lambda p: p["gridPos"]["x"])
    assert status["title"] == "Status"
    rules = yaml.safe_load(ALERTS.read_text())
    (record,) = [r for g in rules["groups"] for r in g["rules"] if r.get("record") == "bot4:status"]
    # The panel's, for the sessions chosen on the dashboard; the rule's, for all.
    chosen = status["targets"][0]["expr"].replace(', instance=~"$instance"', "")
    assert chosen.replace('{instance=~"$instance"}', "") == record["expr"]
    (mapping,) = status["fieldConfig"]["defaults"]["mappings"]
    words = {k: v["text"] for k, v in mapping["options"].items()}
    assert words == {"0": "DOWN", "1": "RUNNING", "2": "TRIPPED", "3": "HALTED", "4": "STOPPED"}
    assert metric_names(record["expr"]) <= live_registry


def test_smoke_script_parses_and_says_when_it_cannot_run(tmp_path: Path) -> None:
    """deploy/smoke.sh needs a Docker engine; here it must parse and, without
    `docker compose`, exit 77 (skipped) saying so, starting nothing."""
    smoke = REPO / "deploy" / "smoke.sh"
    parsed = subprocess.run(["sh", "-n", str(smoke)], capture_output=True, text=True, check=False)
    assert parsed.returncode == 0, parsed.stderr
    if _compose_command() is not None:
        pytest.skip("docker compose is installed: run deploy/smoke.sh by hand")
    bare = tmp_path / "bin"
    bare.mkdir()
    result = subprocess.run(
        ["sh", str(smoke)],
        env={"PATH": f"{bare}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 77, result.stderr
    assert "no `docker compose` here" in result.stderr


def test_every_query_follows_the_session_chosen_on_the_dashboard() -> None:
    """With several bots on one Prometheus, the dashboard's `instance`
    variable (the sessions, from bot4_session_info) chooses which are shown:
    every series selector of every query carries its matcher, or a panel
    would add up sessions the user did not choose."""
    board = dashboard()
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "instance"
    assert variable["query"]["query"] == "label_values(bot4_session_info, instance)"
    assert (variable["multi"], variable["includeAll"], variable["allValue"]) == (True, True, ".*")
    selector = re.compile(r"\b(bot4_[a-z0-9_]+|up)\b(\{[^}]*\})?(?!\s*\()")
    exprs = [n["expr"] for n in walk(board) if isinstance(n.get("expr"), str)]
    assert len(exprs) >= 30
    for expr in exprs:
        for match in selector.finditer(expr):
            if match.group(1) == "up" and match.group(2) is None:
                continue  # the word, not the metric (never bare in these queries)
            assert 'instance=~"$instance"' in (match.group(2) or ""), (expr, match.group(0))
