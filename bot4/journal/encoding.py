"""A record's body: its payload as JSON text, exactly ``codec.encode`` through
``json.dumps(..., separators=(",", ":"), sort_keys=True)``, built faster.

Why not just that: the generic path walks every attrs field with ``attrs.has``,
``attrs.fields`` and a chain of ``isinstance`` tests, then ``json.dumps`` walks
the dict again; on the order path (ten records an order, six of them carrying
the same :class:`~bot4.model.Order`) that was most of the journal's cost. Here

* each model class gets its writer once: its fields in JSON key order (``_t``
  first) and the JSON text of the constant parts;
* values are written by exact type (``str``, ``Decimal``, ``None``, ``bool``,
  ``int``, enums (the model's by a table of their members' texts),
  datetimes, tuples and lists, model objects); anything else
  (a ``Mapping`` of values, a float, a subclass) goes through the generic
  path, so the text is the same for every payload;
* an :class:`~bot4.model.Order` is frozen, so its text is kept by identity
  for the next records of the same order (a bounded table that holds the
  object, so its ``id`` is not reused while it is there).

``tests/test_journal_encoding.py`` checks the text against the generic path
for every model type, random strings (quotes, control characters,
non-ASCII), Decimals at their extremes and nested values.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from json.encoder import encode_basestring_ascii  # the C escaper json.dumps uses
from typing import Any

import attrs

from bot4 import codec, model

__all__ = ["body_of", "generic_body"]

_Writer = Callable[[Any], str]
_ORDER_CACHE_SIZE = 4096


def generic_body(payload: Any) -> str:
    """The reference: what every body must equal."""
    return json.dumps(codec.encode(payload), separators=(",", ":"), sort_keys=True)


def _plain(value: Any) -> str:
    return json.dumps(codec.encode(value), separators=(",", ":"), sort_keys=True)


def _value(v: Any) -> str:
    t = type(v)
    if t is str:
        return encode_basestring_ascii(v)
    if t is Decimal:
        # str(Decimal) is digits, sign, point, exponent or NaN/Infinity: ASCII, no escapes.
        return f'"{v}"'
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is int:
        return int.__repr__(v)
    writer = _WRITERS.get(t)
    if writer is not None:
        return writer(v)
    if t is tuple or t is list:
        return "[" + ",".join([_value(x) for x in v]) + "]"
    if isinstance(v, enum.Enum) and not isinstance(v, Decimal):
        return _value(v.value)  # codec: an enum by its value, as json.dumps then writes it
    if t is datetime:
        return encode_basestring_ascii(v.isoformat())
    if t is dict and all(type(k) is str for k in v):
        items = [f"{encode_basestring_ascii(k)}:{_value(v[k])}" for k in sorted(v)]
        return "{" + ",".join(items) + "}"
    return _plain(v)


def _model_writer(cls: type[Any]) -> _Writer:
    """The writer of one attrs model class, generated once (as attrs makes its
    ``__init__``): one f-string with the keys in json.dumps order, the tag and
    every key's text constant, each field written by :func:`_value`."""
    tag = encode_basestring_ascii(cls.__name__)
    keys = sorted(["_t", *(f.name for f in attrs.fields(cls))])  # sort_keys=True order
    pieces = []
    for k in keys:
        text = encode_basestring_ascii(k).replace("{", "{{").replace("}", "}}")
        value = tag.replace("{", "{{").replace("}", "}}") if k == "_t" else f"{{_v(o.{k})}}"
        pieces.append(f"{text}:{value}")
    source = f"def write(o):\n    return f'{{{{{','.join(pieces)}}}}}'\n"
    namespace: dict[str, Any] = {"_v": _value}
    # The source holds field names and constants only, never a value.
    exec(compile(source, f"<bot4.journal.encoding {cls.__name__}>", "exec"), namespace)
    write: _Writer = namespace["write"]
    return write


_WRITERS: dict[type[Any], _Writer] = {}
for _cls in (
    model.MarketData,
    model.Signal,
    model.OrderState,
    model.Fill,
    model.Position,
    model.Balance,
    model.Approved,
    model.Rejected,
    model.RiskAction,
):
    _WRITERS[_cls] = _model_writer(_cls)


def _enum_writer(cls: type[enum.Enum]) -> _Writer:
    """The writer of one enum class: each member's text, looked up by
    identity (members are singletons). Reading ``.value`` goes through
    enum's Python-level descriptor: six per order record were a tenth of
    the journal's encoding."""
    texts = {id(member): _value(member.value) for member in cls}

    def write(v: Any) -> str:
        return texts[id(v)]

    return write


for _enum in (model.Side, model.OrderType, model.OrderStatus, model.RiskActionKind):
    _WRITERS[_enum] = _enum_writer(_enum)

_write_order = _model_writer(model.Order)
_orders: dict[int, tuple[model.Order, str]] = {}


def _order_text(order: model.Order) -> str:
    hit = _orders.get(id(order))
    if hit is not None and hit[0] is order:
        return hit[1]
    text = _write_order(order)
    if len(_orders) >= _ORDER_CACHE_SIZE:
        _orders.clear()  # bounded: the orders of the last few batches are what repeat
    _orders[id(order)] = (order, text)
    return text


_WRITERS[model.Order] = _order_text


def body_of(payload: Any) -> str:
    """The body of a record whose payload is ``payload``: equal to
    :func:`generic_body` of it."""
    return _value(payload)
