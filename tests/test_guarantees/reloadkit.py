"""A running kernel whose rule files change under it (not a test module).

The timeline, in ticks of the paper exchange (the kernel polls the rule files
every 256 ticks when ``reload_every=0``):

* 100: the rule files are broken (``spoil``) and, in the same edit, the
  position limit of ``20-entry.yaml`` is tightened from 2% to 0.01% of equity;
* 256: the reload is refused; 300: a 0.1% buy is approved: the last good
  policy is in force, nothing of the new files applies;
* 600: the breakage is repaired (``repair``), the tightened limit stays;
* 768: the reload takes; 800: the same buy is rejected by the new limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import bot4_correlation
import bot4_paper

from bot4.bus import Event, open_bus
from bot4.contracts import Strategy
from bot4.gate import RiskGate
from bot4.kernel import Kernel
from bot4.metrics import Metrics
from bot4.model import MarketData, Side, Signal
from bot4.portfolio import PortfolioTracker
from bot4.risk import RiskPolicy

REPO = Path(__file__).resolve().parent.parent.parent
RULES = REPO / "rules"
T0 = datetime(2024, 3, 1, tzinfo=UTC)
TICKS = 900
BREAK_AT, BUY_BEFORE, REPAIR_AT, BUY_AFTER = 100, 300, 600, 800
LOOSE = "max_position_fraction: 0.02 "
TIGHT = "max_position_fraction: 0.0001 "


def copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target, ignore=shutil.ignore_patterns("tests"))
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def pack() -> bot4_correlation.CorrelationPack:
    return bot4_correlation.factory({})


def _ticks(n: int) -> list[MarketData]:
    p = Decimal(50000)
    return [
        MarketData(
            symbol="BTC-USDT",
            exchange="paper",
            bid=p - Decimal("0.5"),
            ask=p + Decimal("0.5"),
            last=p,
            volume=Decimal(5),
            timestamp=T0 + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def _buy() -> Signal:
    return Signal(
        symbol="BTC-USDT",
        side=Side.BUY,
        confidence=0.5,
        size=Decimal("0.002"),  # 100 USD: 0.1% of equity
        entry=Decimal("50000.5"),
        stop_loss=Decimal(49000),
        take_profit=Decimal(52000),
        strategy="editor",
    )


class Editor(Strategy):
    """Changes the rule files and buys on the ticks of the timeline."""

    name = "editor"

    def __init__(self, at: dict[int, Callable[[], None]], policy: RiskPolicy) -> None:
        self.at = at
        self.policy = policy
        self.seen = 0
        self.digest_at_first_buy = ""

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        self.seen += 1
        action = self.at.get(self.seen)
        if action is not None:
            action()
        if self.seen == BUY_BEFORE:
            self.digest_at_first_buy = self.policy.digest
        return [_buy()] if self.seen in (BUY_BEFORE, BUY_AFTER) else []


@attrs.define
class Outcome:
    kernel: Kernel
    events: list[Event]
    metrics: dict[str, float]
    digest_before: str
    digest_at_first_buy: str
    digest_after: str
    rule_names_before: tuple[str, ...]

    def topics(self, prefix: str) -> list[object]:
        return [e.payload for e in self.events if e.topic.startswith(prefix)]


async def run_with_broken_files(
    rules: Path, spoil: Callable[[], None], repair: Callable[[], None]
) -> Outcome:
    """Run the timeline above against the rule files in ``rules``."""
    policy = RiskPolicy.load([rules], [pack()])
    digest_before, names_before = policy.digest, policy.rule_names

    def break_files() -> None:
        spoil()
        edit(rules / "20-entry.yaml", LOOSE, TIGHT)

    editor = Editor({BREAK_AT: break_files, REPAIR_AT: repair}, policy)
    tracker = PortfolioTracker(Decimal(100000))
    events: list[Event] = []
    metrics = Metrics()
    async with open_bus() as bus:
        bus.subscribe("#", events.append, name="test")
        metrics.attach(bus)
        kernel = Kernel(
            exchange=bot4_paper.create(
                {"feed": _ticks(TICKS), "balance": "100000", "slippage_bps": "0"}
            ),
            strategies=[editor],
            gate=RiskGate(policy),
            policy=policy,
            tracker=tracker,
            bus=bus,
            packs=[],
            reload_every=0.0,
            resize_rejected=False,
        )
        await kernel.run(["BTC-USDT"])
        await bus.drain()
    metrics.sample(tracker, policy, kernel.stats, None)
    outcome = Outcome(
        kernel,
        events,
        dict(metrics.sample_values()),
        digest_before,
        editor.digest_at_first_buy,
        policy.digest,
        names_before,
    )
    policy.close()
    return outcome


@contextlib.contextmanager
def fifo_unblocker(path: Path, after: float = 5.0, give_up: float = 60.0) -> Iterator[None]:
    """If something opens the FIFO ``path`` for reading and blocks, open it for
    writing after ``after`` seconds so the reader returns: a regression then
    fails the test (it checks how long it took) instead of hanging it."""
    done = threading.Event()

    def unblock() -> None:
        if done.wait(after):
            return
        deadline = time.monotonic() + give_up
        while not done.is_set() and time.monotonic() < deadline:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno not in (errno.ENXIO, errno.ENOENT):
                    return
                done.wait(0.05)  # no reader (yet)
                continue
            os.close(fd)
            return

    thread = threading.Thread(target=unblock, name="fifo-unblocker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
