"""The paper venue's durable mode (``state:``): what it accepted survives the
process, and a restarted exchange continues the feed after the last tick."""

from __future__ import annotations

import itertools
import sqlite3
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
import trio
from bot4_paper import PaperExchange
from bot4_paper.durable import TICK_FLUSH, DurableEngine

from bot4.data import iter_sample
from bot4.errors import ConfigError
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

TICKS = list(itertools.islice(iter_sample(), 3000))


def _order(cid: str, side: Side, qty: str = "0.01", **kw: Decimal) -> Order:
    return Order(cid, "BTC-USDT", side, OrderType.MARKET, Decimal(qty), **kw)  # type: ignore[arg-type]


def _run(engine: DurableEngine, ticks: list[MarketData]) -> None:
    for i, tick in enumerate(ticks):
        engine.on_tick(tick)
        if tick.symbol == "BTC-USDT" and i % 300 == 0:
            side = Side.BUY if (i // 300) % 3 else Side.SELL
            stop = tick.bid * Decimal("0.999") if side is Side.BUY else None
            engine.place(_order(f"c{i}", side, stop_loss=stop) if stop else _order(f"c{i}", side))


def test_state_survives_a_restart_exactly(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    engine = DurableEngine(path)
    _run(engine, TICKS[:2000])
    before = (
        engine.positions(),
        engine.balance(),
        [o for o in engine.open_orders()],
        engine.fills(),
        engine.markets,
    )
    assert before[3], "the scenario should trade"
    engine.close()  # nothing is flushed at close: every change was written already

    again = DurableEngine(path)
    try:
        assert (
            again.positions(),
            again.balance(),
            again.open_orders(),
            again.fills(),
            again.markets,
        ) == before
        assert again.resume_after is not None
        assert again.resume_after <= TICKS[1999].timestamp
        # The same client id again is the same order (idempotent across restarts).
        first = before[3][0]
        assert again.order_state(first.client_order_id).status is OrderStatus.FILLED
    finally:
        again.close()


def test_a_restart_continues_like_an_uninterrupted_venue(tmp_path: Path) -> None:
    straight = DurableEngine(tmp_path / "a.sqlite")
    _run(straight, TICKS)
    split = DurableEngine(tmp_path / "b.sqlite")
    _run(split, TICKS[:1500])
    split.close()
    split = DurableEngine(tmp_path / "b.sqlite")
    resume = split.resume_after
    assert resume is not None
    rest = [t for t in TICKS if t.timestamp > resume]
    # Ticks after the last write but before the "crash" are replayed: harmless.
    offset = len(TICKS) - len(rest)
    for i, tick in enumerate(rest, start=offset):
        split.on_tick(tick)
        if tick.symbol == "BTC-USDT" and i % 300 == 0 and i >= 1500:
            side = Side.BUY if (i // 300) % 3 else Side.SELL
            stop = tick.bid * Decimal("0.999") if side is Side.BUY else None
            split.place(_order(f"c{i}", side, stop_loss=stop) if stop else _order(f"c{i}", side))
    try:
        assert split.positions() == straight.positions()
        assert split.balance() == straight.balance()
        assert [f.fill_id for f in split.fills()] == [f.fill_id for f in straight.fills()]
    finally:
        split.close()
        straight.close()


def test_quiet_ticks_are_written_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    engine = DurableEngine(path)
    for tick in TICKS[: TICK_FLUSH + 10]:
        engine.on_tick(tick)
    engine.close()
    conn = sqlite3.connect(path)
    try:
        (value,) = conn.execute("SELECT value FROM paper_meta WHERE key = 'last_tick'").fetchone()
    finally:
        conn.close()
    assert TICKS[0].timestamp.isoformat() < value.strip('"')


def test_the_exchange_skips_ticks_the_venue_took(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    config = {"feed": TICKS[:1000], "state": str(path)}

    async def consume(exchange: PaperExchange) -> list[MarketData]:
        await exchange.connect()
        seen = [e async for e in exchange.stream([]) if isinstance(e, MarketData)]
        await exchange.close()
        return seen

    first = trio.run(consume, PaperExchange.from_config(config))
    assert len(first) == 1000
    exchange = PaperExchange.from_config({**config, "feed": TICKS[:1500]})
    assert exchange.durable
    second = trio.run(consume, exchange)
    assert second
    assert all(t.timestamp > TICKS[999].timestamp for t in second)
    assert not PaperExchange.from_config({"feed": []}).durable


def test_bad_state_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "paper.sqlite"
    engine = DurableEngine(path, balance=Decimal(5000))
    engine.on_tick(TICKS[0])
    engine.place(_order("x1", Side.BUY))
    engine.close()
    with pytest.raises(ConfigError, match="opened with balance 5000, the config says 10000"):
        DurableEngine(path)
    with pytest.raises(ConfigError, match="'state'"):
        PaperExchange.from_config({"feed": [], "state": 42})
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a paper state file"):
        DurableEngine(junk)
    with pytest.raises(ConfigError, match="does not exist"):
        DurableEngine(tmp_path / "missing" / "p.sqlite")


def test_the_margin_account_survives_a_restart(tmp_path: Path) -> None:
    from bot4_paper.margin_book import MarketMargin

    path = tmp_path / "paper.sqlite"
    margin = {"*": MarketMargin(funding_rate=Decimal("0.0001"))}
    engine = DurableEngine(path, margin=margin)
    tick = TICKS[0]
    engine.on_tick(tick)
    engine.set_leverage("BTC-USDT", Decimal(10))
    engine.place(_order("e", Side.BUY, "0.1", leverage=Decimal(10)))
    engine.add_margin("BTC-USDT", Decimal(50))
    state = engine.margin_state("BTC-USDT")
    balance = engine.balance()
    engine.close()
    again = DurableEngine(path, margin=margin)
    assert again.margin.leverage == {"BTC-USDT": Decimal(10)}
    assert again.margin.added == {"BTC-USDT": Decimal(50)}
    assert again.margin_state("BTC-USDT") == state
    assert again.balance() == balance
    again.close()


def test_the_funding_rates_from_the_data_survive_a_restart(tmp_path: Path) -> None:
    """A restarted venue skips the ticks it took, so the rate they carried
    must come back from the state file: the next funding time pays it."""
    path = tmp_path / "paper.sqlite"
    engine = DurableEngine(path)
    rated = attrs.evolve(TICKS[0], funding_rate=Decimal("0.0002"), mark=TICKS[0].mid)
    engine.on_tick(rated)
    engine.set_leverage("BTC-USDT", Decimal(10))
    engine.place(_order("e", Side.BUY, "0.1", leverage=Decimal(10)))
    engine.drain()
    engine.close()
    again = DurableEngine(path)
    assert again.margin.rates == {"BTC-USDT": Decimal("0.0002")}
    later = attrs.evolve(TICKS[0], timestamp=TICKS[0].timestamp.replace(hour=8, second=1))
    again.on_tick(later)  # 08:00 passed: funded at the data's rate, none configured
    assert again.margin.funding_events == 1
    assert again.margin.funding_paid == Decimal("0.1") * TICKS[0].mid * Decimal("0.0002")
    again.close()


def test_the_venues_clock_never_goes_back_and_survives_a_restart(tmp_path: Path) -> None:
    # The venue's "now" is the latest tick's time (compared in integer ns);
    # an older tick does not move it back, before or after a restart (which
    # restores the clock of the last state written).
    from datetime import timedelta

    path = tmp_path / "paper.sqlite"
    engine = DurableEngine(path)
    _run(engine, TICKS[:100])
    latest = TICKS[99].timestamp
    assert engine.now == latest
    engine.on_tick(attrs.evolve(TICKS[50]))  # an older tick
    assert engine.now == latest
    engine.close()
    again = DurableEngine(path)
    try:
        restored = again.now
        assert restored <= latest
        again.on_tick(attrs.evolve(TICKS[0], timestamp=restored - timedelta(seconds=1)))
        assert again.now == restored
        again.on_tick(TICKS[100])
        assert again.now == TICKS[100].timestamp
    finally:
        again.close()
