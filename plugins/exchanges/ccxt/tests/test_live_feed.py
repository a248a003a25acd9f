"""The ``ccxt`` feed against the fake Binance (ccxt's real binance client over
HTTP to 127.0.0.1, no network): quotes polled and de-duplicated, unknown
symbols refused, a venue that stops answering making the feed stale (new
entries halted) and its return resuming them, and ``bot4 run --exchange
paper --feed ccxt:binance`` end to end."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from bot4_ccxt.fakebinance import FakeBinance
from bot4_ccxt.feed import CcxtFeed

import bot4
from bot4.bus import Event
from bot4.cli import main
from bot4.contracts import Strategy
from bot4.errors import ConfigError, ExchangeUnavailable
from bot4.feeds import FeedConfig
from bot4.feeds_watch import STALE_RULE, FeedWatch, stop_after
from bot4.model import MarketData, Signal
from bot4.plugins import PluginManager
from bot4.session import (
    SessionConfig,
    SessionContext,
    StrategyConfig,
    default_services,
    run_session,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _tick(symbol: str, price: float, second: int) -> MarketData:
    p = Decimal(f"{price:.2f}")
    return MarketData(
        symbol=symbol,
        exchange="binance",
        bid=p,
        ask=p + Decimal("0.5"),
        last=p,
        volume=Decimal(2),
        timestamp=T0 + timedelta(seconds=second),
    )


@pytest.fixture
def quiet_venue() -> Iterator[FakeBinance]:
    with FakeBinance() as v:
        yield v


def _feed(venue: FakeBinance, *symbols: str, interval: float = 0.02) -> CcxtFeed:
    return CcxtFeed.from_config(
        {
            "source": "binance",
            "symbols": list(symbols),
            "interval": interval,
            "api_url": venue.url,
            "timeout": 5,
        }
    )


def test_the_feed_yields_each_changed_quote_once(quiet_venue: FakeBinance) -> None:
    venue = quiet_venue
    venue.push(_tick("BTC-USDT", 50000, 0))
    venue.push(_tick("ETH-USDT", 3000, 0))

    async def read() -> list[MarketData]:
        feed = _feed(venue, "BTC-USDT", "ETH-USDT")
        await feed.connect()
        ticks = feed.ticks()
        got = [await ticks.__anext__(), await ticks.__anext__()]
        polls = len(venue.hits_of("GET", "/api/v3/ticker/24hr"))
        with trio.move_on_after(0.3):  # the same quotes, asked again: no tick
            got.append(await ticks.__anext__())
        assert len(venue.hits_of("GET", "/api/v3/ticker/24hr")) > polls + 4
        venue.push(_tick("BTC-USDT", 50010, 1))
        got.append(await ticks.__anext__())
        await feed.close()
        return got

    got = trio.run(read)
    assert [(t.symbol, t.last) for t in got] == [
        ("BTC-USDT", Decimal(50000)),
        ("ETH-USDT", Decimal(3000)),
        ("BTC-USDT", Decimal(50010)),
    ]
    assert got[2].timestamp == T0 + timedelta(seconds=1)  # the venue's own time
    assert got[0].bid == Decimal(50000)
    assert got[0].ask == Decimal("50000.5")


def test_an_unknown_symbol_or_venue_is_refused_at_connect(quiet_venue: FakeBinance) -> None:
    with pytest.raises(ConfigError, match="DOGE-USDT is not a market of binance"):
        trio.run(_feed(quiet_venue, "DOGE-USDT").connect)
    with pytest.raises(ConfigError, match="ccxt has no such exchange"):
        trio.run(CcxtFeed.from_config({"source": "nosuchvenue", "symbols": ["BTC-USDT"]}).connect)
    with pytest.raises(ConfigError, match="unknown config field"):
        CcxtFeed.from_config({"source": "binance", "symbols": ["BTC-USDT"], "apikey": "x"})
    quiet_venue.stop()
    with pytest.raises(ExchangeUnavailable, match="cannot load the venue's markets"):
        trio.run(_feed(quiet_venue, "BTC-USDT").connect)


def test_failed_polls_are_logged_once_and_the_feed_carries_on(
    quiet_venue: FakeBinance, caplog: pytest.LogCaptureFixture
) -> None:
    venue = quiet_venue
    venue.push(_tick("BTC-USDT", 50000, 0))

    async def read() -> list[MarketData]:
        feed = _feed(venue, "BTC-USDT")
        await feed.connect()
        ticks = feed.ticks()
        got = [await ticks.__anext__()]
        venue.inject("GET", "/api/v3/ticker/24hr", "500", count=4)
        venue.push(_tick("BTC-USDT", 50020, 1))
        got.append(await ticks.__anext__())
        return got

    with caplog.at_level(logging.WARNING, logger="bot4_ccxt.feed"):
        got = trio.run(read)
    assert got[1].last == Decimal(50020)
    failed = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failed) == 1  # once per streak, not once per poll
    assert any("polling works again" in r.getMessage() for r in caplog.records)


class _EthOnBtc(Strategy):
    """Every 4th BTC tick: a small ETH entry, alternately long and short."""

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


def test_stale_quotes_and_a_venue_gone_quiet_halt_entries_until_data_returns(
    quiet_venue: FakeBinance, tmp_path: Path
) -> None:
    """Through ccxt: ETH's quote stops changing while BTC's goes on (ETH
    stale: its entries refused by ``stale-feed``), then the venue stops
    answering altogether (everything stale), then it comes back with fresh
    quotes and entries pass again."""
    venue = quiet_venue
    phase = {"eth": True}
    second = 0

    async def push_quotes() -> None:
        nonlocal second
        while True:
            second += 1
            if phase["eth"]:
                venue.push(_tick("ETH-USDT", 3000 + second % 7, second))
            venue.push(_tick("BTC-USDT", 50000 + second % 5, second))
            await trio.sleep(0.05)

    feed = _feed(venue, "BTC-USDT", "ETH-USDT", interval=0.05)
    watch = FeedWatch(
        feed, FeedConfig("ccxt", "binance", ("BTC-USDT", "ETH-USDT"), 0.05), stale_after=0.6
    )
    events: list[tuple[str, Any]] = []
    lines: list[str] = []
    manager = PluginManager.load(extra=[("eth_on_btc", _StrategyPlugin())])

    async def observe(ctx: SessionContext, nursery: trio.Nursery) -> None:
        async def keep(event: Event) -> None:
            if event.topic.startswith(("feed.", "risk.approved", "risk.rejected")):
                events.append((event.topic, event.payload))

        ctx.bus.subscribe("#", keep)

        async def script() -> None:
            await trio.sleep(1.0)
            phase["eth"] = False  # ETH's quote freezes: asked again, it is the same
            await trio.sleep(1.8)
            await trio.to_thread.run_sync(venue.stop)  # the venue goes quiet
            await trio.sleep(1.0)
            phase["eth"] = True
            await trio.to_thread.run_sync(venue.start)

        nursery.start_soon(push_quotes)
        nursery.start_soon(script)

    config = SessionConfig(
        strategies=(StrategyConfig("eth_on_btc"),), out=str(tmp_path / "out"), journal="off"
    )
    services = [*default_services(config), observe, watch.service, stop_after(6.0, "done")]
    result = trio.run(
        lambda: run_session(
            config, manager=manager, feed=watch, announce=lines.append, services=services
        )
    )
    assert result.error is None
    topics = [t for t, _ in events]

    def first(topic: str, symbol: str, after: int = 0) -> int:
        return next(
            i
            for i, (t, p) in enumerate(events)
            if i >= after and t == topic and symbol in (p.get("symbols") or [p.get("symbol")])
        )

    eth_stale = first("feed.stale", "ETH-USDT")
    eth_back = first("feed.resumed", "ETH-USDT", eth_stale)
    assert "risk.approved" in topics[:eth_stale]
    assert "risk.approved" not in topics[eth_stale:eth_back]
    refused = [p for t, p in events[eth_stale:eth_back] if t == "risk.rejected"]
    assert any(p.rule == STALE_RULE for p in refused)
    btc_stale = first("feed.stale", "BTC-USDT", eth_stale)  # the venue went quiet
    assert eth_stale < btc_stale < eth_back
    assert "risk.approved" in topics[eth_back:]  # entries resumed with the data
    said = "\n".join(lines)
    assert "feed ccxt:binance: no new data for" in said
    assert "new entries halted" in said
    assert "ETH-USDT data again after" in said
    assert "new entries resume" in said
    assert result.stats.rejections_by_rule[STALE_RULE] > 0


def test_bot4_run_paper_on_the_ccxt_feed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FakeBinance() as venue:
        second = iter(range(10_000))
        ticks = (
            _tick(sym, (50000 if sym == "BTC-USDT" else 3000) * (1 + 0.002 * ((n // 2) % 9 - 4)), n)
            for n in second
            for sym in ("BTC-USDT", "ETH-USDT")
        )
        venue.feed(ticks, 0.01)
        config = tmp_path / "session.yaml"
        config.write_text(
            "strategies:\n  - name: sma_cross\n    params: {fast: 3, slow: 8, size: '0.01', "
            "stop_loss_pct: '2', take_profit_pct: '4'}\n"
        )
        out = tmp_path / "out"
        code = main(
            [
                "run", "--exchange", "paper", "--feed", "ccxt:binance", "--feed-url", venue.url,
                "--symbols", "BTC-USDT,ETH-USDT", "--feed-interval", "0.05", "--duration", "4s",
                "--config", str(config), "--out", str(out), "--no-chart",
            ]
        )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stopped: --duration 4s elapsed" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] > 20
    assert summary["orders_approved"] > 0
    assert summary["fills"] > 0
    assert STALE_RULE not in summary["rejections_by_rule"]


def test_bot4_run_on_a_symbol_the_venue_does_not_list_is_one_line_exit_2(
    quiet_venue: FakeBinance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "run", "--feed", "ccxt:binance", "--feed-url", quiet_venue.url,
            "--symbols", "BTC-USDT,DOGE-XYZ", "--out", str(tmp_path / "out"), "--no-chart",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "bot4: feed ccxt:binance: DOGE-XYZ is not a market of binance" in err
    assert "Traceback" not in err
