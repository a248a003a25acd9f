"""How the fake venues spell values on the wire.

Three pure functions shared by :mod:`bot4_ccxt.fakebinance` and every venue
built on it (:mod:`bot4_ccxt.fakefutures`, :mod:`bot4_ccxt.fakebybit`, the
algo service, Bybit's stop orders, the market history):

* :func:`_num`: a decimal as the venues print it, plain notation, no
  trailing zeros (``0.0100`` is ``0.01``, ``5E+1`` is ``50``);
* :func:`_ms`: a time as epoch milliseconds, the venues' timestamps;
* :func:`_venue_symbol`: a bot4 symbol as Binance and Bybit name it
  (``BTC-USDT`` and ``BTC-USDT-PERP`` are both ``BTCUSDT``).

They import nothing of the venues. :mod:`bot4_ccxt.fakebinance` re-exports
them for the modules that import them from there.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal


def _num(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _venue_symbol(symbol: str) -> str:
    """BTC-USDT and BTC-USDT-PERP are both BTCUSDT (on their own API)."""
    return symbol.removesuffix("-PERP").replace("-", "")
