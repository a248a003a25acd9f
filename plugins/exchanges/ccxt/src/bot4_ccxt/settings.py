"""The ccxt plugin's configuration: every field validated, a bad one refused
with a message naming it (:class:`bot4.errors.ConfigError`), secrets read from
the environment or files and kept out of ``repr``. The fields are listed in
the README's "A real exchange: bot4-plugin-ccxt" section."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import ccxt  # type: ignore[import-untyped]  # no py.typed: its clients are Any here

from bot4.errors import ConfigError
from bot4_ccxt.perps import MARGIN_MODES
from bot4_ccxt.triggers import TRIGGER_PRICES
from bot4_ccxt.venues import PROFILES, VenueProfile, profile_of

__all__ = ["CONFIG_KEYS", "DEFAULT_OPTIONS", "VENUE_OPTIONS", "CcxtSettings"]

CONFIG_KEYS = frozenset(
    {
        "exchange",
        "api_key_env",
        "secret_env",
        "password_env",
        "api_key_file",
        "secret_file",
        "password_file",
        "api_url",
        "urls",
        "sandbox",
        "currency",
        "symbols",
        "poll_interval",
        "max_idle",
        "rate_limit",
        "timeout",
        "max_retries",
        "backoff",
        "backoff_max",
        "threads",
        "recv_window",
        "options",
        "type",
        "margin_mode",
        "trigger_price",
        "allow_untested",
        "feed",  # given by bot4 run to every exchange; the venue has its own data
        "balance",  # read by bot4 run for its own book; the venue has the real one
    }
)

# Options that keep ccxt's binance (and most others) to the spot endpoints bot4
# uses; the config's ``options`` override them.
# (``defaultType`` and ``fetchMarkets.types`` come from the config's ``type``.)
DEFAULT_OPTIONS: Mapping[str, Any] = {
    "fetchCurrencies": False,
    "fetchMargins": False,
    "adjustForTimeDifference": True,
    "warnOnFetchOpenOrdersWithoutSymbol": False,
}

_BOT4_SYMBOL = {
    "spot": re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}$"),
    "swap": re.compile(r"^[A-Z0-9]{1,20}-[A-Z0-9]{1,20}-PERP$"),
}
_SYMBOL_EXAMPLE = {"spot": "BTC-USDT", "swap": "BTC-USDT-PERP"}
# Bybit: assume a unified trading account (every account opened since 2023)
# instead of asking on the first private call; ``options`` override it.
VENUE_OPTIONS: Mapping[str, Mapping[str, Any]] = {
    "bybit": {"enableUnifiedAccount": True, "enableUnifiedMargin": False},
}
# --- settings -----------------------------------------------------------------------------


@attrs.frozen
class CcxtSettings:
    """Validated configuration. Secrets are excluded from ``repr``."""

    exchange: str
    api_key: str | None = attrs.field(default=None, repr=False)
    secret: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    api_url: str | None = None
    urls: Mapping[str, str] = attrs.field(factory=dict)
    sandbox: bool = False
    currency: str = "USDT"
    symbols: tuple[str, ...] = ()
    poll_interval: float = 1.0
    max_idle: float | None = None
    rate_limit: float | None = None
    timeout: float = 10.0
    max_retries: int = 4
    backoff: float = 0.25
    backoff_max: float = 8.0
    threads: int = 4
    recv_window: int | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict)
    market_type: str = "spot"  # "spot" or "swap" (linear perpetuals)
    margin_mode: str = "isolated"  # for swaps: "isolated" or "cross"
    trigger_price: str = "mark"  # what a swap's stop orders watch: "mark" or "last"
    allow_untested: bool = False

    @property
    def profile(self) -> VenueProfile | None:
        return profile_of(self.exchange)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CcxtSettings:
        for plain in ("api_key", "secret", "password"):
            if plain in config:
                raise ConfigError(
                    f"ccxt: put the {plain} in an environment variable ({plain}_env) or a "
                    f"file ({plain}_file), never in the config itself"
                )
        unknown = sorted(set(config) - CONFIG_KEYS)
        if unknown:
            raise ConfigError(
                f"ccxt: unknown config field(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(CONFIG_KEYS))}"
            )
        exchange = config.get("exchange")
        if not isinstance(exchange, str) or exchange not in ccxt.exchanges:
            raise ConfigError(
                f"ccxt: config field 'exchange': {exchange!r} is not an exchange id ccxt knows "
                "(e.g. binance, kraken, okx; see ccxt.exchanges)"
            )
        urls = config.get("urls", {})
        if not isinstance(urls, Mapping) or not all(isinstance(v, str) for v in urls.values()):
            raise ConfigError("ccxt: config field 'urls' must map API names to URLs")
        options = config.get("options", {})
        if not isinstance(options, Mapping):
            raise ConfigError("ccxt: config field 'options' must be a mapping")
        kind = config.get("type", "spot")
        if kind not in _BOT4_SYMBOL:
            raise ConfigError(f"ccxt: config field 'type': {kind!r} must be spot or swap")
        allow_untested = _flag(config, "allow_untested")
        profile = profile_of(exchange)
        if profile is None and not allow_untested:
            raise ConfigError(
                f"ccxt: exchange {exchange!r} is not one bot4 has tested "
                f"({', '.join(sorted(PROFILES))}); set allow_untested: true to use it anyway"
            )
        if profile is not None and kind not in profile.types and not allow_untested:
            hint = "; USDⓈ-M perpetuals: exchange: binanceusdm" if exchange == "binance" else ""
            raise ConfigError(
                f"ccxt: config field 'type': bot4 trades {', '.join(profile.types)} on "
                f"{exchange}, not {kind}{hint}"
            )
        margin_mode = config.get("margin_mode", "isolated")
        if margin_mode not in MARGIN_MODES:
            raise ConfigError(
                f"ccxt: config field 'margin_mode': {margin_mode!r} must be isolated or cross"
            )
        trigger_price = config.get("trigger_price", "mark")
        if trigger_price not in TRIGGER_PRICES:
            raise ConfigError(
                f"ccxt: config field 'trigger_price': {trigger_price!r} must be mark or last"
            )
        symbols = config.get("symbols", ())
        if isinstance(symbols, str):
            symbols = [symbols]
        if not all(isinstance(s, str) and _BOT4_SYMBOL[kind].match(s) for s in symbols):
            raise ConfigError(
                f"ccxt: config field 'symbols': {symbols!r} must be like {_SYMBOL_EXAMPLE[kind]} "
                f"(type: {kind})"
            )
        max_idle = config.get("max_idle")
        return cls(
            exchange=exchange,
            api_key=_secret(config, "api_key"),
            secret=_secret(config, "secret"),
            password=_secret(config, "password"),
            api_url=_opt_str(config, "api_url"),
            urls={str(k): str(v) for k, v in urls.items()},
            sandbox=_flag(config, "sandbox"),
            currency=str(config.get("currency", "USDT")),
            symbols=tuple(symbols),
            poll_interval=_seconds(config, "poll_interval", 1.0),
            max_idle=None if max_idle is None else _seconds(config, "max_idle", 0.0),
            rate_limit=(
                None if config.get("rate_limit") is None else _seconds(config, "rate_limit", 0.0)
            ),
            timeout=_seconds(config, "timeout", 10.0, positive=True),
            max_retries=_count(config, "max_retries", 4),
            backoff=_seconds(config, "backoff", 0.25),
            backoff_max=_seconds(config, "backoff_max", 8.0),
            threads=max(1, _count(config, "threads", 4)),
            recv_window=(
                None if config.get("recv_window") is None else _count(config, "recv_window", 0)
            ),
            options=dict(options),
            market_type=kind,
            margin_mode=margin_mode,
            trigger_price=trigger_price,
            allow_untested=allow_untested,
        )


def _secret(config: Mapping[str, Any], name: str) -> str | None:
    env, file = config.get(f"{name}_env"), config.get(f"{name}_file")
    if env is not None and file is not None:
        raise ConfigError(f"ccxt: give {name}_env or {name}_file, not both")
    if env is not None:
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"ccxt: {name}_env: the environment variable {env!s} is not set")
        return value.strip()
    if file is not None:
        try:
            value = Path(str(file)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"ccxt: {name}_file: cannot read {file!s}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"ccxt: {name}_file: {file!s} is empty")
        return value
    return None


def _opt_str(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"ccxt: config field {key!r}: {value!r} is not a string")
    return value


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
        return value.lower() in ("true", "yes")
    if not isinstance(value, bool):
        raise ConfigError(f"ccxt: config field {key!r}: {value!r} is not true or false")
    return value


def _seconds(
    config: Mapping[str, Any], key: str, default: float, *, positive: bool = False
) -> float:
    raw = config.get(key, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value) or value < 0 or (positive and not value):
        need = "a number of seconds above zero" if positive else "a number of seconds >= 0"
        raise ConfigError(f"ccxt: config field {key!r}: {raw!r} must be {need}")
    return value


def _count(config: Mapping[str, Any], key: str, default: int) -> int:
    raw = config.get(key, default)
    try:
        value = int(str(raw))
    except ValueError:
        value = -1
    if isinstance(raw, bool) or value < 0:
        raise ConfigError(f"ccxt: config field {key!r}: {raw!r} must be a whole number >= 0")
    return value
