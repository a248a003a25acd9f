"""Fixtures for the ccxt plugin's tests: the fake Binance on 127.0.0.1 and the
test credentials in the environment. Nothing is mocked: ccxt's real binance
client talks HTTP to a server backed by bot4's paper engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bot4_ccxt.fakebinance import API_KEY, SECRET, FakeBinance
from bot4_ccxt.harness import KEY_ENV, SECRET_ENV, SPOT_HOLDINGS

from bot4.testing.decimal_guard import decimal_context_kept


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def venue() -> Iterator[FakeBinance]:
    with FakeBinance(holdings=SPOT_HOLDINGS) as v:  # an account holding BTC can sell
        yield v


@pytest.fixture(autouse=True)
def decimal_context_unchanged() -> Iterator[None]:
    """ccxt changes the current Decimal context in place; the plugin keeps its
    calls in a context of their own (bot4_ccxt.isolate), so no test may leave
    it changed."""
    with decimal_context_kept():
        yield
