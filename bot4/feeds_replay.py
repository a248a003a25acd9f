"""The stale-feed refusals of a recorded live-feed session, for ``bot4 replay``.

Whether a feed was stale when an order was asked depends on the wall clock
of the live run (:mod:`bot4.feeds_watch`), which a replay does not have. So
the replay answers from the recording: :func:`recorded_stale_services` reads
it once (ticks skipped: about 2% of a replay of the default session) for the
orders the gate refused by ``stale-feed``, and installs a gate check that
refuses exactly those orders (by client order id) with the recorded reason
and figures. Every other order is decided by the recorded policy, as before;
an order refused in the recording but approved by the policy in the replay
still shows up as a difference elsewhere, since the check runs only after
the policy approved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot4.feeds_watch import STALE_RULE
from bot4.model import Order, Portfolio, Rejected
from bot4.recording_read import read_stream

if TYPE_CHECKING:
    import trio

    from bot4.session_services import SessionContext, SessionService

__all__ = ["RecordedStaleCheck", "recorded_stale_services"]


class RecordedStaleCheck:
    """Refuses the orders the recording says ``stale-feed`` refused."""

    name = STALE_RULE

    def __init__(self, refused: Mapping[str, Mapping[str, Any]]) -> None:
        self.refused = refused  # client order id -> the recorded Rejected payload

    async def check(self, order: Order, portfolio: Portfolio) -> Rejected | None:
        recorded = self.refused.get(order.client_order_id)
        if recorded is None:
            return None
        values = recorded.get("values")
        return Rejected(
            rule=STALE_RULE,
            reason=str(recorded.get("reason", "")),
            values=dict(values) if isinstance(values, Mapping) else {},
            order=order,
        )


def stale_refusals(recording: Path) -> dict[str, Mapping[str, Any]]:
    """The recorded ``stale-feed`` refusals by client order id."""
    refused: dict[str, Mapping[str, Any]] = {}
    for _, topic, record in read_stream(recording, ticks="skip"):
        if topic != "risk.rejected":
            continue
        payload = record.get("payload")
        if not isinstance(payload, Mapping) or payload.get("rule") != STALE_RULE:
            continue
        order = payload.get("order")
        if isinstance(order, Mapping) and isinstance(order.get("client_order_id"), str):
            refused[order["client_order_id"]] = payload
    return refused


def recorded_stale_services(recording: Path) -> list[SessionService]:
    """The replay's services: the recorded stale-feed check, when there is any."""
    refused = stale_refusals(recording)
    if not refused:
        return []

    async def service(ctx: SessionContext, nursery: trio.Nursery) -> None:
        ctx.gate.checks = (*ctx.gate.checks, RecordedStaleCheck(refused))

    return [service]
