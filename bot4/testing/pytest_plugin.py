"""The ``bot4`` pytest plugin (entry point group ``pytest11``).

Kept light on purpose: it is imported at every pytest start in any
environment where bot4 is installed, so it imports nothing of bot4 itself. It
turns on assertion rewriting for the kit (so its asserts explain themselves
and pytest does not warn about a module imported before rewriting) and
declares the ``bot4_conformance`` marker.
"""

from __future__ import annotations

import pytest

# The submodules, not the package: the package is already imported (this
# module lives in it), and pytest warns about registering an imported module.
pytest.register_assert_rewrite(
    "bot4.testing.connection_checks",
    "bot4.testing.exchange",
    "bot4.testing.exchange_kit",
    "bot4.testing.exit_and_leverage_checks",
    "bot4.testing.harness",
    "bot4.testing.margin_checks",
    "bot4.testing.market_and_error_checks",
    "bot4.testing.order_checks",
    "bot4.testing.risk_rules",
    "bot4.testing.stateful",
    "bot4.testing.strategy",
    "bot4.testing.suites",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bot4_conformance: a bot4 plugin conformance check (bot4.testing)"
    )
