"""bot4: a trading kernel whose risk policy lives in files a person can edit.

Where things live, from the inside out:

* Kernel core: ``bot4.model`` (the common types: market data, signals,
  orders, fills, positions, risk outcomes), ``bot4.bus`` (the trio event bus
  with topics, filters, backpressure and replay), ``bot4.risk`` (rule files
  compiled for durable-rules; the pre-trade gate that fails closed) and
  ``bot4.kernel`` (the trio session that wires exchange, strategy and risk).
* Public API for plugin authors: ``bot4.contracts`` (the Exchange, Strategy
  and RiskRules interfaces), ``bot4.hookspecs`` (the registration hooks, with
  ``bot4.hookimpl`` to mark yours) and ``bot4.errors`` (the exception tree,
  with the refused/failed split every exchange must honour).
* Testing kit: ``bot4.testing``, the conformance checks a plugin author runs
  with one pytest command.

Everything else (``bot4.plugins``, ``bot4.cli``, ``bot4.data``, the journal)
is plumbing around those three layers.
"""

from bot4.contracts import API_VERSION
from bot4.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["API_VERSION", "__version__", "hookimpl"]
