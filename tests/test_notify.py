"""Notifiers: bot4 tells a person about a breaker trip, a kill, a halt, a
liquidation action, a margin call and the session's end, through the bundled
webhook plugin to a real HTTP receiver, rate-limited, and never holding up
the kernel (a hung receiver changes no decision)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from bot4_webhook import WebhookNotifier

from bot4.bus import Event
from bot4.model import RiskAction, RiskActionKind
from bot4.notify import Notification, Notifier, NotifyService
from bot4.session import load_config, run_session
from bot4.testing.webhook import WebhookReceiver
from tests.conftest import REPO, run_bot4

STRESS = REPO / "examples" / "stress" / "session.yaml"
ENV = {"BOT4_DATABASE_URL": "", "BOT4_REDIS_URL": ""}
TOKEN = "T0AAA/B0BBB/very-secret-token"
PERSON = {"breaker_trip", "liquidation", "add_margin", "session_end"}


def _decisions(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("ticks", "rejections_by_rule", "risk_actions", "breaker_trips", "orders_resized")
    return {k: summary[k] for k in keys}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("stress-plain") / "out"
    result = run_bot4("run", "--config", str(STRESS), "--out", str(out), "--no-chart", env=ENV)
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return summary


def test_the_stress_session_reaches_a_person(tmp_path: Path, baseline: dict[str, Any]) -> None:
    with WebhookReceiver() as hook:
        url = hook.url(f"/services/{TOKEN}")
        env = {**ENV, "BOT4_WEBHOOK_URL": url, "BOT4_WEBHOOK_FORMAT": "generic"}
        out = tmp_path / "out"
        result = run_bot4("run", "--config", str(STRESS), "--out", str(out), "--no-chart", env=env)
        assert result.returncode == 0, result.stderr
        # The session-end notification is sent before the process exits.
        bodies = hook.bodies()
    events = {b["event"] for b in bodies}
    assert events >= PERSON, events
    (trip,) = [b for b in bodies if b["event"] == "breaker_trip"]
    assert trip["severity"] == "page"
    assert "refused until `bot4 breaker reset`" in trip["text"]
    (end,) = [b for b in bodies if b["event"] == "session_end"]
    assert "36000 ticks" in end["text"]
    assert bodies[-1]["event"] == "session_end"
    # bot4 says where it notifies, with the URL masked.
    printed = result.stdout + result.stderr
    assert f"notifier webhook: http://127.0.0.1:{hook.port}/*** (generic)" in printed
    assert TOKEN not in printed
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt", ".log"):
            assert TOKEN not in path.read_text(errors="replace"), path
    # Notifying changed no decision.
    summary = json.loads((out / "summary.json").read_text())
    assert _decisions(summary) == _decisions(baseline)


def test_a_hung_receiver_changes_no_decision(baseline: dict[str, Any], tmp_path: Path) -> None:
    config = load_config(STRESS, {"out": str(tmp_path / "out")})
    with WebhookReceiver(delay=30) as hook:  # accepts, then says nothing for 30 s
        notifier = WebhookNotifier(hook.url("/hung"), timeout=30)
        # One notification per kind an hour: the stress session's second
        # add_margin and second liquidation are held back whatever the
        # machine's speed (a full queue alone depends on wall time: a fast
        # session is over before the hung sender's queue fills).
        service = NotifyService(
            [notifier], queue=2, burst=1, every=3600, timeout=0.2, end_timeout=0.5
        )
        result = trio.run(lambda: run_session(config, services=[service.service]))
    stats = result.stats
    assert stats.ticks == baseline["ticks"]
    assert dict(stats.rejections_by_rule) == baseline["rejections_by_rule"]
    assert {k: v for k, v in stats.actions.items() if v} == baseline["risk_actions"]
    counts = service.counts["webhook"]
    assert counts["sent"] == 0
    assert counts["timeout"] >= 1
    # What the rate limit refuses is counted, never queued behind the hung send.
    assert counts["rate_limited"] >= 1


class _Collect(Notifier):
    """A notifier that keeps what it is given (bot4's side of the contract)."""

    name = "collect"

    def __init__(self) -> None:
        self.got: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        self.got.append(notification)


def _action(kind: RiskActionKind, symbol: str | None = "ETH-USDT") -> Event:
    action = RiskAction(kind, symbol, "liq-ladder", "liquidation 1.4% away")
    return Event("risk.action", action, 0, 1, "")


def test_events_become_notifications() -> None:
    service = NotifyService([])
    kinds = [
        (_action(RiskActionKind.TRIP_BREAKER, None), "breaker_trip"),
        (_action(RiskActionKind.EMERGENCY_CLOSE), "liquidation"),
        (_action(RiskActionKind.REDUCE_POSITION), "liquidation"),
        (_action(RiskActionKind.ADD_MARGIN), "add_margin"),
        (Event("kernel.halted", "bot4 kill: operator pressed it", 0, 1, ""), "kill"),
        (Event("kernel.halted", "risk monitor failed: KeyError", 0, 1, ""), "halt"),
        (
            Event("shared.breaker", {"action": "trip", "reason": "desk loss"}, 0, 1, ""),
            "breaker_trip",
        ),
    ]
    for event, kind in kinds:
        note = service.notification_for(event)
        assert note is not None, event
        assert note.event == kind, (event, note)
    assert service.notification_for(Event("shared.breaker", {"action": "reset"}, 0, 1, "")) is None
    kill = service.notification_for(kinds[4][0])
    assert kill is not None
    assert "operator pressed it" in kill.text


def test_rate_limit_per_event_kind_and_bounded_queue() -> None:
    clock = [0.0]
    collect = _Collect()
    service = NotifyService([collect], queue=3, burst=2, every=10.0, clock=lambda: clock[0])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            service.notifiers = [collect]
            # The service's start without a session: channels and senders.
            await _start(service, nursery)
            for _ in range(5):
                service.handle(_action(RiskActionKind.ADD_MARGIN))
            service.handle(_action(RiskActionKind.TRIP_BREAKER, None))  # its own bucket
            await trio.sleep(0.05)
            clock[0] += 10.0  # one token back
            service.handle(_action(RiskActionKind.ADD_MARGIN))
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(main)
    counts = service.counts["collect"]
    assert counts["rate_limited"] == 3
    assert [n.event for n in collect.got] == [
        "add_margin",
        "add_margin",
        "breaker_trip",
        "add_margin",
    ]
    # The next one to go out (the trip) says how many were held back.
    assert "3 earlier notifications held back" in collect.got[2].text
    assert "held back" not in collect.got[3].text
    # A notifier that never returns: the queue fills, the rest is dropped.
    stuck = NotifyService([_Stuck()], queue=1, burst=100, every=0, timeout=60, end_timeout=0.01)

    async def flood() -> None:
        async with trio.open_nursery() as nursery:
            await _start(stuck, nursery)
            for _ in range(10):
                stuck.handle(_action(RiskActionKind.ADD_MARGIN))  # never waits
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    trio.run(flood)
    # The queue holds one, the sender at most one more (stuck in send, if it
    # took it before the flood); the rest is dropped, and nothing waited.
    assert 8 <= stuck.counts["stuck"]["dropped"] <= 9


class _Stuck(Notifier):
    name = "stuck"

    async def send(self, notification: Notification) -> None:
        await trio.sleep_forever()


async def _start(service: NotifyService, nursery: trio.Nursery) -> None:
    from collections import Counter

    from bot4.notify import OUTCOMES, _Bucket, _Channel

    for notifier in service.notifiers or ():
        channel = _Channel(
            notifier, service.queue, lambda: _Bucket(service.burst, service.every, service.clock)
        )
        service.channels.append(channel)
        service.counts[channel.name] = Counter({o: 0 for o in OUTCOMES})
        nursery.start_soon(service._sender, channel)
    await trio.lowlevel.checkpoint()


def test_plugins_list_shows_the_notifier_kind() -> None:
    result = run_bot4("plugins", "list", env={"BOT4_WEBHOOK_URL": f"https://hooks.example/{TOKEN}"})
    assert result.returncode == 0, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("webhook ")]
    assert "notifier" in line
    assert "loaded" in line
    assert TOKEN not in result.stdout + result.stderr
