"""The environment does not change the policy by surprise.

An installed third-party risk pack joins every policy (its facts and its rule
files) unless the command chooses: ``--packs NAME,...`` / ``--no-packs`` on
``bot4 run``, ``rules check``, ``rules test`` and ``rules eval``, or
``packs:`` in a session config. A session lists the packs in use and every
plugin that failed to load when it starts; its recording keeps the choice, so
a replay uses the same packs. The suite's own policy tests pass with an extra
pack installed.

The extra pack is a real installed distribution (a dist-info with a ``bot4``
entry point in a temporary folder put on PYTHONPATH, as ``pip install
--target`` makes it); nothing is installed into the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot4.errors import ConfigError
from bot4.plugins import PluginManager
from bot4.session import SessionConfig, load_config, session_packs
from tests.conftest import REPO, make_plugin_dist, run_bot4, write_ticks

EXTRA = """
from pathlib import Path

import bot4
from bot4.contracts import RiskRules

BOT4_API = 1
RULES = Path(__file__).with_name("bot4_extra_rules.yaml")


class ExtraPack(RiskRules):
    name = "extra"

    def fact_names(self):
        return frozenset({"extra.score"})

    def facts(self, ctx):
        return {"extra.score": 0.9}

    def rule_files(self):
        return [RULES]


@bot4.hookimpl
def register_risk_rules(register):
    register("extra", lambda config: ExtraPack(), description="a third-party pack")
"""

EXTRA_RULES = """\
rules:
  - name: extra-score
    description: A third-party limit that refuses every new entry.
    priority: 45
    when: extra.score > 0.5 and not order.reducing
    reject: {reason: "extra score {extra.score:.2f} above 0.5"}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an extra risk pack and a plugin that fails on import."""
    folder = tmp_path_factory.mktemp("site")
    make_plugin_dist(
        folder, dist="bot4-plugin-extra", module="bot4_extra", source=EXTRA, entry_name="extra"
    )
    (folder / "bot4_extra_rules.yaml").write_text(EXTRA_RULES)
    make_plugin_dist(
        folder,
        dist="bot4-plugin-broken",
        module="bot4_broken",
        source="raise RuntimeError('cannot reach the mothership')\n",
        entry_name="broken",
    )
    return folder


def installed(site: Path) -> dict[str, str | None]:
    """For :func:`run_bot4`: the environment of a machine where ``site`` is
    installed, every installed plugin loaded (the suite's pin removed)."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "BOT4_PLUGINS": None}


def test_an_installed_pack_joins_the_policy_unless_the_command_chooses(site: Path) -> None:
    env = installed(site)
    every = run_bot4("rules", "check", env=env)
    assert every.returncode == 0, every.stderr
    assert "21 rules in 8 files" in every.stdout
    assert "risk packs: correlation, extra" in every.stdout
    assert "bot4_extra_rules.yaml" in every.stdout
    chosen = run_bot4("rules", "check", "--packs", "correlation", env=env)
    assert chosen.returncode == 0, chosen.stderr
    assert "20 rules in 7 files" in chosen.stdout
    assert "risk packs: correlation" in chosen.stdout
    assert "extra" not in chosen.stdout
    none = run_bot4("rules", "check", "--no-packs", str(REPO / "rules" / "20-entry.yaml"), env=env)
    assert none.returncode == 0, none.stderr
    assert "risk packs: none" in none.stdout
    unknown = run_bot4("rules", "check", "--packs", "correlation,nope", env=env)
    assert unknown.returncode == 2
    assert unknown.stdout == ""
    assert unknown.stderr.strip().splitlines()[-1] == (
        "bot4 rules: --packs: no risk pack named 'nope' is installed "
        "(installed: correlation, extra; see `bot4 plugins list`)"
    )


def test_rules_test_and_eval_take_the_same_choice(site: Path) -> None:
    env = installed(site)
    every = run_bot4("rules", "test", env=env)
    assert every.returncode == 1  # the extra pack refuses the seed's approvals
    assert "FAIL" in every.stdout
    chosen = run_bot4("rules", "test", "--packs", "correlation", env=env)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert " 0 failed" in chosen.stdout
    scenario = REPO / "rules" / "tests" / "seed.yaml"
    for packs, rule in ((["--packs", "correlation"], "max-position-size"), ([], "extra-score")):
        ev = run_bot4("rules", "eval", "--json", "--scenario", str(scenario), *packs, env=env)
        assert ev.returncode == 0, ev.stderr
        first = json.loads(ev.stdout)[0]
        assert first["decided_by"] == rule


def test_a_session_lists_its_packs_and_failed_plugins_and_replays_with_the_same(
    site: Path, tmp_path: Path
) -> None:
    env = installed(site)
    data = write_ticks(tmp_path / "ticks.csv", seconds=900)
    config = tmp_path / "session.yaml"
    config.write_text(
        "strategies:\n  - name: sma_cross\n"
        '    params: {fast: 10, slow: 60, size: "0.01", stop_loss_pct: "2"}\n'
    )
    common = ["run", "--data", str(data), "--config", str(config), "--no-chart", "--json"]
    every = run_bot4(*common, "--out", str(tmp_path / "every"), env=env)
    assert every.returncode == 0, every.stderr
    lines = every.stderr.splitlines()
    assert "risk packs in use: correlation, extra" in lines
    assert any(line.startswith("policy: 21 rules, sha256 ") for line in lines)
    broken = [line for line in lines if "broken" in line]
    assert broken == ["plugin broken not loaded: failed: RuntimeError: cannot reach the mothership"]
    assert "extra-score" in json.loads(every.stdout)["rejections_by_rule"]

    chosen = run_bot4(*common, "--packs", "correlation", "--out", str(tmp_path / "c"), env=env)
    assert chosen.returncode == 0, chosen.stderr
    assert "risk packs in use: correlation" in chosen.stderr.splitlines()
    assert "extra-score" not in json.loads(chosen.stdout)["rejections_by_rule"]
    # The recording keeps the choice: replayed where the extra pack is
    # installed, the same packs decide again.
    again = run_bot4("replay", str(tmp_path / "c" / "recording.jsonl.gz"), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "replay matched" in again.stdout

    config.write_text(config.read_text() + "packs: [nope]\n")
    refused = run_bot4(*common, "--out", str(tmp_path / "n"), env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == (
        f"bot4: {config}:4: packs: no risk pack named 'nope' is installed "
        "(installed: correlation, extra; see `bot4 plugins list`)"
    )


def test_the_suites_policy_tests_pass_with_an_extra_pack_installed(site: Path) -> None:
    env = installed(site)
    # The pack is really there and changes the default policy ...
    listing = run_bot4("plugins", "list", "--json", env=env)
    assert {row["name"] for row in json.loads(listing.stdout)} >= {"extra", "correlation"}
    # ... and the suite's policy tests do not see it.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "tests/test_rules_cli.py",
            "tests/test_risk_reload.py",
            "tests/test_shared_budget.py",
            "tests/test_kernel.py",
            "-k",
            "not postgres and not redis",
        ],
        cwd=REPO,
        env={
            k: v
            for k, v in {**os.environ, **env}.items()
            if v is not None and not k.startswith("PYTEST_")
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert "failed" not in result.stdout


# --- the config key and the choice ---------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "session.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "packs"),
    [
        ("speed: 0\n", None),
        ("packs: [correlation]\n", ("correlation",)),
        ("packs: correlation, shared\n", ("correlation", "shared")),
        ("packs: []\n", ()),
        ("packs: none\n", ()),
        ("packs: off\n", ()),
    ],
)
def test_the_packs_key(tmp_path: Path, text: str, packs: tuple[str, ...] | None) -> None:
    assert load_config(_config(tmp_path, text), {}).packs == packs


def test_options_override_the_packs_key(tmp_path: Path) -> None:
    path = _config(tmp_path, "packs: [correlation]\n")
    assert load_config(path, {"packs": ()}).packs == ()
    assert load_config(path, {"packs": ("extra",)}).packs == ("extra",)
    assert load_config(path, {"packs": None}).packs == ("correlation",)


@pytest.mark.parametrize("value", ["5", "{a: 1}", "[correlation, 3]", "['']"])
def test_a_bad_packs_key_names_file_and_line(tmp_path: Path, value: str) -> None:
    path = _config(tmp_path, f"speed: 0\npacks: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (f"{path}:2: packs: expected a list of risk-pack names (or none)")


def test_only_the_chosen_packs_are_built() -> None:
    manager = PluginManager.load({"BOT4_PLUGINS": "correlation"})
    built: list[str] = []
    registered = manager.registry.risk_rules["correlation"]

    def factory(config: object) -> object:
        built.append("correlation")
        return registered.factory({})

    manager.registry.risk_rules["correlation"] = type(registered)(
        registered.name, factory, registered.plugin
    )
    assert [p.name for p in session_packs(manager, SessionConfig(packs=()))] == []
    assert built == []
    assert [p.name for p in session_packs(manager, SessionConfig())] == ["correlation"]
    with pytest.raises(ConfigError, match=r"^packs: no risk pack named 'x' is installed"):
        session_packs(manager, SessionConfig(packs=("x",)))
