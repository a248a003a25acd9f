"""Session configuration files: what a user writes, and the errors they get."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot4.errors import ConfigError
from bot4.session import DEFAULT_STRATEGY_PARAMS, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "session.yaml"
    path.write_text(text)
    return path


def test_a_full_config_is_read(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
data: ticks.csv
exchange: {name: paper, balance: "5000"}
strategies:
  - name: sma_cross
    params: {fast: 5, slow: 50}
rules: [rules, extra.yaml]
speed: 60
journal: off
""",
        ),
        {},
    )
    assert config.data == "ticks.csv"
    assert config.exchange == "paper"
    assert config.exchange_params == {"balance": "5000"}
    assert [(s.name, dict(s.params)) for s in config.strategies] == [
        ("sma_cross", {"fast": 5, "slow": 50})
    ]
    assert config.rules == ("rules", "extra.yaml")
    assert config.speed == 60.0
    assert config.journal == "off"  # YAML's bare `off` is False; it still means off


def test_options_override_the_file_and_defaults_apply(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "speed: 5\n"), {"speed": 0.0, "out": "elsewhere"})
    assert config.speed == 0.0
    assert config.out == "elsewhere"
    assert dict(config.strategies[0].params) == DEFAULT_STRATEGY_PARAMS
    assert load_config(None, {}).journal is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("strategy: sma_cross\nsped: 1\n", "unknown key(s) sped"),
        ("speed: -1\n", "speed: expected a number >= 0"),
        ("strategies: [{params: {}}]\n", "strategies[0]: expected a name or a mapping with name"),
        ("exchange: 5\n", "exchange: must be a plugin name"),
        ("rules: [1]\n", "rules: expected a path or a list of paths"),
        ("- a list\n", "the config must be a mapping of keys"),
        ("speed: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
