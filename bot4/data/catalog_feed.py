"""Stored data as the kernel's feed: ``bot4 run --data catalog:binance/BTC-USDT/1m``.

**The spec.** ``catalog:EXCHANGE/SYMBOLS/TIMEFRAME[?from=...&to=...]``:
SYMBOLS is one bot4 symbol or several joined by commas (their ticks are
merged by time), TIMEFRAME a stored candle length or ``trades``; ``from``
(inclusive) and ``to`` (exclusive) are dates or ISO times, UTC unless they
carry an offset. ``bot4 run --from/--to`` write them into the spec, so a
recording's config names exactly the data it ran on. The catalog is
``--catalog``, else ``$BOT4_CATALOG``, else ``./bot4-data``.

**Candles become ticks** by the rule :mod:`bot4.data.loader` uses for candle
files, so a backtest over the catalog and over the same candles in a CSV see
the same ticks: four ticks per candle at ``open_time + k * length / 4``
(k = 0..3), priced open, low, high, close when the candle rose or stayed
(close >= open) and open, high, low, close when it fell. Which extreme came
first is unknowable from a candle; this path touches both and ends where the
candle ended, so a paper stop or take-profit anywhere in the candle's range
triggers inside that candle. Each tick has ``bid = ask = last`` = the price
(``spread_bps`` widens it symmetrically) and a quarter of the candle's volume
as its size. A trade becomes one tick at its price with its amount as size.

**Numbers.** Prices are stored as float64; each becomes ``Decimal(repr(x))``,
the shortest decimal that reads back as that float, which is the venue's own
decimal for every price of at most 15 significant digits (all of them; the
import refuses longer ones). A quarter of a volume is exact in Decimal. A whole number
comes as ``Decimal("50000")``, as the CSV loader reads it, not ``50000.0``.

:func:`candle_tick_arrays` is the same rule on whole record batches
(numpy, no Python object per tick), for a columnar feed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import attrs
import numpy as np
import pyarrow as pa

from bot4.data.catalog import Catalog, SeriesKey, market_type_of, parse_time
from bot4.errors import ConfigError
from bot4.model import MarketData, trusted_market_data

__all__ = [
    "PREFIX",
    "CatalogSpec",
    "candle_tick_arrays",
    "is_catalog_spec",
    "iter_catalog_ticks",
    "parse_spec",
]

PREFIX = "catalog:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def is_catalog_spec(data: str | None) -> bool:
    return data is not None and data.startswith(PREFIX)


@attrs.frozen
class CatalogSpec:
    keys: tuple[SeriesKey, ...]
    start: int | None  # ms, inclusive
    end: int | None  # ms, exclusive

    def text(self) -> str:
        first = self.keys[0]
        symbols = ",".join(k.symbol for k in self.keys)
        out = f"{PREFIX}{first.exchange}/{symbols}/{first.timeframe}"
        query = []
        if self.start is not None:
            query.append(f"from={_iso(self.start)}")
        if self.end is not None:
            query.append(f"to={_iso(self.end)}")
        return out + ("?" + "&".join(query) if query else "")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_spec(
    text: str, *, start: str | None = None, end: str | None = None, where: str = "--data"
) -> CatalogSpec:
    """``catalog:binance/BTC-USDT/1m?from=2024-03-01`` -> a CatalogSpec;
    ``start``/``end`` (``--from``/``--to``) override the spec's."""
    if not text.startswith(PREFIX):
        raise ConfigError(f"{where}: {text!r} does not start with {PREFIX}")
    body, _, query = text[len(PREFIX) :].partition("?")
    parts = body.split("/")
    if len(parts) != 3 or not all(parts):
        raise ConfigError(
            f"{where}: {text!r}: expected catalog:EXCHANGE/SYMBOL[,SYMBOL...]/TIMEFRAME, "
            "e.g. catalog:binance/BTC-USDT/1m"
        )
    exchange, symbols, timeframe = parts
    keys = tuple(
        SeriesKey(exchange, market_type_of(s), s, timeframe)
        for s in (x.strip() for x in symbols.split(","))
    )
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - {"from", "to"})
    if unknown:
        raise ConfigError(f"{where}: {text!r}: unknown option {unknown[0]!r} (from, to)")
    lo_text = start if start is not None else options.get("from")
    hi_text = end if end is not None else options.get("to")
    lo = parse_time(lo_text, "--from") if lo_text else None
    hi = parse_time(hi_text, "--to") if hi_text else None
    if lo is not None and hi is not None and hi <= lo:
        raise ConfigError(f"--to {hi_text} is not after --from {lo_text}")
    return CatalogSpec(keys, lo, hi)


def candle_tick_arrays(
    batch: pa.RecordBatch, step_ms: int
) -> tuple[
    np.ndarray[Any, np.dtype[np.int64]],
    np.ndarray[Any, np.dtype[np.float64]],
    np.ndarray[Any, np.dtype[np.float64]],
]:
    """A batch of candles as ticks (module docstring): times in ns since the
    epoch, prices, sizes; four per candle, in time order."""
    opened = batch.column("time").cast(pa.int64()).to_numpy().astype(np.int64)
    o = batch.column("open").to_numpy()
    h = batch.column("high").to_numpy()
    lo = batch.column("low").to_numpy()
    c = batch.column("close").to_numpy()
    v = batch.column("volume").to_numpy()
    rising = c >= o
    prices = np.empty((len(o), 4), dtype=np.float64)
    prices[:, 0] = o
    prices[:, 1] = np.where(rising, lo, h)
    prices[:, 2] = np.where(rising, h, lo)
    prices[:, 3] = c
    quarter_ns = step_ms * 250_000  # step / 4, in ns
    times = opened[:, None] * 1_000_000 + np.arange(4, dtype=np.int64) * quarter_ns
    sizes = np.repeat(v / 4, 4)
    return times.reshape(-1), prices.reshape(-1), sizes


def iter_catalog_ticks(
    catalog: Catalog,
    spec: CatalogSpec,
    *,
    exchange: str = "data",
    spread_bps: Decimal | int = 0,
) -> Iterator[MarketData]:
    """The spec's series as MarketData, merged by time (ties: spec order)."""
    for key in spec.keys:
        if not catalog.day_files(key, spec.start, spec.end):
            stored = ", ".join(str(s.key) for s in catalog.series()) or "nothing"
            raise ConfigError(
                f"--data: the catalog {catalog.root} holds no {key} in the range "
                f"(it holds: {stored}; bot4 data list)"
            )
    half = Decimal(spread_bps) / Decimal(20000)
    streams = [_series_ticks(catalog, key, spec, exchange, half) for key in spec.keys]
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda t: t.timestamp)


_ONE = Decimal(1)


def _price(value: float) -> Decimal:
    # repr gives "50000.0" for a whole number; a CSV says "50000". Same value,
    # but the exponent shows in sums and texts downstream: keep the CSV's.
    number = Decimal(repr(value))
    if number == number.to_integral_value():
        return number.quantize(_ONE)
    return number


def _series_ticks(
    catalog: Catalog, key: SeriesKey, spec: CatalogSpec, exchange: str, half: Decimal
) -> Iterator[MarketData]:
    symbol = key.symbol
    # The trusted construction (see _sound) needs a spread that keeps every
    # bid above zero; beyond 10,000 bps each tick is validated.
    spread_ok = half <= _HALF_MAX
    if key.trades:
        for batch in catalog.batches(key, spec.start, spec.end):
            times = batch.column("time").cast(pa.int64()).to_pylist()
            make = _tick
            if spread_ok and _sound(batch, ("price",), "amount"):
                make = _trusted_tick
            first = True
            for ms, price, amount in zip(
                times,
                batch.column("price").to_pylist(),
                batch.column("amount").to_pylist(),
                strict=True,
            ):
                # The first tick of a batch is always validated: it checks the
                # symbol, the exchange name and the time for the batch.
                build = _tick if first else make
                first = False
                yield build(symbol, exchange, _price(price), half, _price(amount), ms * 1000, price)
        return
    step_ms = key.step_ms
    assert step_ms is not None
    quarter_us = step_ms * 250
    for batch in catalog.batches(key, spec.start, spec.end):
        times = batch.column("time").cast(pa.int64()).to_pylist()
        columns = [batch.column(n).to_pylist() for n in ("open", "high", "low", "close", "volume")]
        make = _tick
        if spread_ok and _sound(batch, ("open", "high", "low", "close"), "volume"):
            make = _trusted_tick
        build = _tick  # the first tick of a batch is validated (see above)
        # Prices repeat within a candle series (open = close before, round
        # numbers): each distinct float becomes its Decimal once per batch.
        decimals: dict[float, Decimal] = {}
        for ms, o, h, lo, c, v in zip(times, *columns, strict=True):
            path = (o, lo, h, c) if c >= o else (o, h, lo, c)
            size = _price(v) / 4
            base_us = ms * 1000
            for k, price in enumerate(path):
                number = decimals.get(price)
                if number is None:
                    number = decimals[price] = _price(price)
                yield build(symbol, exchange, number, half, size, base_us + k * quarter_us, price)
                build = make


# At most 10,000 bps of spread (half of it each side): a bid is then at least
# half the price, so above zero whatever the rounding.
_HALF_MAX = Decimal("0.5")


def _sound(batch: pa.RecordBatch, prices: Sequence[str], size: str) -> bool:
    """Every price of the batch finite and above zero, every size finite and
    not negative, no cell missing: what MarketData's validators would check
    of each tick made from it (the spread is checked by the caller). Any
    other batch is built tick by tick through the validators, which name
    what is wrong as before."""
    for name in (*prices, size):
        column = batch.column(name)
        if column.null_count:
            return False
        values = column.to_numpy()
        if values.dtype.kind != "f" or not np.isfinite(values).all():
            return False
        if not ((values > 0) if name != size else (values >= 0)).all():
            return False
    return True


def _tick(
    symbol: str,
    exchange: str,
    price: Decimal,
    half: Decimal,
    size: Decimal,
    micros: int,
    price_float: float | None = None,
) -> MarketData:
    # The signature is _trusted_tick's (either builds a batch's ticks);
    # price_float is for that one: a validated tick computes its own.
    return MarketData(
        symbol=symbol,
        exchange=exchange,
        bid=price - price * half if half else price,
        ask=price + price * half if half else price,
        last=price,
        volume=size,
        timestamp=_EPOCH + timedelta(microseconds=micros),
    )


def _trusted_tick(
    symbol: str,
    exchange: str,
    price: Decimal,
    half: Decimal,
    size: Decimal,
    micros: int,
    price_float: float | None = None,
) -> MarketData:
    """:func:`_tick` without its validators, for a batch :func:`_sound` has
    checked and whose first tick went through them (the symbol, the
    exchange, the time): equal to what ``_tick`` builds. ``price_float`` is
    the stored double the Decimal was read from, which is ``float(price)``
    exactly (``Decimal(repr(x))`` reads back as ``x``)."""
    return trusted_market_data(
        symbol,
        exchange,
        price - price * half if half else price,
        price + price * half if half else price,
        price,
        size,
        _EPOCH + timedelta(microseconds=micros),
        micros * 1000,
        last_float=price_float,
    )


def count_ticks(catalog: Catalog, spec: CatalogSpec) -> int | None:
    """Ticks the spec will yield, from the manifest (for a progress bar's ETA);
    None when the manifest does not know."""
    total = 0
    for key in spec.keys:
        info = catalog.info(key)
        if info is None:
            return None
        total += info.rows * (1 if key.trades else 4)
    return total


def catalog_feed(
    data: str, catalog_root: str | None = None, *, exchange: str = "data"
) -> Iterator[MarketData]:
    """The feed of a ``catalog:`` data spec (``bot4 run --data catalog:...``)."""
    spec = parse_spec(data)
    return iter_catalog_ticks(Catalog(catalog_root), spec, exchange=exchange)


def spec_symbols(spec: CatalogSpec) -> Sequence[str]:
    return [k.symbol for k in spec.keys]
