"""The production stack, its processes started natively, end to end.

No Docker engine here, so the test starts what docker-compose.yml would:
Debian's Prometheus and Alertmanager with the project's configs
(:class:`tests.stack_kit.Monitoring`), the loopback PostgreSQL (a schema of
the test's own per session, migrated by ``bot4 journal migrate`` as the
compose ``migrate`` service does) and Redis (a key namespace of the test's
own), and two ``bot4 run`` sessions at once, both scraped by the one
Prometheus, both journaling to PostgreSQL and sharing their risk state in
Redis:

* ``stress``: the stress example (examples/stress/session.yaml), whose
  breaker trips about a minute in at 240x;
* ``paper``: a paper session on generated ticks, paced to outlive the
  checks, on the paper venue behind a flaky link (the first attempt of
  every third order is answered 429 and retried, as a real plugin retries,
  so the dashboard's retry panel has something to show).

It checks that every target is up; that every query of the Grafana
dashboard (its variables filled as Grafana fills them) returns data; that
the breaker alert fires and reaches a local webhook receiver through
Alertmanager, and bot4's own webhook notification arrives; that the shared
breaker in Redis stops the other session too; that a SIGTERM to each leaves
its summary and exit 0, and Prometheus then reads DOWN; and that PostgreSQL
holds both sessions' journals under their own session ids.

A missing tool or server skips the test locally and fails it under CI=true.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml

from bot4.testing.webhook import WebhookReceiver
from tests.conftest import REPO, make_plugin_dist, write_ticks
from tests.journalkit import PG_URL, pg_available
from tests.shared_kit import namespace, url  # noqa: F401 - used as fixtures
from tests.stack_kit import Monitoring, dashboard_queries, free_port, wait_for

STRESS = REPO / "examples" / "stress" / "session.yaml"
# The stress example's 5 hours of data trip the breaker 3.9 hours in: at this
# pace that is about a minute in, and its data ends some 15 s later.
STRESS_SPEED = "240"
# The paper session: 4,000 s of ticks at 30x, two minutes, more than the
# test needs before it stops the session.
PAPER_SECONDS = 4000
PAPER_SPEED = "30"
ALERT_DEADLINE_S = 150.0

FLAKY_VENUE = '''
"""The paper venue behind a flaky link: the first attempt of every third
order is answered 429; the venue waits and retries it, and reports the retry
to bot4's metrics through ``retry_observer``, as the ccxt plugin does."""

import trio

import bot4
from bot4_paper import PaperExchange

BOT4_API = 1


class FlakyPaper(PaperExchange):
    retry_observer = None
    attempts = 0

    async def place_order(self, order):
        self.attempts += 1
        if self.attempts % 3 == 1:
            if self.retry_observer is not None:
                self.retry_observer("place_order", "rate_limited")
            await trio.sleep(0.01)  # the backoff
        return await super().place_order(order)


@bot4.hookimpl
def register_exchanges(register):
    register("flakypaper", FlakyPaper.from_config, description="paper, every third order retried")
'''

PAPER_STRATEGY = {
    "name": "sma_cross",
    "params": {
        "fast": 10,
        "slow": 60,
        "size": "0.01",
        "stop_loss_pct": "2",
        "take_profit_pct": "4",
    },
}


def _journal_url(schema: str) -> str:
    """The test server's URL with the session's schema first on the search path."""
    joiner = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{joiner}options=-c%20search_path%3D{schema}"


@pytest.fixture
def schemas() -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL schema per session, dropped with its tables after."""
    pg_available()
    made = {name: f"bot4_stack_{name}_{secrets.token_hex(4)}" for name in ("stress", "paper")}
    try:
        yield made
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for schema in made.values():
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


class Session:
    """One ``bot4 run`` of the test, its output folder and its log."""

    def __init__(self, name: str, tmp: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.instance = f"127.0.0.1:{port}"
        self.session_id = f"{name}-{secrets.token_hex(4)}"
        self.out = tmp / name / "out"
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: Path, speed: str, env: dict[str, str], *extra: str) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bot4",
                    "run",
                    "--config",
                    str(config),
                    "--out",
                    str(self.out),
                    "--no-chart",
                    "--speed",
                    speed,
                    "--metrics-port",
                    str(self.port),
                    *extra,
                ],
                cwd=REPO,  # the stress example's paths are relative to the repository
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as ``docker stop`` sends it; the exit code."""
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} ended before the SIGTERM:\n{self.log()}"
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _configs(tmp: Path, sessions: dict[str, Session]) -> dict[str, Path]:
    """The stress example with its own session id, and the paper session's."""
    stress = yaml.safe_load(STRESS.read_text())
    stress["session_id"] = sessions["stress"].session_id
    ticks = write_ticks(tmp / "ticks.csv", seconds=PAPER_SECONDS)
    paper = {
        "session_id": sessions["paper"].session_id,
        "data": str(ticks),
        "strategies": [PAPER_STRATEGY],
    }
    paths = {}
    for name, config in (("stress", stress), ("paper", paper)):
        paths[name] = tmp / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def _migrate(schemas: dict[str, str]) -> None:
    """``bot4 journal migrate`` for each schema, as the compose ``migrate`` step."""
    env = {**os.environ, "BOT4_DATABASE_URL": PG_URL}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "bot4", "journal", "migrate", "--schema", schema],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for schema in schemas.values()
    ]
    for run in runs:
        out, _ = run.communicate(timeout=60)
        assert run.returncode == 0, out.decode()


def _journal(schema: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The session records of a schema's journal, and its records by kind."""
    with psycopg.connect(PG_URL) as conn:
        rows = conn.execute(
            f'SELECT body FROM "{schema}".journal_records WHERE kind = %s ORDER BY seq',
            ("session",),
        ).fetchall()
        kinds = conn.execute(
            f'SELECT kind, count(*) FROM "{schema}".journal_records GROUP BY kind'
        ).fetchall()
    return [json.loads(body) for (body,) in rows], {kind: int(n) for kind, n in kinds}


def _empty_queries(monitoring: Monitoring, queries: list[tuple[str, str]]) -> list[str]:
    """The queries that show nothing: no series, or only NaN (a quantile of a
    histogram with no observations in the window, which Grafana leaves blank)."""
    return [
        f"{where}: {expr}"
        for where, expr in queries
        if not any(series["value"][1] != "NaN" for series in monitoring.query(expr))
    ]


def test_the_stack_watches_two_sessions_and_pages_a_person(
    tmp_path: Path,
    schemas: dict[str, str],
    url: str,  # noqa: F811 - the Redis fixture
    namespace: str,  # noqa: F811
) -> None:
    sessions = {name: Session(name, tmp_path, free_port()) for name in ("stress", "paper")}
    stress, paper = sessions["stress"], sessions["paper"]
    configs = _configs(tmp_path, sessions)
    queries = dashboard_queries()
    panels = [(w, e) for w, e in queries if not w.startswith("annotation ")]
    annotations = [(w, e) for w, e in queries if w.startswith("annotation ")]
    assert len(panels) >= 40
    assert annotations
    site = make_plugin_dist(
        tmp_path / "site",
        dist="bot4-flakypaper",
        module="bot4_flakypaper",
        source=FLAKY_VENUE,
        entry_name="flakypaper",
    )
    monitoring = Monitoring(tmp_path, [s.port for s in sessions.values()])
    bot_hook = WebhookReceiver()
    try:
        _migrate(schemas)
        for session, speed, extra in (
            (stress, STRESS_SPEED, ()),
            (paper, PAPER_SPEED, ("--exchange", "flakypaper")),
        ):
            env = {
                **os.environ,
                "BOT4_DATABASE_URL": _journal_url(schemas[session.name]),
                "BOT4_REDIS_URL": url,
                "BOT4_REDIS_NAMESPACE": namespace,
                "BOT4_WEBHOOK_URL": bot_hook.url(f"/{session.name}"),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(site), os.environ.get("PYTHONPATH")])
                ),
                # The suite loads only the bundled plugins (tests/conftest.py): and this venue.
                "BOT4_PLUGINS": ",".join(
                    filter(None, [os.environ.get("BOT4_PLUGINS"), "flakypaper"])
                ),
            }
            session.start(configs[session.name], speed, env, *extra)
        procs = [*monitoring.procs, *(s.proc for s in sessions.values() if s.proc is not None)]

        def targets_up() -> bool:
            health = {
                (t["labels"]["job"], t["labels"]["instance"]): t["health"]
                for t in monitoring.targets()
            }
            expected = {("bot4", s.instance) for s in sessions.values()}
            expected |= {("prometheus", f"127.0.0.1:{monitoring.prometheus_port}")}
            expected |= {("alertmanager", f"127.0.0.1:{monitoring.alertmanager_port}")}
            return set(health) == expected and set(health.values()) == {"up"}

        wait_for("every target up", targets_up, procs, 60)
        # The recording rule runs on its own interval: after the first scrapes
        # it may still read DOWN for a second.
        wait_for("bot4:status reads RUNNING", lambda: monitoring.status() == "1", procs, 30)
        # Each session says who it is: its own session id, on its own instance.
        info = monitoring.query("bot4_session_info")
        assert {(s["metric"]["instance"], s["metric"]["session_id"]) for s in info} == {
            (s.instance, s.session_id) for s in sessions.values()
        }
        # Choosing one session on the dashboard shows that session alone.
        for session in sessions.values():
            (table,) = [
                e
                for _, e in dashboard_queries(instance=session.instance)
                if "(bot4_session_info{" in e
            ]
            shown = {s["metric"]["session_id"] for s in monitoring.query(table)}
            assert shown == {session.session_id}, (table, shown)

        # Every panel's query has data while both sessions run (the rates
        # need a few scrapes, and a retry or a cancel its first order).
        empty: list[str] = []

        def every_panel_has_data() -> bool:
            empty[:] = _empty_queries(monitoring, panels)
            return not empty

        try:
            wait_for("every dashboard query to return data", every_panel_has_data, procs, 60)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still empty:\n" + "\n".join(empty)) from None

        def alerts_from(session: Session) -> list[dict[str, Any]]:
            return [
                alert
                for body in monitoring.alert_hook.bodies()
                for alert in body.get("alerts", [])
                if alert["labels"]["alertname"] == "Bot4BreakerTripped"
                and alert["labels"]["instance"] == session.instance
                and alert["status"] == "firing"
            ]

        (alert, *_) = wait_for(
            "the breaker alert at the webhook", lambda: alerts_from(stress), procs, ALERT_DEADLINE_S
        )
        assert alert["labels"]["severity"] == "page"
        assert "stop-outs" in alert["labels"]["reason"]
        assert alert["annotations"]["summary"].startswith("circuit breaker tripped: ")
        # bot4 said it too, on its own webhook, naming the session.
        trips = [
            r.body
            for r in bot_hook.received
            if r.path == "/stress" and r.body["event"] == "breaker_trip"
        ]
        assert trips, bot_hook.bodies()
        assert trips[0]["session_id"] == stress.session_id
        assert monitoring.status() == "2"  # TRIPPED
        # The dashboard's annotation marks the trip.
        wait_for(
            "the trip annotation", lambda: not _empty_queries(monitoring, annotations), procs, 30
        )
        # The breaker is shared through Redis: the paper session stopped too,
        # and its alert says why.
        (shared, *_) = wait_for(
            "the paper session's breaker alert", lambda: alerts_from(paper), procs, 30
        )
        assert shared["labels"]["reason"].startswith("shared breaker: "), shared

        # SIGTERM: each stops cleanly, writes its summary and says it ended.
        for session in sessions.values():
            assert session.stop() == 0, session.log()
        summary = json.loads((stress.out / "summary.json").read_text())
        assert summary["breaker_trips"] == 1
        assert json.loads((paper.out / "summary.json").read_text())["fills"] > 0
        ended = {r.path for r in bot_hook.received if r.body["event"] == "session_end"}
        assert ended == {"/stress", "/paper"}
        wait_for("status DOWN", lambda: monitoring.status() == "0", monitoring.procs, 30)
    finally:
        for session in sessions.values():
            session.kill()
        monitoring.close()
        bot_hook.close()

    # PostgreSQL holds both journals, each under its session's own id.
    for session in sessions.values():
        starts, kinds = _journal(schemas[session.name])
        assert [s["session_id"] for s in starts] == [session.session_id]
        assert kinds.get("fill", 0) > 0, kinds
        assert kinds.get("decision", 0) > 0, kinds
    # And Redis the shared state, under the test's namespace only.
    client = redis.Redis.from_url(url)
    try:
        assert any(client.scan_iter(f"{namespace}:*"))
    finally:
        client.close()
