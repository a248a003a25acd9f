"""Exchange conformance checks: each one drives a fresh :class:`Harness` through
the Exchange interface and raises :class:`ConformanceError` with what to fix.

The checks hold an exchange to the behaviour of the reference,
:class:`bot4_paper.PaperExchange`, where the contract leaves no room (states,
error classes, idempotency, arithmetic of balances and positions) and stay
loose where venues legitimately differ (fees, slippage, ids). They never reach
behind the interface, so a networked plugin runs the same checks through its
own harness.

Use them through :class:`bot4.testing.ExchangeSuite`, or call one directly::

    await run_check(CHECKS["idempotent_place"], lambda: FeedHarness(AcmeExchange))

This module is the registry, :data:`CHECKS`: every check with the capabilities
it needs, in the order they run and are described. The parts live in modules
of their own, and the names above are importable from here too:

* :mod:`bot4.testing.exchange_kit`: the machinery, :class:`Check`,
  :func:`run_check`, :class:`CheckSkipped` and :class:`Kit` (a check's view
  of the harness);
* :mod:`bot4.testing.order_checks`: orders, fills, balance and positions;
* :mod:`bot4.testing.market_and_error_checks`: markets, precision, the
  stream, and refusals;
* :mod:`bot4.testing.exit_and_leverage_checks`: stops, take-profits, attached
  exits and leverage;
* :mod:`bot4.testing.margin_checks`: liquidation, funding and add-margin;
* :mod:`bot4.testing.connection_checks`: reconnect, disconnect and trio
  cancellation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bot4.testing.connection_checks import (
    check_disconnect,
    check_reconnect,
    check_trio_cancellation,
)
from bot4.testing.exchange_kit import (
    CAP,
    Check,
    CheckSkipped,
    HarnessFactory,
    Kit,
    run_check,
)
from bot4.testing.exchange_kit import fail as fail
from bot4.testing.exit_and_leverage_checks import (
    check_attached_exits,
    check_margin,
    check_no_unclaimed_exits,
    check_stop_orders,
    check_take_profit_orders,
)
from bot4.testing.margin_checks import MARGIN_CHECKS
from bot4.testing.market_and_error_checks import (
    check_error_classes,
    check_market_data,
    check_markets,
    check_precision,
    check_unclaimed_order_types,
)
from bot4.testing.order_checks import (
    check_balance_fees,
    check_cancel,
    check_idempotent_place,
    check_limit_order_lifecycle,
    check_market_order_fills,
    check_partial_fill,
    check_positions,
    check_unknown_order_id,
)

__all__ = [
    "CHECKS",
    "Check",
    "CheckSkipped",
    "HarnessFactory",
    "Kit",
    "run_check",
]

_TRADE = frozenset({CAP.MARKET_ORDERS, CAP.LIMIT_ORDERS})


def _checks() -> dict[str, Check]:
    table = [
        Check("markets", check_markets),
        Check("market_order_fills", check_market_order_fills, frozenset({CAP.MARKET_ORDERS})),
        Check("limit_order_lifecycle", check_limit_order_lifecycle, frozenset({CAP.LIMIT_ORDERS})),
        Check("cancel", check_cancel, frozenset({CAP.LIMIT_ORDERS})),
        Check("unknown_order_id", check_unknown_order_id),
        Check("partial_fill", check_partial_fill, frozenset({CAP.LIMIT_ORDERS, CAP.PARTIAL_FILLS})),
        Check("idempotent_place", check_idempotent_place, requires_any=_TRADE),
        Check("balance_fees", check_balance_fees, requires_any=_TRADE),
        Check("positions", check_positions, frozenset({CAP.POSITIONS}), _TRADE),
        Check("precision", check_precision, requires_any=_TRADE),
        Check("market_data", check_market_data, frozenset({CAP.STREAMING, CAP.LIMIT_ORDERS})),
        Check("error_classes", check_error_classes, requires_any=_TRADE),
        Check("unclaimed_order_types", check_unclaimed_order_types),
        Check("stop_orders", check_stop_orders, frozenset({CAP.STOP_ORDERS}), _TRADE),
        Check(
            "take_profit_orders",
            check_take_profit_orders,
            frozenset({CAP.TAKE_PROFIT_ORDERS}),
            _TRADE,
        ),
        Check("attached_exits", check_attached_exits, frozenset({CAP.ATTACHED_EXITS}), _TRADE),
        Check("no_unclaimed_exits", check_no_unclaimed_exits, requires_any=_TRADE),
        Check("margin", check_margin, frozenset({CAP.MARGIN}), _TRADE),
        *(Check(name, func, frozenset({CAP.MARGIN}), _TRADE) for name, func in MARGIN_CHECKS),
        Check("reconnect", check_reconnect, requires_any=_TRADE),
        Check("disconnect", check_disconnect, requires_any=_TRADE, needs_disconnect=True),
        Check("trio_cancellation", check_trio_cancellation, requires_any=_TRADE),
    ]
    return {c.name: c for c in table}


CHECKS: Mapping[str, Check] = _checks()


def describe() -> Sequence[tuple[str, str]]:
    """(name, what it verifies) of every check, for docs and listings."""
    return [(c.name, c.doc) for c in CHECKS.values()]
