"""Shared helpers for the journal tests: the PostgreSQL test server (a fresh
schema per test, dropped after) and model objects."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg

from bot4.model import Fill, Order, OrderState, OrderStatus, OrderType, Side
from tests.conftest import service_missing

PG_URL = os.environ.get("BOT4_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def pg_available() -> str:
    """The test server's URL; skips (locally) or fails (CI) when it is absent."""
    try:
        conn = psycopg.connect(PG_URL, connect_timeout=3)
    except psycopg.Error as exc:
        service_missing("PostgreSQL", f"{PG_URL}: {str(exc).strip().splitlines()[0]}")
        raise  # unreachable: service_missing skips or fails
    conn.close()
    return PG_URL


def fresh_schema() -> Iterator[str]:
    """A schema name nobody else uses; dropped (with everything in it) after."""
    url = pg_available()
    name = f"bot4_test_{secrets.token_hex(6)}"
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def order(n: int, side: Side = Side.BUY, qty: str = "0.01") -> Order:
    return Order(f"s1-e-{n}", "BTC-USDT", side, OrderType.MARKET, Decimal(qty))


def state(o: Order, status: OrderStatus, filled: str = "0", eid: str = "P1") -> OrderState:
    filled_qty = Decimal(filled)
    avg = Decimal(50000) if filled_qty else None
    return OrderState(o, status, filled_qty, avg, eid)


def fill(n: int, o: Order, qty: str | None = None, price: str = "50000") -> Fill:
    return Fill(
        f"paper-{n}",
        o.client_order_id,
        o.symbol,
        o.side,
        Decimal(qty) if qty is not None else o.qty,
        Decimal(price),
        Decimal("0.2"),
        T0 + timedelta(seconds=n),
    )
