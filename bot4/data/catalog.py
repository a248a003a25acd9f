"""The market-data catalog: candles and trades in Parquet files, one per day.

Layout (Hive-style directories, so ``pyarrow.dataset.dataset(root,
partitioning="hive")`` and other Parquet tools read it as one table)::

    <root>/_manifest.json
    <root>/exchange=binance/type=spot/symbol=BTC-USDT/timeframe=1m/date=2024-03-01/data.parquet
    <root>/exchange=binance/type=swap/symbol=ETH-USDT-PERP/timeframe=trades/date=.../data.parquet

A **series** is one (exchange, market type, symbol, timeframe); ``timeframe``
is a candle length (``1s``, ``1m``, ``5m``, ``1h``, ``1d``, ...) or
``trades``. Market type is ``spot`` or ``swap`` (a perpetual, named
``BASE-QUOTE-PERP``).

**Columns.** Candles: ``time`` (open time, ``timestamp[ms, UTC]``), ``open``,
``high``, ``low``, ``close``, ``volume`` (float64). Trades: ``time``, ``id``
(int64, the venue's trade id), ``price``, ``amount`` (float64), ``side``
(the taker's, ``buy``/``sell``). Files are zstd-compressed, in row groups of
at most :data:`ROW_GROUP_ROWS`, sorted by time (trades by time, then id).
Prices and sizes are float64: a decimal with at most 15 significant digits
(every price and size a venue quotes) survives the round trip exactly,
``Decimal(repr(x))`` gives it back; :func:`exact_float` refuses one that
would not, so nothing is rounded silently.

**Writes** merge: the rows of a day already stored and the new ones are
sorted together and duplicates dropped (same open time, or same trade id;
the newer row wins, a venue may correct a candle), then the day file is
replaced atomically (written beside it, then renamed), so a crash leaves the
old file or the new one, never half of one. One writer at a time holds an
exclusive lock on ``<root>/.lock``.

**The manifest** (``_manifest.json``) holds per series its first and last
time, rows, days and gaps (missing candles between the first and the last),
rebuilt for a series from its files' time columns after every write;
:meth:`Catalog.rescan` rebuilds it all from the files (after copying files in
by hand). Reading never needs it.

**Reads** stream: :meth:`Catalog.batches` opens the day files of the range in
order and yields Arrow record batches read row group by row group, so memory
stays flat in the number of rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bot4.errors import ConfigError

__all__ = [
    "CATALOG_ENV",
    "DEFAULT_ROOT",
    "OHLCV_SCHEMA",
    "ROW_GROUP_ROWS",
    "TRADES_SCHEMA",
    "Catalog",
    "Gap",
    "SeriesInfo",
    "SeriesKey",
    "default_root",
    "exact_float",
    "market_type_of",
    "timeframe_ms",
]

CATALOG_ENV = "BOT4_CATALOG"
DEFAULT_ROOT = "bot4-data"
ROW_GROUP_ROWS = 131_072
DAY_MS = 86_400_000
MANIFEST = "_manifest.json"  # "_" and "." files are not data to Arrow datasets
# The manifest keeps this many gap ranges per series (the counts stay exact).
MANIFEST_GAPS = 100

OHLCV_SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
    ]
)
TRADES_SCHEMA = pa.schema(
    [
        pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("id", pa.int64(), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("amount", pa.float64(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
    ]
)

_EXCHANGE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_SYMBOL = re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}(-PERP)?$")
_TIMEFRAME = re.compile(r"^([1-9][0-9]{0,3})([smhdwM])$")
_UNIT_MS = {
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": DAY_MS,
    "w": 7 * DAY_MS,
    "M": 30 * DAY_MS,
}
MARKET_TYPES = ("spot", "swap")


def timeframe_ms(timeframe: str) -> int:
    """Length of a candle in milliseconds (``1m`` -> 60000). ``M`` is taken as
    30 days for gap counting; a ConfigError for anything else."""
    match = _TIMEFRAME.match(timeframe)
    if match is None:
        raise ConfigError(
            f"timeframe {timeframe!r} is not a number and a unit (s, m, h, d, w, M), e.g. 1m"
        )
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def market_type_of(symbol: str) -> str:
    """``swap`` for a perpetual (``BTC-USDT-PERP``), otherwise ``spot``."""
    return "swap" if symbol.endswith("-PERP") else "spot"


def exact_float(text: str) -> float | None:
    """``float(text)`` when it gives ``text``'s decimal back exactly (at most
    15 significant digits), else None. Scientific notation is accepted."""
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    from decimal import Decimal, InvalidOperation

    try:
        if Decimal(repr(value)) != Decimal(text.strip()):
            return None
    except InvalidOperation:
        return None
    return value


def default_root() -> Path:
    """``$BOT4_CATALOG`` or ``./bot4-data``."""
    return Path(os.environ.get(CATALOG_ENV) or DEFAULT_ROOT)


@attrs.frozen(order=True)
class SeriesKey:
    """One series: (exchange, market type, symbol, timeframe or ``trades``)."""

    exchange: str
    market_type: str
    symbol: str
    timeframe: str

    def __attrs_post_init__(self) -> None:
        # The parts become directory names: nothing that could leave the root.
        if not _EXCHANGE.match(self.exchange):
            raise ConfigError(f"exchange {self.exchange!r}: expected lower-case letters, digits, _")
        if self.market_type not in MARKET_TYPES:
            raise ConfigError(f"market type {self.market_type!r} is not one of spot, swap")
        if not _SYMBOL.match(self.symbol):
            raise ConfigError(
                f"symbol {self.symbol!r}: expected BASE-QUOTE (spot) or BASE-QUOTE-PERP"
            )
        if market_type_of(self.symbol) != self.market_type:
            raise ConfigError(f"symbol {self.symbol!r} is not a {self.market_type} market")
        if self.timeframe != "trades":
            timeframe_ms(self.timeframe)

    @classmethod
    def of(cls, exchange: str, symbol: str, timeframe: str) -> SeriesKey:
        return cls(exchange, market_type_of(symbol), symbol, timeframe)

    @property
    def trades(self) -> bool:
        return self.timeframe == "trades"

    @property
    def schema(self) -> pa.Schema:
        return TRADES_SCHEMA if self.trades else OHLCV_SCHEMA

    @property
    def step_ms(self) -> int | None:
        """Candle length in ms; None for trades."""
        return None if self.trades else timeframe_ms(self.timeframe)

    def path(self, root: Path) -> Path:
        return (
            root
            / f"exchange={self.exchange}"
            / f"type={self.market_type}"
            / f"symbol={self.symbol}"
            / f"timeframe={self.timeframe}"
        )

    def __str__(self) -> str:
        return f"{self.exchange}/{self.symbol}/{self.timeframe}"


@attrs.frozen
class Gap:
    """Candles missing between two stored ones: ``start`` is the first missing
    open time, ``end`` the last (both ms since the epoch)."""

    start: int
    end: int
    missing: int


@attrs.frozen
class SeriesInfo:
    """What the manifest says of a series."""

    key: SeriesKey
    first: int | None  # ms; None when empty
    last: int | None
    rows: int
    days: int
    missing: int  # candles missing between first and last (0 for trades)
    gaps: tuple[Gap, ...]  # at most MANIFEST_GAPS of them
    gap_count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "exchange": self.key.exchange,
            "type": self.key.market_type,
            "symbol": self.key.symbol,
            "timeframe": self.key.timeframe,
            "first": _iso(self.first),
            "last": _iso(self.last),
            "rows": self.rows,
            "days": self.days,
            "gaps": self.gap_count,
            "missing": self.missing,
            "gap_ranges": [
                {"start": _iso(g.start), "end": _iso(g.end), "missing": g.missing}
                for g in self.gaps
            ],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SeriesInfo:
        key = SeriesKey(raw["exchange"], raw["type"], raw["symbol"], raw["timeframe"])
        return cls(
            key,
            _ms_of(raw.get("first")),
            _ms_of(raw.get("last")),
            int(raw["rows"]),
            int(raw["days"]),
            int(raw["missing"]),
            tuple(
                Gap(_ms(g["start"]), _ms(g["end"]), int(g["missing"]))
                for g in raw.get("gap_ranges", ())
            ),
            int(raw["gaps"]),
        )


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def _ms_of(text: str | None) -> int | None:
    return None if text is None else _ms(text)


def day_of(ms: int) -> date:
    return datetime.fromtimestamp((ms // DAY_MS) * DAY_MS / 1000, UTC).date()


def gaps_of(times: np.ndarray[Any, np.dtype[np.int64]], step: int) -> list[Gap]:
    """Runs of missing candles in sorted open times ``times`` (ms)."""
    if len(times) < 2:
        return []
    deltas = np.diff(times)
    where = np.nonzero(deltas > step)[0]
    return [
        Gap(int(times[i]) + step, int(times[i + 1]) - step, int(deltas[i] // step) - 1)
        for i in where
    ]


class Catalog:
    """A catalog rooted at ``root`` (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def __repr__(self) -> str:
        return f"Catalog({str(self.root)!r})"

    def close(self) -> None:
        """Nothing to release (the database store has a connection)."""

    # --- writing ----------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the catalog's write lock (one writer at a time)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write(self, key: SeriesKey, table: pa.Table, *, update_manifest: bool = True) -> int:
        """Merge ``table`` (columns of ``key.schema``, any order of rows) into
        the series; returns how many rows were new. Takes the write lock."""
        table = _conform(table, key.schema)
        if table.num_rows == 0:
            return 0
        times = _times(table)
        days = times // DAY_MS
        order = np.argsort(days, kind="stable")
        sorted_days = days[order]
        bounds = np.nonzero(np.diff(sorted_days))[0] + 1
        added = 0
        with self.locked():
            for chunk in np.split(order, bounds):
                part = table.take(pa.array(chunk))
                added += self._merge_day(key, day_of(int(days[chunk[0]]) * DAY_MS), part)
            if update_manifest:
                self._update_manifest([key])
        return added

    def _merge_day(self, key: SeriesKey, day: date, part: pa.Table) -> int:
        path = key.path(self.root) / f"date={day.isoformat()}" / "data.parquet"
        before = 0
        if path.exists():
            try:
                old = pq.read_table(path, schema=key.schema)
            except (pa.ArrowException, OSError) as exc:
                raise _unreadable(path, exc) from None
            before = old.num_rows
            part = pa.concat_tables([old, part])
        merged = _dedupe(part, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".data.{os.getpid()}.tmp")
        pq.write_table(
            merged,
            tmp,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            write_statistics=["time"],
        )
        os.replace(tmp, path)
        return int(merged.num_rows) - before

    # --- reading ----------------------------------------------------------------------

    def day_files(
        self, key: SeriesKey, start: int | None = None, end: int | None = None
    ) -> list[Path]:
        """The series' day files holding times in [start, end) (ms), in order."""
        base = key.path(self.root)
        if not base.is_dir():
            return []
        lo = day_of(start) if start is not None else None
        hi = day_of(end - 1) if end is not None else None
        out = []
        for child in sorted(base.iterdir()):
            if not child.name.startswith("date="):
                continue
            try:
                day = date.fromisoformat(child.name[5:])
            except ValueError:
                continue
            if (lo is not None and day < lo) or (hi is not None and day > hi):
                continue
            file = child / "data.parquet"
            if file.is_file():
                out.append(file)
        return out

    def batches(
        self,
        key: SeriesKey,
        start: int | None = None,
        end: int | None = None,
        *,
        columns: Sequence[str] | None = None,
        batch_rows: int = 65_536,
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of the series with ``start <= time < end`` (ms), in
        time order, read one row group at a time."""
        names = list(columns) if columns is not None else key.schema.names
        if "time" not in names:
            names = ["time", *names]
        for file in self.day_files(key, start, end):
            for batch in _read_batches(file, batch_rows, names):
                if start is None and end is None:
                    yield batch
                    continue
                ts = batch.column(0).cast(pa.int64()).to_numpy()
                lo = 0 if start is None else int(np.searchsorted(ts, start, "left"))
                hi = len(ts) if end is None else int(np.searchsorted(ts, end, "left"))
                if hi > lo:
                    yield batch.slice(lo, hi - lo)

    def times(self, key: SeriesKey) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Every stored time of the series (ms), sorted (one column read)."""
        parts = [
            b.column(0).cast(pa.int64()).to_numpy() for b in self.batches(key, columns=["time"])
        ]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    # --- the manifest -----------------------------------------------------------------

    def series(self) -> list[SeriesInfo]:
        """Every series the manifest lists (rebuilt from the files when there
        is no manifest yet), sorted by key."""
        path = self.root / MANIFEST
        if not path.exists():
            if not self.root.is_dir():
                return []
            return self.rescan()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return sorted((SeriesInfo.from_dict(s) for s in raw["series"]), key=lambda s: s.key)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable catalog manifest ({exc}); run rescan") from None

    def info(self, key: SeriesKey) -> SeriesInfo | None:
        for s in self.series():
            if s.key == key:
                return s
        return None

    def keys_on_disk(self) -> list[SeriesKey]:
        found = []
        for path in sorted(self.root.glob("exchange=*/type=*/symbol=*/timeframe=*")):
            parts = [p.partition("=")[2] for p in path.relative_to(self.root).parts]
            with contextlib.suppress(ConfigError):
                found.append(SeriesKey(*parts))
        return found

    def refresh(self, keys: Sequence[SeriesKey]) -> list[SeriesInfo]:
        """Summarise ``keys`` again from their files into the manifest."""
        with self.locked():
            return self._update_manifest(keys)

    def rescan(self) -> list[SeriesInfo]:
        """Rebuild the whole manifest from the files."""
        with self.locked():
            return self._update_manifest(self.keys_on_disk(), replace=True)

    def _summarise(self, key: SeriesKey) -> SeriesInfo:
        files = self.day_files(key)
        times = self.times(key)
        step = key.step_ms
        gaps = gaps_of(times, step) if step is not None else []
        return SeriesInfo(
            key,
            int(times[0]) if len(times) else None,
            int(times[-1]) if len(times) else None,
            len(times),
            len(files),
            sum(g.missing for g in gaps),
            tuple(gaps[:MANIFEST_GAPS]),
            len(gaps),
        )

    def _update_manifest(
        self, keys: Sequence[SeriesKey], *, replace: bool = False
    ) -> list[SeriesInfo]:
        current: dict[SeriesKey, SeriesInfo] = {}
        path = self.root / MANIFEST
        if not replace and path.exists():
            current = {s.key: s for s in self.series()}
        for key in keys:
            current[key] = self._summarise(key)
        listing = sorted((s for s in current.values() if s.rows), key=lambda s: s.key)
        document = {"version": 1, "series": [s.as_dict() for s in listing]}
        tmp = path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return listing


def _unreadable(path: Path, exc: BaseException) -> ConfigError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ConfigError(
        f"{path}: not a readable Parquet file ({first}); delete it and download or import again"
    )


def _read_batches(path: Path, batch_rows: int, names: list[str]) -> Iterator[pa.RecordBatch]:
    """A day file's batches; a damaged file is a ConfigError naming it."""
    try:
        reader = pq.ParquetFile(path)
        batches = reader.iter_batches(batch_size=batch_rows, columns=names)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ConfigError(f"catalog rows lack column(s) {', '.join(missing)}")
    return table.select(schema.names).cast(schema)


def _times(table: pa.Table) -> np.ndarray[Any, np.dtype[np.int64]]:
    column = table.column("time").cast(pa.int64())
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _dedupe(table: pa.Table, key: SeriesKey) -> pa.Table:
    """Sorted by time (trades: then by id), one row per open time (trades: per
    trade id, unique per venue); of equal keys the last one given wins."""
    times = _times(table)
    ids = np.asarray(table.column("id").to_numpy(), dtype=np.int64) if key.trades else times
    # np.unique on the reversed keys finds each key's last occurrence.
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    keep = len(ids) - 1 - first_in_reversed
    order = keep[np.lexsort((ids[keep], times[keep]))]
    return table.take(pa.array(order))


def ms_of_datetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_time(text: str, what: str) -> int:
    """``2024-03-01``, ``2024-03-01T12:00``, ``...Z`` or an offset -> ms (UTC)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{what}: {text!r} is not a date or time (2024-03-01 or 2024-03-01T12:00Z)"
        ) from None
    return ms_of_datetime(moment)


def day_range(first: int, last: int) -> Iterator[date]:
    day = day_of(first)
    end = day_of(last)
    while day <= end:
        yield day
        day += timedelta(days=1)
