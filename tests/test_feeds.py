"""Feeds: the plugin kind (``register_feeds``), the paper exchange on an async
feed, the stale-feed halt of new entries and its resumption, ``--duration``
and signals ending a live session, and broken feed plugins that must not
take bot4 down. The ccxt feed against the fake venue is tested in
plugins/exchanges/ccxt/tests/test_live_feed.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

import bot4
from bot4.bus import Event
from bot4.cli import main
from bot4.contracts import Strategy
from bot4.data import iter_ticks
from bot4.errors import ConfigError
from bot4.feeds import Feed, FeedConfig, parse_duration, parse_feed_spec, parse_symbols, parse_until
from bot4.feeds_watch import STALE_RULE, FeedWatch, stop_after
from bot4.model import MarketData, Signal
from bot4.plugins import PluginManager
from bot4.replay import replay
from bot4.session import (
    SessionConfig,
    SessionContext,
    StrategyConfig,
    default_services,
    run_session,
)
from tests.conftest import REPO, make_plugin_dist, run_bot4, write_ticks

# A feed plugin as a third party would ship it: synthetic quotes that swing,
# one per symbol every `interval` seconds, stamped with the wall clock.
SINE_FEED = """
import math
from datetime import UTC, datetime
from decimal import Decimal

import bot4
import trio
from bot4.feeds import Feed
from bot4.model import MarketData

BOT4_API = 1


class Sine(Feed):
    name = "sine"

    def __init__(self, config):
        self.symbols = config["symbols"]
        self.interval = config["interval"]
        self.fail_after = config.get("fail_after")

    def ticks(self):
        return self._ticks()

    async def _ticks(self):
        i = 0
        while True:
            i += 1
            if self.fail_after is not None and i > self.fail_after:
                raise RuntimeError("the feed's socket went away")
            for n, symbol in enumerate(self.symbols):
                mid = (1000 * (n + 1)) * (1 + 0.01 * math.sin(i / 5))
                bid, ask = Decimal(f"{mid - 0.5:.2f}"), Decimal(f"{mid + 0.5:.2f}")
                yield MarketData(symbol=symbol, exchange="sine", bid=bid, ask=ask,
                                 last=(bid + ask) / 2, volume=Decimal(1),
                                 timestamp=datetime.now(UTC))
            await trio.sleep(self.interval)


@bot4.hookimpl
def register_feeds(register):
    register("sine", Sine, description="synthetic quotes")
"""

FAST_SMA = """
strategies:
  - name: sma_cross
    params: {fast: 3, slow: 8, size: "0.01", stop_loss_pct: "2", take_profit_pct: "4"}
"""


def _site(tmp_path: Path, source: str = SINE_FEED, name: str = "sine") -> dict[str, str | None]:
    site = make_plugin_dist(
        tmp_path / "site",
        dist=f"bot4-plugin-{name}",
        module=f"bot4_{name}",
        source=source,
        entry_name=name,
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "BOT4_PLUGINS": os.environ["BOT4_PLUGINS"] + "," + name}


# --- parsing ---------------------------------------------------------------------------


def test_specs_symbols_and_durations_parse_or_say_why() -> None:
    assert parse_feed_spec("ccxt:binance") == ("ccxt", "binance")
    assert parse_feed_spec("sine") == ("sine", None)
    assert parse_symbols("btc-usdt, ETH-USDT,BTC-USDT") == ("BTC-USDT", "ETH-USDT")
    assert parse_duration("90") == 90
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_duration("500ms") == 0.5
    now = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    assert parse_until("2026-12-01T12:30Z", now) == 5400
    assert parse_until("12:00", now) == 3600
    assert parse_until("10:00", now) == 23 * 3600  # already past today: tomorrow
    for bad, fn in (
        ("Binance!", parse_feed_spec),
        ("BTCUSDT", parse_symbols),
        (" , ", parse_symbols),
        ("0s", parse_duration),
        ("ten minutes", parse_duration),
    ):
        with pytest.raises(ConfigError):
            fn(bad)
    with pytest.raises(ConfigError, match="in the past"):
        parse_until("2026-12-01T10:00Z", now)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--symbols", "BTC-USDT"], "--symbols: only with --feed"),
        (["--feed", "ccxt:binance"], "--feed: name the symbols"),
        (["--feed", "ccxt:binance", "--symbols", "BTC"], "is not a symbol"),
        (["--feed", "nosuch", "--symbols", "BTC-USDT"], "no feed named 'nosuch'"),
        (["--feed", "ccxt:binance", "--symbols", "BTC-USDT", "--data", "x.csv"], "drop --data"),
        (["--feed", "ccxt:binance", "--symbols", "BTC-USDT", "--speed", "1"], "drop --speed"),
        (["--feed", "ccxt:binance", "--symbols", "BTC-USDT", "--duration", "soon"], "duration"),
        (
            ["--feed", "ccxt:binance", "--symbols", "BTC-USDT", "--stale-after", "0"],
            "--stale-after",
        ),
    ],
)
def test_bad_live_options_are_one_line_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["run", *argv, "--out", str(tmp_path / "out"), "--no-chart"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


# --- a feed plugin of its own distribution -----------------------------------------------


def test_feed_plugin_from_a_separate_dist_is_listed_and_trades(tmp_path: Path) -> None:
    env = _site(tmp_path)
    listing = run_bot4("plugins", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["sine"]["status"] == "loaded"
    assert rows["sine"]["kind"] == "feed"
    assert rows["sine"]["hooks"] == ["register_feeds"]
    assert rows["ccxt"]["kind"] == "exchange + feed"  # the bundled ccxt feed

    config = tmp_path / "session.yaml"
    config.write_text(FAST_SMA)
    out = tmp_path / "out"
    run = run_bot4(
        "run", "--feed", "sine", "--symbols", "BTC-USDT,ETH-USDT", "--feed-interval", "0.02",
        "--duration", "3s", "--config", str(config), "--out", str(out), "--no-chart",
        env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "stopped: --duration 3s elapsed" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] > 20
    assert summary["orders_approved"] > 0  # the strategy traded on the feed
    assert summary["fills"] > 0  # filled by the paper engine
    replay = run_bot4("replay", str(out / "recording.jsonl.gz"), env=env)
    assert replay.returncode == 0, replay.stdout + replay.stderr


BROKEN_REGISTER = """
import bot4
BOT4_API = 1

@bot4.hookimpl
def register_feeds(register):
    raise RuntimeError("no feed today")
"""

BROKEN_FACTORY = """
import bot4
BOT4_API = 1

def make(config):
    raise KeyError("socket_url")

@bot4.hookimpl
def register_feeds(register):
    register("badfactory", make)
"""


def test_a_feed_plugin_that_fails_to_register_does_not_take_bot4_down(tmp_path: Path) -> None:
    env = _site(tmp_path, BROKEN_REGISTER, "broken")
    listing = run_bot4("plugins", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["broken"]["status"].startswith("failed: register_feeds raised RuntimeError")
    assert all(rows[n]["status"] == "loaded" for n in ("ccxt", "paper", "sma_cross"))
    run = run_bot4("run", "--feed", "broken", "--symbols", "BTC-USDT", env=env)
    assert run.returncode == 2
    assert "no feed named 'broken' is registered" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_feed_whose_factory_raises_is_one_line_exit_2(tmp_path: Path) -> None:
    env = _site(tmp_path, BROKEN_FACTORY, "badfactory")
    run = run_bot4("run", "--feed", "badfactory", "--symbols", "BTC-USDT", env=env)
    assert run.returncode == 2
    assert "the 'badfactory' plugin's feed failed to start: KeyError" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_feed_that_raises_mid_session_ends_it_cleanly(tmp_path: Path) -> None:
    env = _site(tmp_path)
    out = tmp_path / "out"
    config = tmp_path / "session.yaml"
    config.write_text("exchange: {name: paper}\n")
    # The plugin's own option reaches its factory through the feed config.
    code = """
import sys
from bot4.cli import run as cli_run
from bot4.feeds import FeedConfig
original = FeedConfig.factory_config
FeedConfig.factory_config = lambda self: {**original(self), "fail_after": 5}
from bot4.cli import main
sys.exit(main(sys.argv[1:]))
"""
    full_env = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    run = subprocess.run(
        [sys.executable, "-c", code, "run", "--feed", "sine", "--symbols", "BTC-USDT",
         "--feed-interval", "0.01", "--out", str(out), "--no-chart"],
        capture_output=True, text=True, env=full_env, cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "feed sine failed: RuntimeError: the feed's socket went away" in run.stderr
    assert "Traceback" not in run.stderr
    assert json.loads((out / "summary.json").read_text())["ticks"] == 5


def test_sigterm_ends_a_live_session_cleanly(tmp_path: Path) -> None:
    env = _site(tmp_path)
    full_env = {**os.environ, **{k: v for k, v in env.items() if v is not None}}
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot4", "run", "--feed", "sine", "--symbols", "BTC-USDT",
         "--feed-interval", "0.02", "--out", str(out), "--no-chart"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the session is up once it says how positions are protected
        seen.append(line)
        if line.startswith("protection:"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(seen) + stderr
    assert "stopped: SIGTERM" in stdout
    assert json.loads((out / "summary.json").read_text())["ticks"] > 0


# --- the paper exchange on an async feed --------------------------------------------------


class _AsyncTicks:
    """A list of ticks as an async feed (each one awaited, as a live feed's)."""

    def __init__(self, ticks: Sequence[MarketData]) -> None:
        self._ticks = iter(ticks)

    def __aiter__(self) -> _AsyncTicks:
        return self

    async def __anext__(self) -> MarketData:
        await trio.lowlevel.checkpoint()
        tick = next(self._ticks, None)
        if tick is None:
            raise StopAsyncIteration
        return tick


def test_paper_on_an_async_feed_decides_as_on_the_same_ticks_from_a_file(tmp_path: Path) -> None:
    ticks = list(iter_ticks(write_ticks(tmp_path / "ticks.csv", seconds=900)))
    strategy = StrategyConfig(
        "sma_cross",
        {"fast": 10, "slow": 60, "size": "0.01", "stop_loss_pct": "2", "take_profit_pct": "4"},
    )

    def session(feed: Any, out: str) -> Any:
        config = SessionConfig(strategies=(strategy,), out=str(tmp_path / out), journal="off")
        return trio.run(lambda: run_session(config, feed=feed, services=[]))

    sync = session(iter(ticks), "sync")
    live = session(_AsyncTicks(ticks), "live")
    assert sync.stats.approved > 0
    assert sync.stats.fills > 0
    for field in ("ticks", "approved", "rejected", "resized", "fills"):
        assert getattr(live.stats, field) == getattr(sync.stats, field), field
    assert live.stats.rejections_by_rule == sync.stats.rejections_by_rule
    # The money, to the cent. (Not the drawdown: the report samples equity
    # per batch of events it is handed, and batches follow task scheduling.)
    live_summary, sync_summary = live.report.finish(live.stats), sync.report.finish(sync.stats)
    for field in ("final_equity", "pnl", "fees", "trades", "wins"):
        assert getattr(live_summary, field) == getattr(sync_summary, field), field


# --- stale feed: entries halt, then resume --------------------------------------------------


class _Scripted(Feed):
    """BTC every 50 ms throughout; ETH only before ``gap[0]`` and after ``gap[1]``
    seconds: ETH goes stale in between."""

    name = "scripted"

    def __init__(self, gap: tuple[float, float]) -> None:
        self.gap = gap
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    def ticks(self) -> AsyncIterator[MarketData]:
        return self._ticks()

    async def _ticks(self) -> AsyncIterator[MarketData]:
        start = trio.current_time()
        stamp = datetime(2026, 12, 1, tzinfo=UTC)
        while True:
            # Two seconds of event time a step: the order-rate rule (per minute
            # of event time) stays out of the way of the entries asked here.
            stamp += timedelta(seconds=2)
            elapsed = trio.current_time() - start
            yield _tick("BTC-USDT", "50000", stamp)
            if not self.gap[0] <= elapsed < self.gap[1]:
                yield _tick("ETH-USDT", "3000", stamp)
            await trio.sleep(0.05)


def _tick(symbol: str, price: str, when: datetime) -> MarketData:
    p = Decimal(price)
    return MarketData(
        symbol=symbol, exchange="scripted", bid=p - 1, ask=p + 1, last=p, volume=Decimal(1),
        timestamp=when,
    )  # fmt: skip


class _EthOnBtc(Strategy):
    """Every 4th BTC tick: a small ETH entry, alternately long and short (so the
    book stays small and the default rules let it through)."""

    name = "eth_on_btc"

    def __init__(self) -> None:
        self.n = 0

    async def on_market_data(self, tick: MarketData) -> Sequence[Signal]:
        if tick.symbol != "BTC-USDT":
            return ()
        self.n += 1
        if self.n % 4:
            return ()
        buy = bool(self.n % 8)
        return [
            Signal(symbol="ETH-USDT", side="buy" if buy else "sell", confidence=1.0,
                   size=Decimal("0.01"), entry=Decimal(3000),
                   stop_loss=Decimal(2940 if buy else 3060), strategy=self.name)
        ]  # fmt: skip


class _StrategyPlugin:
    BOT4_API = 1

    @bot4.hookimpl
    def register_strategies(self, register: Any) -> None:
        register("eth_on_btc", lambda config: _EthOnBtc())


def test_a_stale_feed_halts_new_entries_and_they_resume_with_the_data(tmp_path: Path) -> None:
    # Generous margins: the machine may be loaded (BTC late too is tolerated).
    feed = _Scripted(gap=(0.8, 2.8))
    watch = FeedWatch(
        feed, FeedConfig("scripted", None, ("BTC-USDT", "ETH-USDT"), 0.05), stale_after=0.8
    )
    manager = PluginManager.load(extra=[("eth_on_btc", _StrategyPlugin())])
    events: list[tuple[float, str, Any]] = []
    lines: list[str] = []

    async def observe(ctx: SessionContext, nursery: trio.Nursery) -> None:
        async def keep(event: Event) -> None:
            if event.topic.startswith(("feed.", "risk.approved", "risk.rejected")):
                events.append((trio.current_time(), event.topic, event.payload))

        ctx.bus.subscribe("#", keep)

    config = SessionConfig(
        strategies=(StrategyConfig("eth_on_btc"),), out=str(tmp_path / "out"), journal="off"
    )

    async def session() -> Any:
        return await run_session(
            config,
            manager=manager,
            feed=watch,
            announce=lines.append,
            services=[
                *default_services(config), observe, watch.service, stop_after(3.8, "test over")
            ],
        )  # fmt: skip

    result = trio.run(session)
    assert result.stopped == "test over"
    assert result.error is None
    events = [
        e
        for e in events
        if not e[1].startswith("feed.") or "ETH-USDT" in (e[2].get("symbols") or [e[2]["symbol"]])
    ]
    topics = [topic for _, topic, _ in events]
    assert topics.count("feed.stale") == 1
    assert topics.count("feed.resumed") == 1
    stale_at, resumed_at = topics.index("feed.stale"), topics.index("feed.resumed")
    assert events[stale_at][2]["stale_after"] == 0.8
    assert events[resumed_at][2]["gap_seconds"] > 0.8
    before, during, after = topics[:stale_at], topics[stale_at:resumed_at], topics[resumed_at:]
    assert "risk.approved" in before
    assert "risk.approved" not in during  # no entry while ETH was stale
    refused = [p for _, t, p in events[stale_at:resumed_at] if t == "risk.rejected"]
    # (an entry the policy refuses never reaches the gate's checks)
    stale_refusals = [p for p in refused if p.rule == STALE_RULE]
    assert stale_refusals
    assert "no new ETH-USDT data" in stale_refusals[0].reason
    assert "risk.approved" in after  # entries resumed with the data
    assert result.stats.rejections_by_rule[STALE_RULE] == len(
        [p for _, t, p in events if t == "risk.rejected" and p.rule == STALE_RULE]
    )
    said = "\n".join(lines)
    assert "feed scripted: no new data for" in said
    assert "new entries halted" in said
    assert "feed scripted: ETH-USDT data again after" in said
    assert "new entries resume" in said
    assert feed.closed  # the watch closed the feed at the end
    # The replay has no wall clock: it refuses the orders the recording says
    # stale-feed refused (bot4.feeds_replay), and matches.
    assert result.recording is not None
    replayed = trio.run(lambda: replay(result.recording, manager=manager))
    assert replayed.mismatch is None
    assert replayed.matched


def test_the_feed_can_be_configured_in_the_session_file(tmp_path: Path) -> None:
    env = _site(tmp_path)
    config = tmp_path / "session.yaml"
    config.write_text(
        FAST_SMA + "feed:\n  name: sine\n  symbols: [BTC-USDT]\n  interval: 0.02\n"
        "  stale_after: 5\n"
    )
    out = tmp_path / "out"
    run = run_bot4(
        "run", "--duration", "2s", "--config", str(config), "--out", str(out), "--no-chart",
        env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads((out / "summary.json").read_text())["ticks"] > 20
    # A bad value is named at its line; the command line overrides the file.
    config.write_text("feed:\n  name: sine\n  symbols: [BTC-USDT]\n  interval: soon\n")
    bad = run_bot4("run", "--config", str(config), "--out", str(out), env=env)
    assert bad.returncode == 2
    assert f"{config}:2: feed.interval: 'soon' is not a number of seconds" in bad.stderr
    config.write_text("feed: {name: ccxt:binance, symbols: [BTC-USDT], apikey: x}\n")
    bad = run_bot4("run", "--config", str(config), "--out", str(out), env=env)
    assert bad.returncode == 2
    assert f"{config}:1: ccxt feed: unknown config field(s) 'apikey'" in bad.stderr
