"""bot4-plugin-ccxt: every exchange ccxt supports, as a bot4 exchange.

:class:`~bot4_ccxt.exchange.CcxtExchange` wraps ccxt's client (worker threads,
error mapping, retries, client-order-id reconciliation, polling stream);
:mod:`bot4_ccxt.fakebinance` is a local Binance-style REST server backed by
bot4's paper engine, for tests and dry runs; :mod:`bot4_ccxt.feed` is the
``ccxt`` feed (a venue's public tickers for ``bot4 run --feed ccxt:binance``).
Registered with bot4 as ``ccxt``::

    exchange:
      name: ccxt
      exchange: binance
      api_key_env: BINANCE_API_KEY
      secret_env: BINANCE_SECRET
      symbols: [BTC-USDT]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import bot4
from bot4.feeds import Feed
from bot4.hookspecs import RegisterExchange, RegisterFeed

if TYPE_CHECKING:
    from bot4_ccxt.exchange import CONFIG_KEYS, CcxtExchange, CcxtSettings, map_error

BOT4_API = 1

# bot4 loads every installed plugin to list what it registers; importing ccxt
# takes about half a second, which a session on another venue (the default
# paper one) should not pay. So the client module is imported on first use:
# by the factory, or by reading one of these names (PEP 562).
_LAZY = frozenset({"CONFIG_KEYS", "CcxtExchange", "CcxtSettings", "map_error"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from bot4_ccxt import exchange

        return getattr(exchange, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BOT4_API",
    "CONFIG_KEYS",
    "CcxtExchange",
    "CcxtSettings",
    "create",
    "create_feed",
    "map_error",
    "register_exchanges",
    "register_feeds",
]


def create(config: Mapping[str, Any]) -> CcxtExchange:
    """Factory registered as ``ccxt``: see CcxtSettings.from_config."""
    from bot4_ccxt.exchange import CcxtExchange

    return CcxtExchange.from_config(config)


@bot4.hookimpl
def register_exchanges(register: RegisterExchange) -> None:
    register(
        "ccxt",
        create,
        description="Any exchange ccxt supports (config `exchange: binance`); "
        "dry-run against the bundled fake Binance server",
    )


def create_feed(config: Mapping[str, Any]) -> Feed:
    """Factory registered as the ``ccxt`` feed: see bot4_ccxt.feed."""
    from bot4_ccxt.feed import CcxtFeed  # only a session with --feed ccxt:... needs it

    return CcxtFeed.from_config(config)


@bot4.hookimpl
def register_feeds(register: RegisterFeed) -> None:
    register(
        "ccxt",
        create_feed,
        description="A venue's public tickers, polled (--feed ccxt:binance); no keys needed",
    )
