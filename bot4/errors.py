"""Every exception bot4 raises on purpose, in one tree.

    Bot4Error
    ├── ModelError (also ValueError)     a value refused at construction; names field and value
    ├── ConfigError                      a config file or option is wrong; names file/option
    ├── RuleFileError                    a rule file does not compile; names file and line
    ├── PluginError                      a plugin could not be found, imported or registered
    │   └── PluginApiMismatch            the plugin targets another bot4 API version
    ├── RiskError                        the risk path could not decide (the order is rejected)
    └── ExchangeError                    anything an exchange plugin reports
        ├── ExchangeRefused              the exchange said no: never retry the same request
        │   ├── InsufficientFunds
        │   ├── InvalidOrder
        │   └── OrderNotFound
        └── ExchangeFailed               the request may not have arrived: may retry
            ├── ExchangeTimeout
            ├── ExchangeUnavailable      (5xx, maintenance, connection dropped)
            └── RateLimited

The refused/failed split is the one ccxt draws between ``ExchangeError`` and
``NetworkError``: a refused order is a fact about the order, a failed one is a
fact about the wire, and only the second is worth another try (with the same
client order id, so that a retry can never double an order).
"""

from __future__ import annotations


class Bot4Error(Exception):
    """Base of every error bot4 raises on purpose."""


class ModelError(Bot4Error, ValueError):
    """A value was refused when a model object was built."""

    def __init__(self, cls: str, field: str, value: object, why: str) -> None:
        self.cls = cls
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"{cls}.{field}={value!r}: {why}")


class ConfigError(Bot4Error):
    """A configuration file or option is wrong."""


class RuleFileError(Bot4Error):
    """A rule file could not be compiled. ``str()`` reads ``file:line: what``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class PluginError(Bot4Error):
    """A plugin could not be found, imported or registered."""


class PluginApiMismatch(PluginError):
    """The plugin declares a bot4 API version this kernel does not speak."""


class RiskError(Bot4Error):
    """The risk path could not reach a decision; the kernel rejects the order."""


class ExchangeError(Bot4Error):
    """Anything an exchange plugin reports."""


class ExchangeRefused(ExchangeError):
    """The exchange received the request and said no. Never retry it."""


class InsufficientFunds(ExchangeRefused):
    """Not enough balance or margin for the order."""


class InvalidOrder(ExchangeRefused):
    """The order breaks the exchange's rules (size, price, precision, type)."""


class OrderNotFound(ExchangeRefused):
    """No order with that id is known to the exchange."""


class ExchangeFailed(ExchangeError):
    """The request may not have been processed. Retrying is allowed."""


class ExchangeTimeout(ExchangeFailed):
    """No answer in time; the request may or may not have been applied."""


class ExchangeUnavailable(ExchangeFailed):
    """The exchange or the connection is down (5xx, maintenance, dropped link)."""


class RateLimited(ExchangeFailed):
    """The exchange asked us to slow down (HTTP 429 and the like)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)
