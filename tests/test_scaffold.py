"""`bot4 plugins new`: each generated distribution installs, is listed as
loaded, and its own conformance tests pass. Installed with ``pip install
--target`` into a temporary folder (not editable into the shared venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot4.errors import ConfigError
from bot4.scaffold import new_plugin
from tests.conftest import run_bot4


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(site)
    env.pop("BOT4_PLUGINS", None)
    return env


def test_new_plugins_install_list_and_pass_their_conformance_tests(tmp_path: Path) -> None:
    cases = {"exchange": "acme", "strategy": "brk", "risk-rules": "spread"}
    for kind, name in cases.items():
        made = run_bot4("plugins", "new", kind, name, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert f"created bot4-plugin-{name}" in made.stdout
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        + [str(tmp_path / f"bot4-plugin-{n}") for n in cases.values()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr

    # Every installed plugin: without the suite's BOT4_PLUGINS (tests/conftest.py).
    listing = run_bot4("plugins", "list", "--json", env={**_env(site), "BOT4_PLUGINS": None})
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["acme"]["status"] == "loaded"
    assert rows["acme"]["kind"] == "exchange"
    assert rows["brk"]["kind"] == "strategy"
    assert rows["spread"]["kind"] == "risk rules"
    assert all(rows[n]["status"] == "loaded" for n in cases.values())

    outputs = {}
    for name in cases.values():
        folder = tmp_path / f"bot4-plugin-{name}"
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=folder,
            env=_env(site),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert " passed" in result.stdout
        assert "failed" not in result.stdout
        outputs[name] = result.stdout
    # The exchange runs the whole kit; checks it does not claim are skipped with the reason.
    assert "acme does not claim Capability.MARGIN" in outputs["acme"]


def test_generated_exchange_really_runs_the_kit(tmp_path: Path) -> None:
    root = new_plugin("exchange", "acme", tmp_path)
    test = (root / "tests" / "test_conformance.py").read_text()
    assert "from bot4.testing import ExchangeSuite" in test
    assert "factory = AcmeExchange" in test
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points.bot4]\nacme = "bot4_acme"' in pyproject
    assert "BOT4_API = 1" in (root / "src" / "bot4_acme" / "__init__.py").read_text()


def test_bad_name_and_existing_folder_are_refused(tmp_path: Path) -> None:
    bad = run_bot4("plugins", "new", "exchange", "Acme-1", cwd=tmp_path)
    assert bad.returncode == 2
    assert "use lower-case letters, digits and _" in bad.stderr
    assert not any(tmp_path.iterdir())
    assert run_bot4("plugins", "new", "strategy", "x1", cwd=tmp_path).returncode == 0
    again = run_bot4("plugins", "new", "strategy", "x1", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    with pytest.raises(ConfigError, match="unknown plugin kind"):
        new_plugin("broker", "x2", tmp_path)
