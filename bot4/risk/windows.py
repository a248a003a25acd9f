"""Event-time counting windows for temporal rules.

A rule file declares windows::

    windows:
      orders_per_symbol:               # becomes the fact window.orders_per_symbol
        count: orders                  # orders (approved orders) | stop_outs
        seconds: 60
        per_symbol: true               # count only events of the decision's symbol

The count is the number of such events with a time in ``(now - seconds, now]``
where ``now`` is the event time the kernel passes in (``now_ns``), never the
wall clock: a replay of the same events gives the same counts and the same
decisions. Events are kept only as long as the longest window needs them, and
at most ``MAX_EVENTS`` per symbol, so memory stays bounded.

Durable-rules has timers of its own, but they run on the wall clock and on
background threads; counting here keeps the rule (the threshold and its
condition) in the file and the engine, and the clock in the caller's hands.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable

import attrs

from bot4.errors import RuleFileError
from bot4.risk.yamlsrc import YMap
from bot4.suggest import did_you_mean

ORDERS = "orders"
STOP_OUTS = "stop_outs"
EVENT_KINDS = (ORDERS, STOP_OUTS)
MAX_EVENTS = 100_000
MAX_SECONDS = 366 * 24 * 3600
_ALL = "*"


@attrs.frozen(slots=True)
class WindowSpec:
    name: str
    count: str
    seconds: float
    per_symbol: bool
    path: str
    line: int
    # The window's length in ns, as EventLog.count takes it (asked per decision).
    nanos: int = attrs.field(init=False, eq=False, repr=False)

    @nanos.default
    def _nanos(self) -> int:
        return int(self.seconds * 1e9)

    @classmethod
    def parse(cls, name: str, value: object, path: str, line: int) -> WindowSpec:
        if not isinstance(value, YMap):
            raise RuleFileError(
                path, line, f"window {name!r} must be a mapping (count, seconds, per_symbol)"
            )
        for key in value:
            if key not in ("count", "seconds", "per_symbol"):
                hint = did_you_mean(str(key), ("count", "seconds", "per_symbol"))
                raise RuleFileError(
                    path, value.lines[key], f"unknown key {key!r} in window {name!r}{hint}"
                )
        count = value.get("count")
        if count not in EVENT_KINDS:
            raise RuleFileError(
                path,
                value.lines.get("count", line),
                f"window {name!r}: count must be one of {', '.join(EVENT_KINDS)}",
            )
        seconds = value.get("seconds")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not 0 < seconds <= MAX_SECONDS
        ):
            raise RuleFileError(
                path,
                value.lines.get("seconds", line),
                f"window {name!r}: seconds must be a number in (0, {MAX_SECONDS}]",
            )
        per_symbol = value.get("per_symbol", False)
        if not isinstance(per_symbol, bool):
            raise RuleFileError(
                path,
                value.lines.get("per_symbol", line),
                f"window {name!r}: per_symbol must be true or false",
            )
        return cls(name, str(count), float(seconds), per_symbol, path, line)


class EventLog:
    """Times (ns) of counted events, per kind and symbol, in time order.

    An ``observer`` (the journal) hears of every recorded event as
    ``(kind, symbol, now_ns)`` and of every :meth:`clear` as ``(kind, "",
    -1)``; :meth:`restore` puts journaled events back without telling it."""

    def __init__(self) -> None:
        self._times: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.horizon_ns = 0
        self.observer: Callable[[str, str, int], None] | None = None

    def set_horizon(self, seconds: float) -> None:
        self.horizon_ns = max(self.horizon_ns, int(seconds * 1e9))

    def record(self, kind: str, symbol: str, now_ns: int) -> None:
        if self.observer is not None:
            self.observer(kind, symbol, now_ns)
        self._add(kind, symbol, now_ns)

    def restore(self, kind: str, events: Iterable[tuple[str, int]]) -> int:
        """Put back ``(symbol, time)`` events of ``kind`` (a restart); returns
        how many."""
        n = 0
        for symbol, ts in events:
            self._add(kind, symbol, ts)
            n += 1
        return n

    def _add(self, kind: str, symbol: str, now_ns: int) -> None:
        cutoff = now_ns - self.horizon_ns
        for key in ((kind, symbol), (kind, _ALL)):
            times = self._times[key]
            if times and times[-1] > now_ns:
                bisect.insort(times, now_ns)  # out-of-order event (replay merge)
            else:
                times.append(now_ns)
            # Forget what no window can count, and the oldest past MAX_EVENTS;
            # looked for only when there is something to drop.
            if times[0] <= cutoff or len(times) > MAX_EVENTS:
                drop = bisect.bisect_right(times, cutoff)
                if len(times) - drop > MAX_EVENTS:
                    drop = len(times) - MAX_EVENTS
                if drop:
                    del times[:drop]

    def count(self, spec: WindowSpec, symbol: str, now_ns: int) -> int:
        times = self._times.get((spec.count, symbol if spec.per_symbol else _ALL))
        if not times:
            return 0
        return bisect.bisect_right(times, now_ns) - bisect.bisect_right(times, now_ns - spec.nanos)

    def clear(self, kind: str) -> None:
        for key in [k for k in self._times if k[0] == kind]:
            del self._times[key]
        if self.observer is not None:
            self.observer(kind, "", -1)
