"""Shared fixtures. Tests that need PostgreSQL or Redis use the real servers
named by BOT4_TEST_PG_URL / BOT4_TEST_REDIS_URL (loopback defaults); when one
is missing they skip with the reason locally and fail under CI=true."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot4.testing.decimal_guard import decimal_context_kept

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def decimal_context_unchanged() -> Iterator[None]:
    """No test leaves the Decimal context changed (a later one would round
    otherwise: see bot4.testing.decimal_guard)."""
    with decimal_context_kept():
        yield


T0 = datetime(2024, 3, 1, tzinfo=UTC)


def bundled_plugins() -> list[str]:
    """The plugins this repository ships: the ``bot4`` entry points of
    ``plugins/<kind>/<name>/pyproject.toml``."""
    names: list[str] = []
    for project in sorted(REPO.glob("plugins/*/*/pyproject.toml")):
        data = tomllib.loads(project.read_text(encoding="utf-8"))
        names.extend(data.get("project", {}).get("entry-points", {}).get("bot4", {}))
    return sorted(names)


# The suite never depends on what else is installed: a third-party risk pack
# joins every policy (its facts and rule files) and would change what the
# policy tests see. Every test, and every `bot4` it starts (they inherit the
# environment), loads the bundled plugins only; a test that means to see all
# installed plugins removes the variable (tests/test_plugins.py).
os.environ["BOT4_PLUGINS"] = ",".join(bundled_plugins())


def write_ticks(path: Path, seconds: int = 3000) -> Path:
    """A tick CSV of two correlated symbols whose prices swing, so that moving
    averages cross and the default rules have something to decide."""
    lines = ["timestamp,symbol,bid,ask,last,volume"]
    for i in range(seconds):
        ts = (T0 + timedelta(seconds=i)).isoformat()
        wave = math.sin(i / 60) + 0.3 * math.sin(i / 7)
        btc = 50000 + 400 * wave
        eth = 3000 + 30 * wave
        lines.append(f"{ts},BTC-USDT,{btc - 0.5:.2f},{btc + 0.5:.2f},{btc:.2f},2")
        lines.append(f"{ts},ETH-USDT,{eth - 0.05:.2f},{eth + 0.05:.2f},{eth:.2f},20")
    path.write_text("\n".join(lines) + "\n")
    return path


def make_plugin_dist(
    site: Path,
    *,
    dist: str,
    module: str,
    source: str,
    entry_name: str,
    version: str = "0.1.0",
) -> Path:
    """Write an installed distribution (module + dist-info with a ``bot4``
    entry point) into ``site``, as ``pip install --target`` would."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[bot4]\n{entry_name} = {module}\n")
    (info / "RECORD").write_text("")
    return site


def run_bot4(
    *args: str,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the real ``bot4`` command (as ``python -m bot4``) in a subprocess,
    in this environment updated by ``env`` (a None value removes a variable)."""
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "bot4", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=timeout,
        check=False,
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, reason: str) -> None:
    """Skip locally, fail under CI=true: a missing service is never silent on CI."""
    message = f"{what} not reachable: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: services are required)")
    pytest.skip(message)


PAPER_SESSION_CONFIG = """
strategies:
  - name: sma_cross
    params: {fast: 10, slow: 60, size: "0.01", stop_loss_pct: "2", take_profit_pct: "4"}
"""


def record_paper_session(folder: Path, seconds: int = 1500) -> Path:
    """Run a real paper session (with orders, fills and rejections) on
    generated ticks in ``folder``; return its output folder."""
    data = write_ticks(folder / "ticks.csv", seconds=seconds)
    config = folder / "session.yaml"
    config.write_text(PAPER_SESSION_CONFIG)
    out = folder / "out"
    result = run_bot4(
        "run", "--data", str(data), "--config", str(config), "--out", str(out), "--no-chart"
    )
    assert result.returncode == 0, result.stderr
    return out
