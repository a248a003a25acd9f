"""bot4-plugin-paper: a simulated exchange for backtests, paper trading and tests.

:class:`~bot4_paper.engine.PaperEngine` is the synchronous matching engine
(usable without trio); :class:`~bot4_paper.exchange.PaperExchange` wraps it as
a :class:`bot4.contracts.Exchange`. Registered with bot4 as ``paper``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import bot4
from bot4.hookspecs import RegisterExchange
from bot4_paper.engine import DEFAULT_MARKETS, PaperEngine, round_price, round_qty
from bot4_paper.exchange import CONFIG_KEYS, PaperExchange

BOT4_API = 1

__all__ = [
    "BOT4_API",
    "CONFIG_KEYS",
    "DEFAULT_MARKETS",
    "PaperEngine",
    "PaperExchange",
    "create",
    "register_exchanges",
    "round_price",
    "round_qty",
]


def create(config: Mapping[str, Any]) -> PaperExchange:
    """Factory registered as ``paper``: see PaperExchange.from_config."""
    return PaperExchange.from_config(config)


@bot4.hookimpl
def register_exchanges(register: RegisterExchange) -> None:
    register(
        "paper",
        create,
        description="Simulated venue: fills against a market-data feed, with fees, "
        "slippage, partial fills and margin",
    )
