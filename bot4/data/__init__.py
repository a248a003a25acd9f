"""Market data shipped with bot4 and loaders for your own.

* :func:`sample_path` - the bundled sample: two days of one-second ticks for
  BTC-USDT and ETH-USDT (correlated, with a crash and a rally), made by
  :mod:`bot4.data.generate`.
* :func:`iter_ticks` - stream ticks from CSV tick files, OHLCV candles or
  Binance kline dumps, merged by time (:mod:`bot4.data.loader`).
* :func:`iter_batches` - the same ticks as columnar batches
  (:class:`~bot4.data.columns.TickBatch`: int64 ns, int64 fixed point).
* :class:`DataError` - a bad file, naming file, line and column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bot4.data.loader import FORMATS, DataError, iter_batches, iter_ticks, symbol_from_filename
from bot4.model import MarketData

__all__ = [
    "FORMATS",
    "SAMPLE_SYMBOLS",
    "DataError",
    "iter_batches",
    "iter_sample",
    "iter_ticks",
    "sample_path",
    "symbol_from_filename",
]

SAMPLE_SYMBOLS = ("BTC-USDT", "ETH-USDT")


def sample_path() -> Path:
    """Path of the bundled sample ticks (gzip CSV, ``ticks`` format)."""
    return Path(__file__).parent / "sample" / "ticks.csv.gz"


def iter_sample(exchange: str = "paper") -> Iterator[MarketData]:
    """Stream the bundled sample ticks."""
    return iter_ticks(sample_path(), exchange=exchange)
