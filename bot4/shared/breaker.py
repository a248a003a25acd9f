"""The circuit breaker and kill switch, shared by every process of a deployment.

State lives in the hash ``<ns>:breaker`` (so a process that starts late, or
reconnects, reads it), and every change is broadcast on the pub/sub channel
``<ns>:breaker`` (so running processes act at once). Fields: ``tripped``
("1"), ``reason``, ``by``, ``at_ns``; for a kill also ``killed`` ("1"). The
first trip's reason is kept, as the local breaker does. ``<ns>:kill:acks``
collects, per process, when it obeyed the last kill (``bot4 kill`` waits for
them).

A message is a JSON object ``{"action": "trip" | "reset" | "kill", "reason",
"by", "at_ns"}``. A process applies the *key's* state whenever a message
arrives or its listener reconnects (messages sent while it was away are not
replayed by pub/sub; the key is the truth, the message only a wake-up).

The listener is a dedicated thread (redis-py's pub/sub read blocks; its
asyncio flavour does not run under trio) that feeds a trio memory channel
through ``trio.from_thread``; it polls with a short timeout so it notices a
stop request, and reconnects with a back-off when Redis goes away.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import redis
import trio

from bot4.shared.connection import RedisConfig, SharedConnection

_CHANGE = """
local p, action, reason, by, at, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local k = p..':breaker'
if action == 'reset' then
  redis.call('DEL', k, p..':kill:acks')
else
  if redis.call('HGET', k, 'tripped') ~= '1' then
    redis.call('HSET', k, 'tripped', '1', 'reason', reason, 'by', by, 'at_ns', at)
  end
  if action == 'kill' then
    redis.call('HSET', k, 'killed', '1', 'kill_reason', reason, 'kill_by', by, 'kill_at_ns', at)
    redis.call('DEL', p..':kill:acks')
  end
end
return redis.call('PUBLISH', k, message)
"""

ACTIONS = ("trip", "reset", "kill")


@attrs.frozen
class BreakerState:
    """The shared breaker as stored. ``killed``: ``bot4 kill`` ran and no reset since."""

    tripped: bool = False
    reason: str = ""
    by: str = ""
    at_ns: int = 0
    killed: bool = False
    kill_reason: str = ""

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> BreakerState:
        return cls(
            tripped=data.get("tripped") == "1",
            reason=data.get("reason", ""),
            by=data.get("by", ""),
            at_ns=int(data.get("at_ns") or 0),
            killed=data.get("killed") == "1",
            kill_reason=data.get("kill_reason", ""),
        )

    def describe(self) -> str:
        if not self.tripped:
            return "armed"
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at_ns / 1e9))
        text = f"tripped at {when} by {self.by or '?'}: {self.reason}"
        if self.killed:
            text += f"; KILLED: {self.kill_reason}"
        return text


class SharedBreaker:
    """Read and change the shared breaker (blocking calls: run them in a thread
    from trio, or directly from the command line)."""

    def __init__(self, conn: SharedConnection) -> None:
        self.conn = conn
        self.key = conn.config.key("breaker")
        self.channel = self.key
        self.acks_key = conn.config.key("kill", "acks")
        self._change = conn.client.register_script(_CHANGE)

    def state_sync(self) -> BreakerState:
        return BreakerState.from_hash(
            self.conn.run(lambda c: cast(dict[str, str], c.hgetall(self.key)))
        )

    def change_sync(self, action: str, reason: str = "", by: str = "") -> int:
        """Trip, reset or kill; returns how many listeners got the broadcast."""
        if action not in ACTIONS:
            raise ValueError(f"breaker action must be one of {ACTIONS}, not {action!r}")
        at = time.time_ns()
        message = json.dumps({"action": action, "reason": reason, "by": by, "at_ns": at})
        ns = self.conn.config.prefix
        return int(
            self.conn.run(
                lambda _c: self._change(
                    keys=[self.key], args=[ns, action, reason, by, str(at), message]
                )
            )
        )

    def ack_kill_sync(self, process: str) -> None:
        self.conn.run(lambda c: c.hset(self.acks_key, process, str(time.time_ns())))

    def kill_acks_sync(self) -> dict[str, str]:
        return self.conn.run(lambda c: cast(dict[str, str], c.hgetall(self.acks_key)))


Forward = Callable[[str, dict[str, Any]], None]


class BreakerListener:
    """A thread subscribed to the breaker channel. ``forward(kind, message)``
    is called (in the thread) with ``("message", {...})`` for each broadcast,
    ``("connected", {})`` after every (re)subscription and ``("lost", {"error":
    ...})`` when the connection drops. Stop with :meth:`stop` (joins)."""

    def __init__(self, config: RedisConfig, forward: Forward, *, poll: float = 0.2) -> None:
        self.config = config
        self.channel = config.key("breaker")
        self.forward = forward
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bot4-breaker-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            client = self.config.client()
            pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.channel)
                self.forward("connected", {})
                backoff = 0.1
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=self.poll)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        data = json.loads(message["data"])
                    except (TypeError, ValueError):
                        continue
                    if isinstance(data, dict):
                        self.forward("message", data)
            except (redis.RedisError, OSError) as exc:
                self.forward("lost", {"error": self.config.describe_error(exc)})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            except (trio.RunFinishedError, trio.Cancelled):
                return
            finally:
                pubsub.close()
                client.close()


def trio_forwarder(
    send: trio.MemorySendChannel[tuple[str, dict[str, Any]]], token: trio.lowlevel.TrioToken
) -> Forward:
    """A ``forward`` for :class:`BreakerListener` that hands messages to a trio
    memory channel (unbounded, so the thread never waits on trio)."""

    def forward(kind: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            trio.from_thread.run_sync(send.send_nowait, (kind, message), trio_token=token)

    return forward
