"""bot4's plugin conformance kit: prove with one pytest command that a plugin
honours the contract before anyone trusts it with money.

Three parts:

* **The contract**: :class:`Exchange`, :class:`Strategy`, :class:`RiskRules`
  and :class:`Capability`, re-exported from :mod:`bot4.contracts`, and the
  error tree of :mod:`bot4.errors` (a refusal is ExchangeRefused, never
  retried; a dropped or timed-out request is ExchangeFailed, may be retried).
* **The reference**: the paper exchange (``bot4-plugin-paper``), against which
  every check is validated and which ``test_against_reference`` compares a
  plugin with, operation by operation.
* **The checks**, as pytest suite classes (subclass one as ``Test...``)::

      from bot4.testing import ExchangeSuite
      from bot4_acme import AcmeExchange

      class TestAcme(ExchangeSuite):
          factory = AcmeExchange      # called with the kit's market-data feed

  Each check is one test; a check needing a capability the exchange does not
  claim is skipped with that reason, and one it claims but does not honour
  fails with a message saying what to fix. The checks are also plain async
  functions (:data:`bot4.testing.exchange.CHECKS`, :func:`run_check`), driven
  only through the Exchange interface and a :class:`Harness`, so a networked
  plugin runs them too.

The ``bot4`` pytest plugin (registered under ``pytest11``) adds nothing but
assertion rewriting for this package and a ``bot4_conformance`` marker, so an
author's test file needs the one import above and nothing else.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bot4.contracts import Capability, Exchange, MarketInfo, RiskRules, Strategy

if TYPE_CHECKING:
    from bot4.testing.exchange import CHECKS, Check, CheckSkipped, Kit, run_check
    from bot4.testing.harness import ConformanceError, ExchangeFactory, FeedHarness, Harness
    from bot4.testing.stateful import paper_reference
    from bot4.testing.suites import ExchangeSuite, RiskRulesSuite, StrategySuite

# The kit's modules load on first use, not with the package: the pytest plugin
# lives in this package, so importing it must stay cheap and must not import
# the checks before pytest has registered them for assertion rewriting.
_LAZY = {
    "CHECKS": "bot4.testing.exchange",
    "Check": "bot4.testing.exchange",
    "CheckSkipped": "bot4.testing.exchange",
    "Kit": "bot4.testing.exchange",
    "run_check": "bot4.testing.exchange",
    "ConformanceError": "bot4.testing.harness",
    "ExchangeFactory": "bot4.testing.harness",
    "FeedHarness": "bot4.testing.harness",
    "Harness": "bot4.testing.harness",
    "ExchangeSuite": "bot4.testing.suites",
    "RiskRulesSuite": "bot4.testing.suites",
    "StrategySuite": "bot4.testing.suites",
    "paper_reference": "bot4.testing.stateful",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bot4.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CHECKS",
    "Capability",
    "Check",
    "CheckSkipped",
    "ConformanceError",
    "Exchange",
    "ExchangeFactory",
    "ExchangeSuite",
    "FeedHarness",
    "Harness",
    "Kit",
    "MarketInfo",
    "RiskRules",
    "RiskRulesSuite",
    "Strategy",
    "StrategySuite",
    "paper_reference",
    "run_check",
]
