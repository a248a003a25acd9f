"""bot4-plugin-webhook: notifications as a JSON POST to a webhook URL.

Configured from the environment (nothing is configured: the notifier is off)::

    BOT4_WEBHOOK_URL        the URL, or
    BOT4_WEBHOOK_URL_FILE   a file holding it (a compose secret)
    BOT4_WEBHOOK_FORMAT     generic (default) | slack | discord | telegram | ntfy
    BOT4_WEBHOOK_CHAT_ID    telegram: the chat to post to (required there)
    BOT4_WEBHOOK_TOPIC      ntfy: the topic, when the URL is the server's root

The body by format:

* ``generic``: the notification's fields (``event``, ``severity``, ``title``,
  ``text``, ``session_id``, ``run_id``, ``at``, ``fields``) plus ``content``
  (Discord) and ``message`` (ntfy, Alertmanager-style receivers): most chat
  webhooks read one of ``text`` / ``content`` / ``message``;
* ``slack``: ``{"text": ...}`` (incoming webhooks);
* ``discord``: ``{"content": ...}``;
* ``telegram``: ``{"chat_id": ..., "text": ...}`` for
  ``https://api.telegram.org/bot<token>/sendMessage``;
* ``ntfy``: ``{"topic", "title", "message", "priority", "tags"}`` (JSON publishing).

The URL is a secret (Slack, Discord and Telegram carry the token in it): it
is read through :func:`bot4.secrets.env_value`, which registers it with
:func:`bot4.secrets.redact`, and only ``scheme://host/***`` is ever shown
(:meth:`WebhookNotifier.target`). A failed POST raises an error naming the
status or the cause, never the URL. The POST runs in a worker thread
(``urllib``), so the trio thread never waits on the network; bot4's
dispatcher (:mod:`bot4.notify`) queues, rate-limits and times it out.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import trio

import bot4
from bot4.errors import ConfigError
from bot4.hookspecs import RegisterNotifier
from bot4.notify import Notification, Notifier, NotifierFailed
from bot4.secrets import env_value

BOT4_API = 1

__all__ = ["BOT4_API", "FORMATS", "WebhookNotifier", "create", "register_notifiers"]

ENV_URL = "BOT4_WEBHOOK_URL"
FORMATS = ("generic", "slack", "discord", "telegram", "ntfy")
# Seconds for one POST; the dispatcher's own timeout bounds it too.
HTTP_TIMEOUT = 8.0
_PRIORITY = {"page": 5, "warn": 4, "info": 3}  # ntfy priorities


def _mask(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/***"


class WebhookNotifier(Notifier):
    """POSTs each notification as JSON to one URL."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        format: str = "generic",
        chat_id: str = "",
        topic: str = "",
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never repeat the value: it is a secret.
            raise ConfigError(f"{ENV_URL}: expected an http:// or https:// URL")
        if format not in FORMATS:
            raise ConfigError(f"BOT4_WEBHOOK_FORMAT: {format!r} is not one of {', '.join(FORMATS)}")
        if format == "telegram" and not chat_id:
            raise ConfigError("BOT4_WEBHOOK_CHAT_ID: telegram needs the chat id to post to")
        self._url = url
        self.format = format
        self.chat_id = chat_id
        self.topic = topic
        self.timeout = timeout
        self.sent = 0

    def target(self) -> str:
        return f"{_mask(self._url)} ({self.format})"

    def __repr__(self) -> str:
        return f"<WebhookNotifier {self.target()}>"

    def body(self, n: Notification) -> dict[str, Any]:
        """The JSON object POSTed for ``n``."""
        line = f"{n.title}: {n.text}"
        if self.format == "slack":
            return {"text": line}
        if self.format == "discord":
            return {"content": line[:2000]}  # Discord's limit
        if self.format == "telegram":
            return {"chat_id": self.chat_id, "text": line}
        if self.format == "ntfy":
            body: dict[str, Any] = {
                "title": n.title,
                "message": n.text,
                "priority": _PRIORITY.get(n.severity, 3),
                "tags": ["bot4", n.event],
            }
            if self.topic:
                body["topic"] = self.topic
            return body
        return {**n.as_dict(), "content": line, "message": line}

    async def send(self, notification: Notification) -> None:
        data = json.dumps(self.body(notification)).encode()
        await trio.to_thread.run_sync(self._post, data, abandon_on_cancel=True)
        self.sent += 1

    def _post(self, data: bytes) -> None:
        request = urllib.request.Request(
            self._url,
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "bot4-webhook"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            exc.close()  # the error is the response: release its socket
            raise NotifierFailed(f"{_mask(self._url)} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise NotifierFailed(
                f"{_mask(self._url)} unreachable: {type(reason).__name__}"
            ) from None


def create(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Notifier | None:
    """The notifier the environment configures, or None without a URL."""
    url = env_value(ENV_URL, environ).strip()
    if not url:
        return None
    return WebhookNotifier(
        url,
        format=env_value("BOT4_WEBHOOK_FORMAT", environ, secret=False).strip().lower() or "generic",
        chat_id=env_value("BOT4_WEBHOOK_CHAT_ID", environ, secret=False).strip(),
        topic=env_value("BOT4_WEBHOOK_TOPIC", environ, secret=False).strip(),
    )


@bot4.hookimpl
def register_notifiers(register: RegisterNotifier) -> None:
    register("webhook", create, description="JSON POST to a webhook URL (BOT4_WEBHOOK_URL)")
