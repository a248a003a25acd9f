"""The webhook notifier against a real HTTP receiver on loopback: each
format's body, the URL from the environment or a file, and the URL (a
secret) never shown."""

from __future__ import annotations

import socket
from pathlib import Path

import bot4_webhook
import pytest
import trio
from bot4_webhook import WebhookNotifier, create

from bot4.errors import ConfigError
from bot4.notify import Notification, NotifierFailed
from bot4.secrets import redact
from bot4.testing.webhook import WebhookReceiver

TOKEN = "T0AAA/B0BBB/xoxb-very-secret-token"
NOTE = Notification(
    "breaker_trip",
    "page",
    "bot4 s1: circuit breaker tripped",
    "drawdown 15.20% reached the 15% limit.",
    "s1",
    "abc123",
    fields={"rule": "drawdown-trips-breaker"},
)


def post(notifier: WebhookNotifier) -> None:
    trio.run(notifier.send, NOTE)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "slack",
            {"text": "bot4 s1: circuit breaker tripped: drawdown 15.20% reached the 15% limit."},
        ),
        (
            "discord",
            {"content": "bot4 s1: circuit breaker tripped: drawdown 15.20% reached the 15% limit."},
        ),
        (
            "telegram",
            {
                "chat_id": "-100123",
                "text": "bot4 s1: circuit breaker tripped: drawdown 15.20% reached the 15% limit.",
            },
        ),
        (
            "ntfy",
            {
                "topic": "bot4-alerts",
                "title": "bot4 s1: circuit breaker tripped",
                "message": "drawdown 15.20% reached the 15% limit.",
                "priority": 5,
                "tags": ["bot4", "breaker_trip"],
            },
        ),
    ],
)
def test_each_format_posts_its_body(fmt: str, expected: dict[str, object]) -> None:
    with WebhookReceiver() as hook:
        notifier = WebhookNotifier(
            hook.url(f"/services/{TOKEN}"), format=fmt, chat_id="-100123", topic="bot4-alerts"
        )
        post(notifier)
        (got,) = hook.wait_for(lambda b: len(b) == 1)
        assert got == expected
        assert hook.received[0].path == f"/services/{TOKEN}"
        assert hook.received[0].headers["Content-Type"] == "application/json"


def test_generic_body_carries_every_field() -> None:
    with WebhookReceiver() as hook:
        post(WebhookNotifier(hook.url("/x")))
        (got,) = hook.wait_for(lambda b: len(b) == 1)
    assert got["event"] == "breaker_trip"
    assert got["severity"] == "page"
    assert got["session_id"] == "s1"
    assert got["run_id"] == "abc123"
    assert got["fields"] == {"rule": "drawdown-trips-breaker"}
    assert got["text"] == "drawdown 15.20% reached the 15% limit."
    line = "bot4 s1: circuit breaker tripped: drawdown 15.20% reached the 15% limit."
    assert got["content"] == got["message"] == line


def test_url_from_env_or_file_and_never_shown(tmp_path: Path) -> None:
    assert create({}, environ={}) is None  # not configured: off
    with WebhookReceiver() as hook:
        url = hook.url(f"/services/{TOKEN}")
        secret = tmp_path / "webhook_url"
        secret.write_text(url + "\n")
        notifier = create({}, environ={"BOT4_WEBHOOK_URL_FILE": str(secret)})
        assert isinstance(notifier, WebhookNotifier)
        post(notifier)
        hook.wait_for(lambda b: len(b) == 1)
    shown = notifier.target() + repr(notifier)
    assert TOKEN not in shown
    assert shown.startswith(f"http://127.0.0.1:{hook.port}/***")
    # Read once, it is masked in everything bot4 prints from then on.
    assert TOKEN not in redact(f"posting to {url} failed")


def test_failures_name_the_cause_never_the_url() -> None:
    with WebhookReceiver(status=500) as hook:
        notifier = WebhookNotifier(hook.url(f"/services/{TOKEN}"))
        with pytest.raises(NotifierFailed, match="answered HTTP 500") as failed:
            post(notifier)
    assert TOKEN not in str(failed.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = WebhookNotifier(f"http://127.0.0.1:{port}/services/{TOKEN}")
    with pytest.raises(NotifierFailed, match="unreachable") as failed:
        post(notifier)
    assert TOKEN not in str(failed.value)


@pytest.mark.parametrize(
    ("url", "fmt", "message"),
    [
        (f"ftp://example.org/{TOKEN}", "generic", "expected an http"),
        (f"https://example.org/{TOKEN}", "teams", "is not one of"),
        (f"https://api.telegram.org/bot{TOKEN}/sendMessage", "telegram", "CHAT_ID"),
    ],
)
def test_bad_configuration_is_one_line_without_the_url(url: str, fmt: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        WebhookNotifier(url, format=fmt)
    assert TOKEN not in str(refused.value)


def test_registers_as_a_notifier() -> None:
    from bot4.plugins import PluginManager

    manager = PluginManager()
    entry = manager.add("webhook-test", bot4_webhook)
    assert entry.ok, entry.status
    assert entry.kind == "notifier"
    assert set(manager.registry.notifiers) == {"webhook"}
