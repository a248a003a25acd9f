"""Model objects to JSON-able data and back, exactly.

Used by the event recorder (replay must reproduce every decision bit for bit)
and by anything that prints or stores events. Decimals travel as strings so no
digit is lost; datetimes as ISO-8601 with offset; enums by value. Each object
is tagged with its class name (``"_t"``) so decoding needs no schema.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from bot4 import model

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        model.MarketData,
        model.Signal,
        model.Order,
        model.OrderState,
        model.Fill,
        model.Position,
        model.Balance,
        model.Approved,
        model.Rejected,
        model.RiskAction,
    )
}
_ENUMS: dict[str, type[enum.Enum]] = {
    "side": model.Side,
    "type": model.OrderType,
    "status": model.OrderStatus,
    "kind": model.RiskActionKind,
}
_DATETIMES = frozenset({"timestamp"})


def encode(value: Any) -> Any:
    """A JSON-able form of ``value`` (model objects, containers, scalars)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if attrs.has(type(value)):
        out: dict[str, Any] = {"_t": type(value).__name__}
        for field in attrs.fields(type(value)):
            out[field.name] = encode(getattr(value, field.name))
        return out
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    return value


def decode(data: Any) -> Any:
    """The inverse of :func:`encode` for everything :func:`encode` produced."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get("_t")
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    cls = _TYPES.get(tag)
    if cls is None:
        raise ValueError(f"unknown record type {tag!r}")
    kwargs: dict[str, Any] = {}
    for field in attrs.fields(cls):
        if field.name not in data:
            continue
        raw = data[field.name]
        if field.name in _DATETIMES and isinstance(raw, str):
            kwargs[field.name] = datetime.fromisoformat(raw)
        elif field.name in _ENUMS and isinstance(raw, str):
            kwargs[field.name] = _ENUMS[field.name](raw)
        elif field.name == "rules" and isinstance(raw, list):
            kwargs[field.name] = tuple(raw)
        else:
            kwargs[field.name] = decode(raw)
    return cls(**kwargs)
