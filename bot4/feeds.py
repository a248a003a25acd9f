"""The feed contract: market data from somewhere live, for a paper session.

A feed is a plugin kind of its own (the ``register_feeds`` hook in
:mod:`bot4.hookspecs`), so market data can come from a venue, a message bus
or a file being written without anyone writing an exchange: ``bot4 run
--exchange paper --feed NAME:SOURCE --symbols ...`` takes its ticks from the
feed and fills the orders in the paper engine. The bundled ``ccxt`` feed
(:mod:`bot4_ccxt.feed`) polls a venue's public tickers; no keys are needed.

A registered factory gets the feed's configuration as a mapping (see
:class:`FeedConfig`: ``source``, ``symbols``, ``interval``, and the feed's
own ``options``) and returns a :class:`Feed`. The session then calls::

    await feed.connect()          # once; a bad source or symbol: ConfigError
    async for tick in feed.ticks():   # until the session ends
        ...
    await feed.close()            # once, also after an error or a cancel

What a feed promises:

- it yields :class:`~bot4.model.MarketData` of the configured symbols only,
  each tick *new* data (a quote that changed, a newer timestamp), never the
  same quote again because it was asked again: a strategy counts ticks;
- it waits between polls with trio (``trio.sleep``, a thread made
  cancellable with ``abandon_on_cancel``), so a stop (a signal, the end of
  ``--duration``) cuts the wait at once;
- a transient failure (timeout, 5xx, 429) is the feed's to retry: it logs it
  and keeps trying. The session notices the silence (no new data for
  ``stale_after`` seconds halts new entries, :mod:`bot4.feeds_watch`); the
  feed must not end the session for it. Raising a
  :class:`~bot4.errors.Bot4Error` from ``ticks()`` ends the session cleanly
  with that message (as a bad data row does).
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from bot4.errors import ConfigError
from bot4.model import MarketData

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_STALE_AFTER",
    "Feed",
    "FeedConfig",
    "parse_duration",
    "parse_feed_spec",
    "parse_symbols",
    "parse_until",
]

DEFAULT_INTERVAL = 1.0  # seconds between two polls of a polling feed
DEFAULT_STALE_AFTER = 30.0  # seconds without new data before new entries halt

_SPEC = re.compile(r"^([a-z][a-z0-9_-]{0,63})(?::(.+))?$")
_SYMBOL = re.compile(r"^[A-Z0-9]+-[A-Z0-9]+(?:-PERP)?$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Feed(abc.ABC):
    """A source of live market data (see the module docstring)."""

    name: str

    async def connect(self) -> None:  # noqa: B027 - optional hook, default is no-op
        """Open connections and check the configuration against the source
        (unknown symbols: ConfigError). Called once, before :meth:`ticks`."""

    async def close(self) -> None:  # noqa: B027 - optional hook, default is no-op
        """Release connections; called once at the end, also after errors."""

    @abc.abstractmethod
    def ticks(self) -> AsyncIterator[MarketData]:
        """New market data of the configured symbols, as it comes."""


@attrs.frozen
class FeedConfig:
    """What ``--feed NAME:SOURCE --symbols ... --feed-interval ...`` says."""

    name: str
    source: str | None
    symbols: tuple[str, ...]
    interval: float = DEFAULT_INTERVAL
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def spec(self) -> str:
        return self.name if self.source is None else f"{self.name}:{self.source}"

    def factory_config(self) -> dict[str, Any]:
        """The mapping a registered feed factory gets."""
        return {
            **self.options,
            "source": self.source,
            "symbols": list(self.symbols),
            "interval": self.interval,
        }

    def as_dict(self) -> dict[str, Any]:
        """For the recording's header (options may hold a URL, never a key:
        a feed of public data needs none)."""
        return {
            "spec": self.spec,
            "symbols": list(self.symbols),
            "interval": self.interval,
            "options": dict(self.options),
        }


def parse_feed_spec(text: str, where: str = "--feed") -> tuple[str, str | None]:
    """``ccxt:binance`` -> ("ccxt", "binance"); ``myfeed`` -> ("myfeed", None)."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise ConfigError(
            f"{where}: {text!r} is not a feed; expected NAME or NAME:SOURCE (e.g. ccxt:binance)"
        )
    return match.group(1), match.group(2)


def parse_symbols(text: str | Sequence[str], where: str = "--symbols") -> tuple[str, ...]:
    """``BTC-USDT,ETH-USDT`` (or a list) -> the symbols, upper-cased, in order,
    each once; at least one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: {item!r} is not a symbol name")
        symbol = item.strip().upper()
        if not symbol:
            continue
        if not _SYMBOL.match(symbol):
            raise ConfigError(
                f"{where}: {item.strip()!r} is not a symbol (BASE-QUOTE, e.g. BTC-USDT)"
            )
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise ConfigError(f"{where}: name at least one symbol (e.g. BTC-USDT,ETH-USDT)")
    return tuple(out)


def parse_duration(text: str, where: str = "--duration") -> float:
    """``90`` / ``90s`` / ``10m`` / ``2h`` / ``1d`` / ``500ms`` -> seconds (> 0)."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not a duration (e.g. 90s, 10m, 2h, 1d)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{where}: {text!r} must be longer than zero")
    return seconds


def parse_until(text: str, now: datetime | None = None, where: str = "--until") -> float:
    """An ISO time (``2026-12-01T14:00Z``; no zone means UTC) or ``HH:MM``
    (UTC, today, or tomorrow when already past) -> seconds from ``now``
    until then (> 0)."""
    now = now or datetime.now(UTC)
    raw = text.strip()
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", raw):
            clock = datetime.strptime(raw if raw.count(":") == 2 else raw + ":00", "%H:%M:%S")
            when = now.replace(
                hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0
            )
            if when <= now:
                when += timedelta(days=1)
        else:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
    except ValueError:
        raise ConfigError(
            f"{where}: {text!r} is not a time (e.g. 2026-12-01T14:00Z, or 14:00 for UTC today)"
        ) from None
    seconds = (when - now).total_seconds()
    if seconds <= 0:
        raise ConfigError(f"{where}: {text!r} is in the past")
    return seconds
