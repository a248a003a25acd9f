"""Fault injection against the real plugin code path (ccxt over HTTP to the
fake Binance): rate limits slow the plugin down, a lost answer to a place never
doubles the order, refusals are never retried, failed reads are retried and
then given up, the clock is resynchronised, secrets never leak."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from bot4_ccxt import CcxtExchange
from bot4_ccxt.fakebinance import API_KEY, SECRET, FakeBinance
from bot4_ccxt.harness import plugin_config

from bot4.errors import (
    ConfigError,
    ExchangeRefused,
    ExchangeUnavailable,
    InsufficientFunds,
    InvalidOrder,
    OrderNotFound,
    RateLimited,
)
from bot4.model import MarketData, Order, OrderStatus, OrderType, Side

pytestmark = pytest.mark.trio

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ORDER = "/api/v3/order"


def quote(venue: FakeBinance, bid: str = "100", seconds: int = 0) -> None:
    b = Decimal(bid)
    venue.push(
        MarketData(
            "BTC-USDT",
            "fake",
            b,
            b + Decimal("0.02"),
            b,
            Decimal(1000),
            T0.replace(second=seconds),
        )
    )


def market_buy(coid: str, qty: str = "1") -> Order:
    return Order(coid, "BTC-USDT", Side.BUY, OrderType.MARKET, Decimal(qty))


@pytest.fixture
async def ex(venue: FakeBinance) -> AsyncIterator[CcxtExchange]:
    quote(venue)
    exchange = CcxtExchange.from_config(plugin_config(venue, timeout=0.5))
    await exchange.connect()
    try:
        yield exchange
    finally:
        await exchange.close()


def posts(venue: FakeBinance) -> int:
    return len(venue.hits_of("POST", ORDER))


# --- rate limits -------------------------------------------------------------------------


async def test_429_slows_the_plugin_down(venue: FakeBinance, ex: CcxtExchange) -> None:
    venue.inject("GET", "/api/v3/account", "429", count=2, retry_after=1)
    start = trio.current_time()
    balance = await ex.fetch_balance()
    assert balance.total == Decimal(10000)
    hits = venue.hits_of("GET", "/api/v3/account")
    assert [h.status for h in hits] == [429, 429, 200]
    # Retry-After is honoured before each retry ...
    assert hits[1].at - hits[0].at >= 0.95
    assert hits[2].at - hits[1].at >= 0.95
    assert trio.current_time() - start >= 1.9
    # ... and the plugin keeps a wider spacing between requests afterwards.
    pacer = ex._pace()
    assert pacer.slowed == 2
    assert pacer.interval > pacer.base
    before = len(venue.hits)
    await ex.fetch_balance()
    await ex.fetch_balance()
    spaced = venue.hits[before:]
    assert spaced[1].at - spaced[0].at >= pacer.interval * 0.8


async def test_each_retry_is_told_to_the_metrics_observer(
    venue: FakeBinance, ex: CcxtExchange
) -> None:
    seen: list[tuple[str, str]] = []
    ex.retry_observer = lambda method, outcome: seen.append((method, outcome))
    venue.inject("GET", "/api/v3/account", "429", count=2, retry_after=0)
    await ex.fetch_balance()
    assert len(seen) == 2
    assert all(outcome == "rate_limited" for _, outcome in seen)
    assert all(method.startswith("fetch_balance") for method, _ in seen), seen


async def test_rate_limited_without_retries_left_is_rate_limited(venue: FakeBinance) -> None:
    quote(venue)
    exchange = CcxtExchange.from_config(plugin_config(venue, max_retries=0))
    try:
        await exchange.connect()
        venue.inject("GET", "/api/v3/account", "429", retry_after=0)
        with pytest.raises(RateLimited):
            await exchange.fetch_balance()
    finally:
        await exchange.close()


# --- lost answers to a place: no duplicate ------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "drop", "hang"])
async def test_lost_answer_after_the_order_was_placed_is_no_duplicate(
    venue: FakeBinance, ex: CcxtExchange, kind: str
) -> None:
    venue.inject("POST", ORDER, kind, process=True, delay=2.0)
    state = await ex.place_order(market_buy("lost-1"))
    assert state.status is OrderStatus.FILLED
    assert state.filled_qty == 1
    assert venue.order_count() == 1
    assert posts(venue) == 1  # reconciled by client order id, never re-sent
    lookups = venue.hits_of("GET", ORDER)
    assert lookups
    assert lookups[-1].status == 200
    fills = [f for f in await ex.fetch_fills() if f.client_order_id == "lost-1"]
    assert sum(f.qty for f in fills) == 1
    # The kernel's own retry with the same id returns the same order.
    again = await ex.place_order(market_buy("lost-1"))
    assert again.exchange_order_id == state.exchange_order_id
    assert venue.order_count() == 1
    assert posts(venue) == 1


@pytest.mark.parametrize("kind", ["500", "503", "drop"])
async def test_request_lost_before_the_venue_is_sent_again_once(
    venue: FakeBinance, ex: CcxtExchange, kind: str
) -> None:
    venue.inject("POST", ORDER, kind, process=False)
    state = await ex.place_order(market_buy("lost-2"))
    assert state.status is OrderStatus.FILLED
    assert venue.order_count() == 1
    assert posts(venue) == 2  # looked up (absent), then sent again


async def test_place_while_the_venue_stays_down_fails_and_is_never_doubled(
    venue: FakeBinance, ex: CcxtExchange
) -> None:
    venue.inject("POST", ORDER, "500", process=True)
    # The look-up before sending works; the one after the lost answer cannot tell.
    venue.inject("GET", ORDER, "503", count=100, skip=1)
    with pytest.raises(ExchangeUnavailable):
        await ex.place_order(market_buy("down-1"))
    assert posts(venue) == 1  # unknown outcome: never re-sent blindly
    venue.clear_faults()
    state = await ex.place_order(market_buy("down-1"))  # the kernel's retry
    assert state.status is OrderStatus.FILLED
    assert venue.order_count() == 1
    assert posts(venue) == 1


# --- refusals are not retried ---------------------------------------------------------------


async def test_rejection_is_refused_and_not_retried(venue: FakeBinance, ex: CcxtExchange) -> None:
    with pytest.raises(InsufficientFunds) as funds:
        await ex.place_order(market_buy("too-big", "1000"))
    assert "insufficient balance" in str(funds.value)
    assert posts(venue) == 1
    stop = Order("bad-stop", "BTC-USDT", Side.SELL, OrderType.STOP_LOSS, Decimal(1), Decimal(120))
    with pytest.raises(InvalidOrder):
        await ex.place_order(stop)
    assert posts(venue) == 2
    with pytest.raises(OrderNotFound):
        await ex.cancel_order("BTC-USDT", "never-placed")
    assert len(venue.hits_of("DELETE", ORDER)) == 1
    assert venue.order_count() == 0


async def test_failed_reads_are_retried_with_backoff_then_given_up(
    venue: FakeBinance, ex: CcxtExchange
) -> None:
    venue.inject("GET", "/api/v3/account", "500", count=2)
    assert (await ex.fetch_balance()).total == 10000
    assert [h.status for h in venue.hits_of("GET", "/api/v3/account")] == [500, 500, 200]
    venue.inject("GET", "/api/v3/openOrders", "503", count=100)
    with pytest.raises(ExchangeUnavailable):
        await ex.fetch_open_orders("BTC-USDT")
    assert len(venue.hits_of("GET", "/api/v3/openOrders")) == 4  # 1 + max_retries


async def test_cancel_whose_answer_was_lost_is_reconciled(
    venue: FakeBinance, ex: CcxtExchange
) -> None:
    resting = Order("rest-1", "BTC-USDT", Side.BUY, OrderType.LIMIT, Decimal(1), Decimal(90))
    await ex.place_order(resting)
    venue.inject("DELETE", ORDER, "500", process=True)
    state = await ex.cancel_order("BTC-USDT", "rest-1")
    assert state.status is OrderStatus.CANCELED


# --- clock skew -------------------------------------------------------------------------------


async def test_clock_skew_is_measured_and_resynchronised(venue: FakeBinance) -> None:
    quote(venue)
    venue.clock_offset = 120.0  # the venue's clock runs two minutes ahead of ours
    exchange = CcxtExchange.from_config(plugin_config(venue))
    try:
        await exchange.connect()  # measures the offset
        assert (await exchange.fetch_balance()).total == 10000
        assert all(h.status == 200 for h in venue.hits)
        venue.clock_offset = -90.0  # it jumps back: a signed request is refused (-1021)
        state = await exchange.place_order(market_buy("skew-1"))
        assert state.status is OrderStatus.FILLED
        # The first signed request after the jump was refused for its timestamp,
        # the offset measured again, the request sent again: one order.
        after = [(h.method, h.path, h.status) for h in venue.hits][3:]
        assert after == [
            ("GET", ORDER, 400),  # the look-up before sending: -1021, outside recvWindow
            ("GET", "/api/v3/time", 200),  # the offset measured again
            ("GET", ORDER, 400),  # the look-up again: -2013, no such order
            ("POST", ORDER, 200),
        ]
        assert venue.order_count() == 1
    finally:
        await exchange.close()


async def test_without_time_adjustment_the_skew_is_refused(venue: FakeBinance) -> None:
    quote(venue)
    venue.clock_offset = 120.0
    config = plugin_config(venue, options={"adjustForTimeDifference": False}, max_retries=0)
    exchange = CcxtExchange.from_config(config)
    try:
        await exchange.connect()
        with pytest.raises(ExchangeUnavailable, match="recvWindow"):
            await exchange.fetch_balance()
    finally:
        await exchange.close()


# --- secrets ---------------------------------------------------------------------------


async def test_secrets_never_in_repr_errors_or_logs(
    venue: FakeBinance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file, secret_file = tmp_path / "key", tmp_path / "secret"
    key_file.write_text(API_KEY + "\n")
    secret_file.write_text("wrong-" + SECRET + "\n")  # a secret the venue refuses
    quote(venue)
    config = plugin_config(venue)
    del config["api_key_env"], config["secret_env"]
    exchange = CcxtExchange.from_config(
        {**config, "api_key_file": str(key_file), "secret_file": str(secret_file)}
    )
    caplog.set_level(logging.DEBUG)
    texts = [repr(exchange), repr(exchange.settings), str(exchange.settings)]
    try:
        await exchange.connect()
        with pytest.raises(ExchangeRefused) as refused:
            await exchange.fetch_balance()
        assert "Signature" in str(refused.value)
        texts.append(str(refused.value))
        venue.inject("GET", "/api/v3/account", "500", count=100)
        with pytest.raises(ExchangeUnavailable) as failed:
            await exchange.fetch_balance()
        texts.append(str(failed.value))
    finally:
        await exchange.close()
    texts.extend(r.getMessage() for r in caplog.records)
    for text in texts:
        assert API_KEY not in text
        assert SECRET not in text


async def test_config_refuses_keys_in_the_file_and_unknown_exchanges() -> None:
    with pytest.raises(ConfigError, match="environment variable"):
        CcxtExchange.from_config({"exchange": "binance", "secret": "s3cr3t-value"})
    with pytest.raises(ConfigError, match="not an exchange id"):
        CcxtExchange.from_config({"exchange": "no-such-venue"})
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE") as missing:
        CcxtExchange.from_config({"exchange": "binance", "api_key_env": "NOT_SET_ANYWHERE"})
    assert "s3cr3t" not in str(missing.value)
    with pytest.raises(ConfigError, match="unknown config field"):
        CcxtExchange.from_config({"exchange": "binance", "colour": "red"})


# --- stream ----------------------------------------------------------------------------


async def test_stream_polls_quotes_fills_and_order_updates(
    venue: FakeBinance, ex: CcxtExchange
) -> None:
    resting = Order("s-1", "BTC-USDT", Side.BUY, OrderType.LIMIT, Decimal(2), Decimal(95))
    await ex.place_order(resting)
    stream = ex.stream(["BTC-USDT"])
    seen: list[Any] = []
    with trio.fail_after(10):
        while not any(isinstance(e, MarketData) for e in seen):
            seen.append(await anext(stream))
        quote(venue, "94", seconds=5)  # crosses the limit: it fills at 95
        while not (isinstance(seen[-1], MarketData) and seen[-1].bid == 94):
            seen.append(await anext(stream))
    kinds = [type(e).__name__ for e in seen]
    assert kinds.count("MarketData") == 2
    fill_at = kinds.index("Fill")
    done_at = next(
        i for i, e in enumerate(seen) if getattr(e, "status", None) is OrderStatus.FILLED
    )
    assert fill_at < done_at < len(seen) - 1


async def test_stream_ends_after_max_idle(venue: FakeBinance) -> None:
    quote(venue)
    exchange = CcxtExchange.from_config(plugin_config(venue, max_idle=0.3, poll_interval=0.05))
    try:
        await exchange.connect()
        events = []
        with trio.fail_after(10):
            async for event in exchange.stream(["BTC-USDT"]):
                events.append(event)
        assert [type(e).__name__ for e in events] == ["MarketData"]
    finally:
        await exchange.close()
