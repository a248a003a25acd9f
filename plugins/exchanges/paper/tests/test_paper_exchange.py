"""PaperExchange: the async Exchange contract, stream order, config, registration."""

from __future__ import annotations

import gc
import gzip
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import bot4_paper
import pytest
from bot4_paper import PaperExchange

from bot4.contracts import Capability, Exchange
from bot4.errors import ConfigError, InvalidOrder, OrderNotFound
from bot4.model import Fill, MarketData, Order, OrderState, OrderStatus

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def ticks(*quotes: tuple[str, str, str], symbol: str = "BTC-USDT") -> list[MarketData]:
    return [
        MarketData(
            symbol=symbol,
            exchange="paper",
            bid=D(b),
            ask=D(a),
            last=D(b),
            volume=D(v),
            timestamp=T0 + timedelta(seconds=i),
        )
        for i, (b, a, v) in enumerate(quotes)
    ]


def make(feed: object, **extra: Any) -> PaperExchange:
    config: dict[str, Any] = {"feed": feed, "balance": "10000", "slippage_bps": "0"}
    config.update(extra)
    return bot4_paper.create(config)


def kinds(events: Sequence[object]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, Fill):
            out.append(f"fill:{e.client_order_id}")
        elif isinstance(e, OrderState):
            out.append(f"{e.status.value}:{e.order.client_order_id}")
        else:
            assert isinstance(e, MarketData)
            out.append(f"tick:{e.bid}")
    return out


@pytest.mark.trio
async def test_stream_yields_fills_before_the_tick_and_market_orders_fill_at_once() -> None:
    ex = make(ticks(("100", "101", "1"), ("99", "100", "1"), ("98", "99", "1")))
    await ex.connect()
    seen: list[object] = []
    async for event in ex.stream(["BTC-USDT"]):
        seen.append(event)
        if isinstance(event, MarketData) and event.bid == 100:
            state = await ex.place_order(
                Order(client_order_id="m", symbol="BTC-USDT", side="buy", type="market", qty=D(1))
            )
            assert state.status is OrderStatus.FILLED
            assert state.avg_price == D("101")
            await ex.place_order(
                Order(
                    client_order_id="l",
                    symbol="BTC-USDT",
                    side="buy",
                    type="limit",
                    qty=D("0.5"),
                    price=D("99.5"),
                )
            )
    await ex.close()
    assert kinds(seen) == [
        "tick:100",
        # What place_order did, delivered before the next tick's events.
        "new:m",
        "fill:m",
        "filled:m",
        "new:l",
        "tick:99",  # ask 100: the 99.5 limit is not crossed yet
        # Crossed by the third tick: fill, order update, then the tick itself.
        "fill:l",
        "filled:l",
        "tick:98",
    ]
    fills = await ex.fetch_fills()
    assert [f.client_order_id for f in fills] == ["m", "l"]
    assert [f.client_order_id for f in await ex.fetch_fills(since=T0 + timedelta(seconds=1))] == [
        "l"
    ]
    (pos,) = await ex.fetch_positions()
    assert pos.qty == D("1.5")
    bal = await ex.fetch_balance()
    assert bal.currency == "USDT"
    assert bal.total == bal.free + bal.used


@pytest.mark.trio
async def test_stream_filters_ticks_but_matches_every_symbol() -> None:
    feed = sorted(
        ticks(("100", "101", "1"), ("100", "101", "1"))
        + ticks(("10", "11", "5"), ("8", "9", "5"), symbol="ETH-USDT"),
        key=lambda t: t.timestamp,
    )
    ex = make(feed)
    await ex.place_order(
        Order(
            client_order_id="e",
            symbol="ETH-USDT",
            side="buy",
            type="limit",
            qty=D(1),
            price=D("9.5"),
        )
    )
    seen = [e async for e in ex.stream(["BTC-USDT"])]
    assert all(e.symbol == "BTC-USDT" for e in seen if isinstance(e, MarketData))
    assert "fill:e" in kinds(seen)


@pytest.mark.trio
async def test_order_queries_and_cancel() -> None:
    ex = make(ticks(("100", "101", "1")))
    async for _ in ex.stream([]):
        pass
    markets = await ex.fetch_markets()
    assert markets["BTC-USDT"].qty_increment == D("0.0001")
    o = Order(
        client_order_id="x",
        symbol="BTC-USDT",
        side="sell",
        type="limit",
        qty=D(1),
        price=D(120),
    )
    first = await ex.place_order(o)
    assert await ex.place_order(o) == first  # idempotent
    assert [s.order.client_order_id for s in await ex.fetch_open_orders()] == ["x"]
    assert await ex.fetch_open_orders("ETH-USDT") == []
    assert (await ex.fetch_order("BTC-USDT", "x")).status is OrderStatus.NEW
    with pytest.raises(OrderNotFound):
        await ex.fetch_order("BTC-USDT", "y")
    assert (await ex.cancel_order("BTC-USDT", "x")).status is OrderStatus.CANCELED
    with pytest.raises(InvalidOrder):
        await ex.cancel_order("BTC-USDT", "x")
    with pytest.raises(OrderNotFound):
        await ex.cancel_order("BTC-USDT", "y")


def test_it_is_a_complete_exchange() -> None:
    ex = make([])
    assert isinstance(ex, Exchange)
    assert ex.name == "paper"
    assert Capability.PARTIAL_FILLS in ex.capabilities
    assert not getattr(PaperExchange, "__abstractmethods__", frozenset())


def test_config_strings_are_parsed() -> None:
    ex = make(
        [],
        balance="2500.5",
        taker_fee="0.001",
        maker_fee=0.0005,
        slippage_bps="2.5",
        currency="USDC",
        max_leverage="20",
        markets={"SOL-USDC": {"price_increment": "0.001", "qty_increment": "0.01"}},
    )
    eng = ex.engine
    assert eng.tracker.cash == D("2500.5")
    assert (eng.taker_fee, eng.maker_fee) == (D("0.001"), D("0.0005"))
    assert eng.slippage == D("0.00025")
    assert eng.max_leverage == 20
    assert eng.currency == "USDC"
    market = eng.markets["SOL-USDC"]
    assert (market.min_qty, market.quote_currency) == (D("0.01"), "USDC")
    assert set(eng.markets) == {"SOL-USDC"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"taker_fee": "abc"}, "'taker_fee': 'abc' is not a number"),
        ({"maker_fee": "1.5"}, "'maker_fee': '1.5' must be a fraction below 1"),
        ({"balance": "0"}, "'balance': '0' must be greater than zero"),
        ({"slippage_bps": "-1"}, "'slippage_bps': '-1' must be zero or more"),
        ({"slippage_bps": "NaN"}, "'slippage_bps': 'NaN' is not a finite number"),
        ({"balance": True}, "'balance': True is not a number"),
        ({"currency": ""}, "'currency'"),
        (
            {"markets": {"BTC-USDT": {"price_increment": "x", "qty_increment": "1"}}},
            "'markets.BTC-USDT.price_increment': 'x' is not a number",
        ),
        ({"markets": {"BTC-USDT": {"qty_increment": "1"}}}, "'markets.BTC-USDT' needs"),
        ({"markets": 5}, "'markets'"),
        ({"feed": 42}, "'feed'"),
        ({"feed": "/no/such/file.csv"}, "no such file"),
        ({"fee": "0.1"}, "unknown config field(s) 'fee'"),
    ],
)
def test_bad_config_names_the_field(extra: dict[str, Any], message: str) -> None:
    config = {"feed": [], **extra}
    with pytest.raises(ConfigError) as err:
        make(**config)
    assert message in str(err.value)


def test_feed_is_required() -> None:
    with pytest.raises(ConfigError, match="'feed' is required"):
        PaperExchange.from_config({"balance": "1"})


@pytest.mark.trio
async def test_feed_from_a_file_path(tmp_path: Path) -> None:
    path = tmp_path / "ticks.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("timestamp,symbol,bid,ask,last,volume\n")
        fh.write("2024-03-01T00:00:00Z,BTC-USDT,100,101,100,1\n")
        fh.write("2024-03-01T00:00:01Z,BTC-USDT,101,102,101,1\n")
    ex = PaperExchange.from_config({"feed": str(path)})
    seen = [e async for e in ex.stream([])]
    assert [e.bid for e in seen if isinstance(e, MarketData)] == [D(100), D(101)]


@pytest.mark.trio
async def test_feed_of_the_wrong_type_is_reported() -> None:
    ex = make([])
    ex._feed = ["not a tick"]  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="not MarketData"):
        async for _ in ex.stream([]):
            pass


def test_plugin_registers_paper() -> None:
    assert bot4_paper.BOT4_API == 1
    got: list[tuple[str, Callable[..., Any], str]] = []

    def register(name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        got.append((name, factory, description))

    bot4_paper.register_exchanges(register)
    ((name, factory, description),) = got
    assert name == "paper"
    assert description
    assert isinstance(factory({"feed": []}), PaperExchange)


@pytest.mark.trio
async def test_stopping_early_needs_no_cleanup_and_close_ends_the_stream() -> None:
    ex = make(ticks(*[("100", "101", "1")] * 10))
    seen = 0
    async for _ in ex.stream([]):
        seen += 1
        if seen == 3:
            break
    gc.collect()  # an unfinished async generator would warn here (warnings are errors)
    rest = ex.stream([])  # continues the same feed
    assert isinstance(await rest.__anext__(), MarketData)
    await ex.close()
    assert [e async for e in rest] == []


def _open_files(path: Path) -> list[str]:
    """The file descriptors of this process open on ``path`` (Linux /proc)."""
    fds = Path("/proc/self/fd")
    found = []
    for fd in fds.iterdir():
        try:
            if Path(os.readlink(fd)) == path:
                found.append(fd.name)
        except OSError:
            continue  # closed while listing (the listing's own descriptor)
    return found


@pytest.mark.trio
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to list fds")
async def test_close_closes_a_data_file_read_only_in_part(tmp_path: Path) -> None:
    """A session stopped mid-file (a signal, a breaker) closes the venue: the
    data file must be closed then, not left to the garbage collector, which
    may finalize the file before the reader holding it (a ResourceWarning
    seen on Python 3.13)."""
    path = tmp_path / "ticks.csv"
    lines = ["timestamp,symbol,bid,ask,last,volume"]
    lines += [f"2024-03-01T00:00:{s:02d}Z,BTC-USDT,100,101,100,1" for s in range(50)]
    path.write_text("\n".join(lines) + "\n")
    ex = PaperExchange.from_config({"feed": str(path)})
    assert _open_files(path) == []  # a config check holds no handle
    stream = ex.stream([])
    assert isinstance(await stream.__anext__(), MarketData)
    assert len(_open_files(path)) == 1
    await ex.close()
    assert _open_files(path) == []
    assert [e async for e in stream] == []


async def _trade_through(ex: PaperExchange, use_poll: bool) -> list[str]:
    """Read the stream as the kernel does (poll first, await when it says
    None) or by await alone, placing a market order on every 7th tick and a
    resting limit on every 11th: what the two readers see must be the same."""
    await ex.connect()
    stream: Any = ex.stream(["BTC-USDT"])
    poll = stream.poll if use_poll else None
    seen: list[object] = []
    polled = 0
    n = 0
    while True:
        event = poll() if poll is not None else None
        if event is None:
            try:
                event = await stream.__anext__()
            except StopAsyncIteration:
                break
        else:
            polled += 1
        seen.append(event)
        if isinstance(event, MarketData):
            n += 1
            if n % 7 == 0:
                await ex.place_order(
                    Order(
                        client_order_id=f"m{n}",
                        symbol="BTC-USDT",
                        side="buy",
                        type="market",
                        qty=D("0.1"),
                    )
                )
            if n % 11 == 0:
                await ex.place_order(
                    Order(
                        client_order_id=f"l{n}",
                        symbol="BTC-USDT",
                        side="sell",
                        type="limit",
                        qty=D("0.1"),
                        price=event.ask + 1,
                    )
                )
    await ex.close()
    if use_poll:
        assert polled > len(seen) // 2  # poll really took most events
    return kinds(seen)


@pytest.mark.trio
async def test_poll_gives_the_events_of_the_await_in_the_same_order() -> None:
    quotes = [(str(100 + i % 5), str(101 + i % 5), "1") for i in range(200)]
    awaited = await _trade_through(make(ticks(*quotes)), use_poll=False)
    polled = await _trade_through(make(ticks(*quotes)), use_poll=True)
    assert polled == awaited
    assert any(k.startswith("fill:l") for k in awaited)  # resting orders filled too
