"""`NAME_FILE` variables: a credential read from a file (compose `secrets:`)
is used like `$NAME` and masked like it, and an unreadable file is one line
naming the variable and the path, never the contents."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot4.errors import ConfigError
from bot4.secrets import MASK, env_value, redact


def test_variable_wins_then_file_then_empty(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://bot4:s3cr3t-from-file@db:5432/bot4\n")
    env = {"BOT4_DATABASE_URL_FILE": str(secret)}
    assert env_value("BOT4_DATABASE_URL", env) == "postgresql://bot4:s3cr3t-from-file@db:5432/bot4"
    env["BOT4_DATABASE_URL"] = "postgresql://direct@db/bot4"
    assert env_value("BOT4_DATABASE_URL", env) == "postgresql://direct@db/bot4"
    assert env_value("BOT4_NOTHING", {}) == ""
    assert env_value("BOT4_NOTHING", {"BOT4_NOTHING_FILE": "  "}) == ""


def test_what_is_read_is_masked_from_then_on(tmp_path: Path) -> None:
    secret = tmp_path / "hook"
    secret.write_text("https://hooks.example/services/T01/B02/tok3n-in-the-path")
    env_value("HOOK", {"HOOK_FILE": str(secret)})
    text = redact("POST https://hooks.example/services/T01/B02/tok3n-in-the-path failed", {})
    assert "tok3n" not in text
    assert MASK in text
    # A plain setting read the same way is not a secret.
    env_value("FORMAT", {"FORMAT": "generic-format"}, secret=False)
    assert redact("format generic-format", {}) == "format generic-format"


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as refused:
        env_value("BOT4_DATABASE_URL", {"BOT4_DATABASE_URL_FILE": str(missing)})
    message = str(refused.value)
    assert message.startswith("BOT4_DATABASE_URL_FILE: cannot read ")
    assert "\n" not in message
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe secret \x00")
    with pytest.raises(ConfigError, match="UnicodeDecodeError") as refused:
        env_value("X", {"X_FILE": str(binary)})
    assert "secret" not in str(refused.value)


def test_journal_migrate_reads_the_url_from_a_file(tmp_path: Path) -> None:
    """The compose `migrate` service: `bot4 journal migrate` with only
    BOT4_DATABASE_URL_FILE set (here naming a SQLite journal)."""
    from tests.conftest import run_bot4

    journal = tmp_path / "journal.sqlite"
    secret = tmp_path / "database_url"
    secret.write_text(f"{journal}\n")
    env = {"BOT4_DATABASE_URL": None, "BOT4_DATABASE_URL_FILE": str(secret)}
    result = run_bot4("journal", "migrate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert journal.exists()
    missing = run_bot4(
        "journal", "migrate", env={**env, "BOT4_DATABASE_URL_FILE": str(tmp_path / "nope")}
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("bot4")
    assert "BOT4_DATABASE_URL_FILE: cannot read" in missing.stderr
    assert "Traceback" not in missing.stderr
