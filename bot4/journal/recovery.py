"""Crash recovery: what the journal knows, reconciled with what the exchange knows.

Run once when a session starts, before the kernel sees its first event
(:mod:`bot4.journal.service` does it). Against a venue whose state outlives
the bot (a live exchange; the paper exchange with ``state:``):

1. **Intents without an answer** (written ahead, then the process died):
   ``exchange.fetch_order(symbol, client_order_id)``. Known there: the
   acknowledgement is journaled and the order is never placed again. Unknown:
   the intent is marked ``never_sent``; the kernel may decide afresh, but
   nothing re-places it blindly.
2. **Orders the journal thinks open** are asked for their state; **open
   orders at the exchange the journal never saw** (an exit the venue attached
   while the bot was down) are adopted.
3. **Fills since the last journaled one** (``exchange.fetch_fills(since)``)
   are journaled; then every fill of the venue epoch is replayed, in journal
   order, into the session's :class:`~bot4.portfolio.PortfolioTracker` (with
   each order's leverage and stop, as the kernel applies them).
4. **Positions** from the replay are compared with ``fetch_positions()``. If
   they differ, all the venue's recent fills are fetched and compared again;
   if they still differ the breaker is tripped with the difference as its
   reason (reduce-only orders still go through: a person has to look).
5. **The breaker** is restored as journaled (tripped stays tripped, with
   its reason and since when), and so is the rest of the risk state
   (:mod:`bot4.journal.riskstate`): the peak equity (the drawdown is measured
   from the peak reached before the crash, unrealised gains included), the
   ladder latches of positions still open on the same side, and the events
   the rules' windows count (stop-outs, orders), within the windows' horizon
   and after the last breaker reset.
6. **Client order ids**: the kernel numbers new ids past the highest one the
   journal or the exchange has seen for this session id
   (:meth:`bot4.kernel.Kernel.resume`), so ids are unique across restarts
   without a restart counter in the id.
7. **Protective levels** of every open position go back to the kernel
   (:meth:`bot4.protection.Protector.restore`): the journaled
   ``protection:<SYMBOL>`` levels, else the stop loss and take profit of the
   position's latest entry order in the journal (its intent is written before
   it is sent, so a crash right after an entry still knows its stop). A
   kernel-held stop is thus watched again from the first tick.

Against a venue that starts empty every time (the in-memory paper exchange)
there is nothing to reconcile: the session record marks a new *venue epoch*,
orders still open in the journal are marked ``abandoned``, positions start
flat, the breaker starts armed; only the id counter carries over (so ids stay
unique within the journal).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import attrs

from bot4.contracts import Exchange
from bot4.errors import ExchangeFailed, OrderNotFound
from bot4.journal.errors import RecoveryError
from bot4.journal.facade import Journal
from bot4.journal.records import OPEN_STATUSES, OrderRow, Record, RecordKind
from bot4.journal.riskstate import PEAK_KEY, cleared_key
from bot4.model import ZERO, Fill, Order, OrderState, OrderStatus

__all__ = ["RecoveryReport", "highest_id", "recover", "replay_fills"]


@attrs.define
class RecoveryReport:
    fresh_venue: bool
    orders_known: int = 0
    intents_recovered: int = 0  # intents the exchange had: acknowledged now, not re-placed
    never_sent: int = 0  # intents the exchange never received
    orders_updated: int = 0  # open orders whose state moved while the bot was down
    orders_adopted: int = 0  # exchange orders the journal had not seen
    fills_replayed: int = 0  # journaled fills applied to the tracker
    fills_recovered: int = 0  # fills fetched from the exchange and journaled now
    positions: dict[str, str] = attrs.field(factory=dict)
    mismatches: list[str] = attrs.field(factory=list)
    breaker_tripped: bool = False
    breaker_reason: str = ""
    breaker_since_ns: int | None = None
    peak_equity: str = ""  # the high-water mark the session goes on from
    ladder_latches: int = 0  # ladder rungs restored (positions still open)
    window_events: dict[str, int] = attrs.field(factory=dict)  # events restored, by kind
    last_id: int = 0
    protected: int = 0  # open positions whose protective levels were restored

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def highest_id(session_id: str, ids: Iterable[str]) -> int:
    """The highest counter in ids shaped ``<session_id>-<tag>-<n>`` (and the
    venue's children of them, ``...-<n>.sl``)."""
    pattern = re.compile(rf"^{re.escape(session_id)}-[a-z]+-(\d+)(?:\..*)?$")
    best = 0
    for cid in ids:
        m = pattern.match(cid)
        if m:
            best = max(best, int(m.group(1)))
    return best


def replay_fills(tracker: Any, fills: Sequence[Fill], orders: dict[str, Order]) -> None:
    """Apply fills as the kernel does: an opening order's leverage and stop."""
    for fill in fills:
        order = orders.get(fill.client_order_id)
        if order is not None and not order.reduce_only:
            tracker.apply(fill, leverage=order.leverage, stop_loss=order.stop_loss)
        else:
            tracker.apply(fill)


def _positions(tracker: Any) -> dict[str, Decimal]:
    return {s: p.qty for s, p in tracker.positions().items() if p.qty != 0}


async def _fetch_order(exchange: Exchange, order: Order) -> OrderState | None:
    try:
        return await exchange.fetch_order(order.symbol, order.client_order_id)
    except OrderNotFound:
        return None
    except ExchangeFailed as exc:
        raise RecoveryError(
            f"recovery: cannot ask the exchange about order {order.client_order_id}: {exc}; "
            "not starting (the order's fate is unknown)"
        ) from exc


async def recover(
    journal: Journal,
    exchange: Exchange,
    *,
    tracker: Any,
    kernel: Any,
    policy: Any,
    session_id: str,
    fresh_venue: bool,
    shadow: Any = None,
) -> RecoveryReport:
    """Reconcile and restore (see the module docstring). ``shadow`` is a
    second tracker (the journal writer's) that gets the same fills."""
    report = RecoveryReport(fresh_venue=fresh_venue)
    state = await journal.state()
    epoch = int(state.get("epoch", 0))
    rows = await journal.orders()
    report.last_id = highest_id(session_id, (r.order.client_order_id for r in rows))
    if fresh_venue:
        kernel.resume(report.last_id)
        await journal.append([Record(RecordKind.RECOVERY, report.as_dict(), time.time_ns())])
        return report

    now = time.time_ns()
    live = {r.order.client_order_id: r for r in rows if r.last_seq > epoch}
    report.orders_known = len(live)
    records: list[Record] = []
    try:
        await exchange.connect()
        orders: dict[str, Order] = {cid: r.order for cid, r in live.items()}
        for cid, row in live.items():
            if row.status == "intent":
                found = await _fetch_order(exchange, row.order)
                if found is None:
                    report.never_sent += 1
                    records.append(
                        Record(
                            RecordKind.NEVER_SENT,
                            {
                                "client_order_id": cid,
                                "reason": "unknown at the exchange on recovery",
                            },
                            now,
                            cid,
                            row.order.symbol,
                        )
                    )
                else:
                    report.intents_recovered += 1
                    records.append(Record.state(found, now, ack=True))
                    live[cid] = _moved(row, found)
            elif row.status in OPEN_STATUSES:
                found = await _fetch_order(exchange, row.order)
                if found is None:
                    found = OrderState(
                        row.order,
                        OrderStatus.CANCELED,
                        row.filled_qty,
                        exchange_order_id=row.exchange_order_id,
                        reason="unknown at the exchange on recovery",
                    )
                if found.status.value != row.status or found.filled_qty != row.filled_qty:
                    report.orders_updated += 1
                    records.append(Record.state(found, now))
                live[cid] = _moved(row, found)
        exchange_ids: list[str] = []
        for st in await exchange.fetch_open_orders():
            cid = st.order.client_order_id
            exchange_ids.append(cid)
            if cid not in live:
                report.orders_adopted += 1
                records.append(Record.state(st, now))
                orders[cid] = st.order
                live[cid] = _moved(None, st)

        known = await journal.fills(since_seq=epoch)
        known_ids = {f.fill.fill_id for f in known}
        since = max((f.fill.timestamp for f in known), default=None)
        fetched = list(await exchange.fetch_fills(since))
        new = await _new_fills(exchange, fetched, known_ids, orders, live, records, now, report)
        fills = [f.fill for f in known] + new
        exchange_ids.extend(f.client_order_id for f in fetched)

        replay_fills(tracker, fills, orders)
        if shadow is not None:
            replay_fills(shadow, fills, orders)
        report.fills_replayed = len(known)
        venue = {p.symbol: p.qty for p in await exchange.fetch_positions() if p.qty != 0}
        if _positions(tracker) != venue:
            # Something older than the last journaled fill is missing: look
            # at everything the venue still remembers.
            everything = list(await exchange.fetch_fills(None))
            more = await _new_fills(
                exchange,
                everything,
                known_ids | {f.fill_id for f in new},
                orders,
                live,
                records,
                now,
                report,
            )
            if more:
                replay_fills(tracker, more, orders)
                if shadow is not None:
                    replay_fills(shadow, more, orders)
            mine = _positions(tracker)
            if mine != venue:
                report.mismatches = [
                    f"{s}: journal {mine.get(s, ZERO)} vs exchange {venue.get(s, ZERO)}"
                    for s in sorted(set(mine) | set(venue))
                    if mine.get(s, ZERO) != venue.get(s, ZERO)
                ]
    except ExchangeFailed as exc:
        raise RecoveryError(f"recovery: the exchange did not answer: {exc}; not starting") from exc

    report.positions = {s: str(q) for s, q in _positions(tracker).items()}
    open_orders = [r.order for r in live.values() if r.is_open]
    report.last_id = max(report.last_id, highest_id(session_id, exchange_ids))
    kernel.resume(report.last_id, open_orders)
    protector = getattr(kernel, "protection", None)
    if protector is not None:
        report.protected = protector.restore(_levels(state, live.values(), report.positions))

    breaker = getattr(policy, "breaker", None)
    saved = state.get("breaker")
    if breaker is not None and isinstance(saved, dict) and saved.get("tripped"):
        breaker.trip(
            str(saved.get("reason", "restored from the journal")), int(saved.get("at_ns") or 0)
        )
    if breaker is not None and report.mismatches:
        reason = "recovery: positions differ from the exchange: " + "; ".join(report.mismatches)
        if breaker.trip(reason, now):
            records.append(Record.breaker(True, reason, now, rule="recovery"))
    if breaker is not None:
        report.breaker_tripped = bool(breaker.tripped)
        report.breaker_reason = str(breaker.reason)
        report.breaker_since_ns = getattr(breaker, "tripped_at_ns", None)
    await _restore_risk_state(journal, report, tracker, kernel, policy, epoch, records, now)
    for symbol, qty in report.positions.items():
        position = tracker.position(symbol)
        records.append(
            Record(
                RecordKind.POSITION,
                position if position is not None else {"symbol": symbol, "qty": qty},
                now,
                symbol=symbol,
            )
        )
    records.append(Record(RecordKind.RECOVERY, report.as_dict(), now))
    await journal.append(records, durable=True)
    return report


async def _restore_risk_state(
    journal: Journal,
    report: RecoveryReport,
    tracker: Any,
    kernel: Any,
    policy: Any,
    epoch: int,
    records: list[Record],
    now: int,
) -> None:
    """Peak equity, ladder latches and window events of this venue epoch
    (see :mod:`bot4.journal.riskstate`). Before the first tick: the first
    decision after a restart already sees them. Latches of positions gone
    while the bot was down are cleared (added to ``records``)."""
    saved = await journal.risk_state(since_seq=epoch)
    peak = saved.get(PEAK_KEY)
    if peak is not None and isinstance(peak.value, dict) and hasattr(tracker, "restore_peak"):
        tracker.restore_peak(Decimal(str(peak.value["peak"])))
    if hasattr(tracker, "peak_equity"):
        report.peak_equity = str(tracker.peak_equity)
    if hasattr(kernel, "restore_risk_state"):
        restored, stale = kernel.restore_risk_state({k: r.value for k, r in saved.items()})
        report.ladder_latches = restored
        records.extend(Record.risk_state(key, None, now) for key in stale)
    horizon = int(getattr(policy, "window_horizon_ns", 0) or 0)
    if horizon <= 0 or not hasattr(policy, "restore_window_events"):
        return
    for kind in policy.window_kinds:
        cleared = saved.get(cleared_key(kind))
        since = max(epoch, cleared.seq if cleared is not None else 0)
        rows = await journal.risk_events(kind, since_seq=since, horizon_ns=horizon)
        report.window_events[kind] = policy.restore_window_events(
            kind, [(r.symbol, r.ts_ns) for r in rows]
        )


def _levels(
    state: dict[str, Any], rows: Iterable[OrderRow], positions: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """The protective levels of each open position: journaled, else its
    latest entry's (see the module docstring)."""
    levels: dict[str, dict[str, Any]] = {}
    latest: dict[str, OrderRow] = {}
    for row in rows:
        o = row.order
        if o.reduce_only or (o.stop_loss is None and o.take_profit is None):
            continue
        if row.filled_qty > 0 or row.is_open:
            best = latest.get(o.symbol)
            if best is None or row.last_seq >= best.last_seq:
                latest[o.symbol] = row
    for symbol in positions:
        saved = state.get(f"protection:{symbol}")
        if isinstance(saved, dict) and (saved.get("stop_loss") or saved.get("take_profit")):
            levels[symbol] = saved
        elif symbol in latest:
            o = latest[symbol].order
            levels[symbol] = {
                "side": o.side.value,
                "stop_loss": o.stop_loss,
                "take_profit": o.take_profit,
            }
    return levels


def _moved(row: OrderRow | None, state: OrderState) -> OrderRow:
    return OrderRow(
        order=row.order if row is not None else state.order,
        status=state.status.value,
        filled_qty=state.filled_qty,
        exchange_order_id=state.exchange_order_id,
        origin=row.origin if row is not None else "exchange",
        intent_seq=row.intent_seq if row is not None else None,
        last_seq=row.last_seq if row is not None else 0,
    )


async def _new_fills(
    exchange: Exchange,
    fetched: Sequence[Fill],
    known_ids: set[str],
    orders: dict[str, Order],
    live: dict[str, OrderRow],
    records: list[Record],
    now: int,
    report: RecoveryReport,
) -> list[Fill]:
    """Fills the journal lacks, journaled (after their order, when the
    journal did not know the order either)."""
    new: list[Fill] = []
    for fill in fetched:
        if fill.fill_id in known_ids:
            continue
        known_ids.add(fill.fill_id)
        if fill.client_order_id not in orders:
            try:
                st = await exchange.fetch_order(fill.symbol, fill.client_order_id)
            except OrderNotFound:
                st = None
            if st is not None:
                report.orders_adopted += 1
                records.append(Record.state(st, now))
                orders[fill.client_order_id] = st.order
                live[fill.client_order_id] = _moved(None, st)
        records.append(Record.fill(fill, now))
        new.append(fill)
        report.fills_recovered += 1
    return new
