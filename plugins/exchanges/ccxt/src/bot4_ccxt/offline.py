"""Offline requests: the plugin runs unchanged against ccxt's client for a
venue whose last step, ``fetch`` (after the venue's ``sign()``), is replaced
by a :class:`Recorder` that keeps each signed request and answers it as the
venue would (its JSON and error codes, which ccxt's own ``handle_errors``
maps). Markets are given to ccxt directly, so nothing is fetched. The
plugin's ``tests/test_venue_requests*.py`` build every ccxt call bot4 makes
this way, for each supported venue, without network."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import attrs
import trio

from bot4.model import Order, OrderType, Side
from bot4_ccxt.exchange import CcxtExchange

__all__ = [
    "COID",
    "KEY",
    "SECRET",
    "Answer",
    "Recorder",
    "Request",
    "make",
    "market",
    "order",
    "perp_market",
    "run",
    "signed_hmac",
    "spot_market",
]


class Env(Protocol):
    """What sets the test keys' environment variables (pytest's monkeypatch)."""

    def setenv(self, name: str, value: str) -> None: ...


KEY = "test-key-0123456789"
SECRET = "dGVzdC1zZWNyZXQtMDEyMzQ1Njc4OQ=="  # base64: Kraken decodes its secret
COID = "s1-t-4"


@attrs.define
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


Answer = tuple[int, Any]


def market(client: Any, **fields: Any) -> dict[str, Any]:
    base = {
        "active": True,
        "contract": False,
        "linear": None,
        "inverse": None,
        "contractSize": None,
        "settle": None,
        "settleId": None,
        "taker": 0.001,
        "maker": 0.001,
        "precision": {"amount": 0.001, "price": 0.01},
        "limits": {"amount": {"min": 0.001}, "price": {}, "cost": {}, "leverage": {}},
        "info": {},
    }
    base.update(fields)
    out: dict[str, Any] = client.safe_market_structure(base)
    return out


def spot_market(
    client: Any, venue_id: str, base: str = "BTC", quote: str = "USDT"
) -> dict[str, Any]:
    return market(
        client,
        id=venue_id,
        symbol=f"{base}/{quote}",
        base=base,
        quote=quote,
        baseId=base,
        quoteId=quote,
        type="spot",
        spot=True,
        swap=False,
        future=False,
        option=False,
        margin=False,
        info={"orderTypes": ["LIMIT", "MARKET", "STOP_LOSS", "TAKE_PROFIT"]},
    )


def perp_market(
    client: Any, venue_id: str, size: float = 1.0, step: float = 0.001
) -> dict[str, Any]:
    return market(
        client,
        id=venue_id,
        symbol="BTC/USDT:USDT",
        base="BTC",
        quote="USDT",
        settle="USDT",
        baseId="BTC",
        quoteId="USDT",
        settleId="USDT",
        type="swap",
        spot=False,
        swap=True,
        future=False,
        option=False,
        margin=False,
        contract=True,
        linear=True,
        inverse=False,
        contractSize=size,
        info={"orderTypes": ["LIMIT", "MARKET", "STOP_MARKET", "TAKE_PROFIT_MARKET"]},
        precision={"amount": step, "price": 0.1},
        limits={"amount": {"min": step}, "price": {}, "cost": {}, "leverage": {}},
    )


class Recorder:
    """Stands in for ccxt's ``fetch``: keeps the signed request, answers it."""

    def __init__(self, client: Any, answer: Callable[[Request], Answer]) -> None:
        self.client = client
        self.answer = answer
        self.requests: list[Request] = []

    def __call__(self, url: str, method: str = "GET", headers: Any = None, body: Any = None) -> Any:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if body:
            text = body.decode() if isinstance(body, bytes) else str(body)
            if text.startswith(("{", "[")):
                data = json.loads(text)
                data = data[0] if isinstance(data, list) else data  # OKX: batch-orders
                params.update({k: str(v) for k, v in data.items()})
            else:
                params.update(parse_qsl(text, keep_blank_values=True))
        req = Request(method, parts.path, params, dict(headers or {}))
        self.requests.append(req)
        status, payload = self.answer(req)
        text = json.dumps(payload)
        self.client.handle_errors(status, "", url, method, {}, text, payload, headers, body)
        self.client.handle_http_status_code(status, "", url, method, text)
        return payload

    def of(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.endswith(path)]


def make(
    exchange: str,
    kind: str,
    markets: Callable[[Any], list[dict[str, Any]]],
    answer: Callable[[Request], Answer],
    monkeypatch: Env,
    **config: Any,
) -> tuple[CcxtExchange, Recorder]:
    monkeypatch.setenv("T_KEY", KEY)
    monkeypatch.setenv("T_SECRET", SECRET)
    monkeypatch.setenv("T_PASS", "test-passphrase")
    ex = CcxtExchange.from_config(
        {
            "exchange": exchange,
            "type": kind,
            "api_key_env": "T_KEY",
            "secret_env": "T_SECRET",
            "password_env": "T_PASS",
            "rate_limit": 0,
            "max_retries": 0,
            "options": {"adjustForTimeDifference": False},
            **config,
        }
    )
    client = ex._new_client()
    client.set_markets(markets(client))
    recorder = Recorder(client, answer)
    client.fetch = recorder
    ex._client = client
    return ex, recorder


def order(symbol: str, **kw: Any) -> Order:
    fields: dict[str, Any] = {
        "client_order_id": COID,
        "symbol": symbol,
        "side": Side.BUY,
        "type": OrderType.LIMIT,
        "qty": Decimal("0.05"),
        "price": Decimal("50000"),
        **kw,
    }
    return Order(**fields)


def run(fn: Callable[[], Any]) -> Any:
    return trio.run(fn)


def signed_hmac(req: Request) -> bool:
    return any(k.lower() in ("signature", "sign") for k in req.params) or any(
        "sign" in k.lower() for k in req.headers
    )
