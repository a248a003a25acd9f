"""What the paper engine keeps of each order and emits about it.

:class:`_Live` is the engine's mutable record of one order (the rounded
order it executes, the one the caller sent, fill progress and status); the
engine's books, its trigger index (:mod:`bot4_paper.triggers`) and the
durable engine's state file (:mod:`bot4_paper.durable`) all hold these
records. :data:`EngineEvent` is what the engine's calls return: fills and
order updates. :func:`_changed` makes a changed :class:`~bot4.model.Order`
without running its validators, for changes the engine checked itself.

Every part of the engine imports these from here (none imports
:mod:`bot4_paper.engine`); the engine re-exports ``EngineEvent`` and
``_Live`` for the modules that import them from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import attrs

from bot4.model import ZERO, Fill, Order, OrderState, OrderStatus

__all__ = ["EngineEvent"]

EngineEvent = Fill | OrderState

_ORDER_FIELDS = tuple(a.name for a in attrs.fields(Order))
_new = object.__new__
_set = object.__setattr__


def _changed(order: Order, changes: Mapping[str, Decimal | None]) -> Order:
    """``attrs.evolve(order, **changes)`` without running the validators
    again, for changes the engine has validated itself (a quantity rounded
    down and checked positive, a price rounded and checked positive, a leg
    resized to a position): on the order path, where evolve was a third of
    the cost of keeping a position's stop."""
    out: Order = _new(Order)
    for name in _ORDER_FIELDS:
        _set(out, name, changes[name] if name in changes else getattr(order, name))
    return out


@attrs.define(slots=True, eq=False)
class _Live:
    """Mutable engine record of one order."""

    order: Order  # rounded; what the engine executes
    placed: Order  # as the caller sent it; idempotency compares against this
    seq: int
    exchange_order_id: str
    status: OrderStatus = OrderStatus.NEW
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    triggered: bool = False
    reason: str = ""

    @property
    def remaining(self) -> Decimal:
        return self.order.qty - self.filled

    def state(self) -> OrderState:
        return OrderState(
            order=self.order,
            status=self.status,
            filled_qty=self.filled,
            avg_price=self.notional / self.filled if self.filled else None,
            exchange_order_id=self.exchange_order_id,
            reason=self.reason,
        )
