"""A strategy plugin for the restart tests (tests/test_guarantees/test_restart.py).

The test installs this file as a plugin distribution (``make_plugin_dist``)
and runs the real ``bot4 run`` against the durable paper exchange. The
strategy buys at given event times, and SIGKILLs its own process at a given
event time: after the kernel has handled that tick's risk monitoring (the
kernel consults strategies last), optionally after a pause in which the
journal's timer flushes. Its decisions depend only on tick times, so a
restarted run behaves the same whatever happened before the crash.

Params: ``entries`` (ISO times to buy at), ``size``, ``leverage``,
``stop_pct`` (a stop loss that far below the price), ``kill_at`` (ISO time),
``kill_delay`` (seconds to wait before the kill).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import trio

import bot4
from bot4.contracts import Strategy
from bot4.model import MarketData, Side, Signal

BOT4_API = 1


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class RestartProbe(Strategy):
    name = "restart_probe"

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.entries = {_time(t) for t in params.get("entries", ())}
        self.size = Decimal(str(params.get("size", "1")))
        self.leverage = Decimal(str(params.get("leverage", "1")))
        pct = params.get("stop_pct")
        self.stop_pct = Decimal(str(pct)) if pct is not None else None
        kill = params.get("kill_at")
        self.kill_at = _time(kill) if kill else None
        self.kill_delay = float(params.get("kill_delay", 0))

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        if self.kill_at is not None and tick.timestamp >= self.kill_at:
            if self.kill_delay:
                await trio.sleep(self.kill_delay)
            os.kill(os.getpid(), signal.SIGKILL)
        if tick.timestamp not in self.entries:
            return ()
        stop = None
        if self.stop_pct is not None:
            stop = (tick.last * (1 - self.stop_pct / 100)).quantize(Decimal("0.01"))
        return (
            Signal(
                tick.symbol,
                Side.BUY,
                1.0,
                self.size,
                tick.last,
                stop_loss=stop,
                strategy=self.name,
                leverage=self.leverage,
            ),
        )


@bot4.hookimpl
def register_strategies(register: Any) -> None:
    register("restart_probe", RestartProbe, description="restart test probe")
