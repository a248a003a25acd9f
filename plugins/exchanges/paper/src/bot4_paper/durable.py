"""A paper venue that outlives the bot process: ``state: <file>`` in the config.

Recovery and crash tests need an exchange that remembers what it accepted
when the bot dies, as a real venue does. :class:`DurableEngine` is a
:class:`~bot4_paper.engine.PaperEngine` that writes its orders, fills,
balance and positions to its own SQLite file after every change, and loads
them when it is built on an existing file. The feed position survives too:
the file records the timestamp of the last tick the engine took, and a
restarted :class:`~bot4_paper.exchange.PaperExchange` skips every tick at or
before it, so the restarted bot continues from the next tick the venue has
not seen.

What is written when:

* ``place``/``cancel``/a tick that filled, triggered or cancelled something:
  the changed orders, the new fills and the engine's counters, last quotes
  and balance/positions, in one transaction, before the call returns (so the
  venue never "forgets" an order it acknowledged);
* a tick that changed nothing is not written at once (that would cost a
  commit per tick); the last-tick mark is written with the next change or
  every ``TICK_FLUSH`` ticks. Ticks not yet written are replayed after a
  restart, which is harmless: they changed nothing the first time, and the
  book they meet again is the same.

SQLite in WAL mode with ``synchronous=NORMAL``: a commit survives a crash or
SIGKILL of the process (the simulated failure); power loss is out of scope
for a simulator. Fills are replayed into the engine's tracker on load with
the same leverage/stop arguments the matching used, so positions, cash and
margin come back exactly; the stored positions are compared with the replay
as a check. The margin account (leverage and mode per symbol, added
collateral, funding paid, the next funding time, liquidations) is stored
beside them and written at once by set_leverage, set_margin_mode and
add_margin.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from bot4 import codec
from bot4.contracts import MarketInfo
from bot4.errors import ConfigError
from bot4.model import MarketData, Order, OrderState, OrderStatus, Side
from bot4_paper.engine import EngineEvent, PaperEngine, _Live

__all__ = ["TICK_FLUSH", "DurableEngine"]

TICK_FLUSH = 1000
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS paper_orders (client_order_id TEXT PRIMARY KEY,"
    " seq INTEGER NOT NULL, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS paper_fills (n INTEGER PRIMARY KEY, body TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS paper_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_FORMAT = "bot4-paper-state-1"


def _dumps(value: Any) -> str:
    return json.dumps(codec.encode(value), separators=(",", ":"), sort_keys=True)


def _market(m: MarketInfo) -> dict[str, str]:
    return {
        "symbol": m.symbol,
        "price_increment": str(m.price_increment),
        "qty_increment": str(m.qty_increment),
        "min_qty": str(m.min_qty),
        "quote_currency": m.quote_currency,
    }


class DurableEngine(PaperEngine):
    """A PaperEngine persisted to ``path`` (created if missing)."""

    durable = True

    def __init__(self, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state_path = Path(path)
        self.resume_after: datetime | None = None  # the last tick the venue took
        self._conn: sqlite3.Connection | None = None
        self._saved: dict[str, tuple[Any, ...]] = {}  # client id -> _key() last written
        self._saved_fills = 0
        self._dirty: set[str] = set()
        self._unsaved_ticks = 0
        self._last_ts: datetime | None = None
        try:
            self._load()
        except BaseException:
            # A refused state file: close it now, as nobody holds this engine
            # to close it later (Python 3.13 warns about unclosed connections).
            self.close()
            raise

    # -- the engine's commands, persisted ---------------------------------------

    def place(self, order: Order, now: datetime | None = None) -> OrderState:
        try:
            return super().place(order, now)
        finally:
            self._persist()

    def cancel(self, client_order_id: str, symbol: str | None = None) -> OrderState:
        try:
            return super().cancel(client_order_id, symbol)
        finally:
            self._persist()

    def drain(self) -> list[EngineEvent]:
        events = super().drain()
        for event in events:
            if isinstance(event, OrderState):
                self._dirty.add(event.order.client_order_id)
        return events

    def on_tick(self, tick: MarketData) -> list[EngineEvent]:
        events = super().on_tick(tick)
        self._last_ts = tick.timestamp
        self._unsaved_ticks += 1
        if events or self._unsaved_ticks >= TICK_FLUSH or self._open_changed():
            self._persist(force=True)
        return events

    def set_leverage(self, symbol: str, leverage: Decimal) -> Decimal:
        try:
            return super().set_leverage(symbol, leverage)
        finally:
            self._persist(force=True)

    def set_margin_mode(self, symbol: str, mode: str) -> None:
        try:
            super().set_margin_mode(symbol, mode)
        finally:
            self._persist(force=True)

    def add_margin(self, symbol: str, amount: Decimal) -> Decimal | None:
        try:
            return super().add_margin(symbol, amount)
        finally:
            self._persist(force=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- storage -----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self.state_path.parent.is_dir():
                raise ConfigError(
                    f"paper: config field 'state': folder {self.state_path.parent} does not exist"
                )
            conn: sqlite3.Connection | None = None
            try:
                conn = sqlite3.connect(self.state_path, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
            except sqlite3.DatabaseError as exc:
                # Closed here, not left to the garbage collector: Python 3.13
                # warns (an error under filterwarnings) about a connection
                # that was never closed.
                if conn is not None:
                    conn.close()
                raise ConfigError(
                    f"paper: config field 'state': {self.state_path} is not a paper state "
                    f"file ({exc})"
                ) from None
            self._conn = conn
        return self._conn

    def _body(self, live: _Live) -> str:
        return _dumps(
            {
                "order": live.order,
                "placed": live.placed,
                "seq": live.seq,
                "exchange_order_id": live.exchange_order_id,
                "status": live.status.value,
                "filled": live.filled,
                "notional": live.notional,
                "triggered": live.triggered,
                "reason": live.reason,
            }
        )

    @staticmethod
    def _key(live: _Live) -> tuple[Any, ...]:
        """Everything of an order that matching can change (a position's one
        stop is resized and moved: its qty and price)."""
        return (
            live.status,
            live.filled,
            live.triggered,
            live.order.qty,
            live.order.price,
            live.reason,
        )

    def _open_changed(self) -> bool:
        """A resting order can change without an event (a stop triggered on a
        tick with no size left): compare the open book with what was written."""
        for book in self._open.values():
            for cid, live in book.items():
                if self._saved.get(cid) != self._key(live):
                    return True
        return False

    def _persist(self, *, force: bool = False) -> None:
        for event in self._outbox:  # place()/cancel() events not drained yet
            if isinstance(event, OrderState):
                self._dirty.add(event.order.client_order_id)
        for book in self._open.values():
            self._dirty.update(book)
        rows = []
        keys = []
        for cid in self._dirty:
            live = self._orders.get(cid)
            if live is None:
                continue
            key = self._key(live)
            if self._saved.get(cid) != key:
                rows.append((cid, live.seq, self._body(live)))
                keys.append((cid, key))
        self._dirty.clear()
        # The engine keeps only its recent fills (a bounded deque): the new ones
        # are the last ``fill_seq - saved`` of them.
        fresh = self._fill_seq - self._saved_fills
        new_fills = list(itertools.islice(self._fills, len(self._fills) - fresh, None))
        if not rows and not new_fills and not force:
            return
        meta = {
            "format": _FORMAT,
            "starting_balance": str(self.tracker.starting_cash),
            "seq": self._seq,
            "fill_seq": self._fill_seq,
            "now": self._now.isoformat() if self._now is not None else None,
            "last_tick": self._last_ts.isoformat() if self._last_ts is not None else None,
            "last": {s: codec.encode(t) for s, t in self._last.items()},
            "avail": {
                s: {Side.BUY.value: str(a[0]), Side.SELL.value: str(a[1])}
                for s, a in self._avail.items()
            },
            "markets": [_market(m) for m in self._markets.values()],
            "balance": codec.encode(self.balance()),
            "positions": [codec.encode(p) for p in self.positions()],
            "margin": self.margin.dump(),
        }
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO paper_orders (client_order_id, seq, body) VALUES (?, ?, ?)"
                " ON CONFLICT (client_order_id) DO UPDATE SET body = excluded.body",
                rows,
            )
            conn.executemany(
                "INSERT INTO paper_fills (n, body) VALUES (?, ?)",
                [(self._saved_fills + i + 1, _dumps(f)) for i, f in enumerate(new_fills)],
            )
            conn.executemany(
                "INSERT INTO paper_meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self._saved.update(keys)
        self._saved_fills = self._fill_seq
        self._unsaved_ticks = 0

    def _load(self) -> None:
        existed = self.state_path.exists()
        conn = self._db()
        meta = {str(k): json.loads(v) for k, v in conn.execute("SELECT key, value FROM paper_meta")}
        if not meta:
            if existed and conn.execute("SELECT COUNT(*) FROM paper_orders").fetchone()[0]:
                raise ConfigError(f"paper: {self.state_path}: orders without metadata; damaged")
            return
        if meta.get("format") != _FORMAT:
            raise ConfigError(
                f"paper: {self.state_path}: unknown state format {meta.get('format')!r}"
            )
        starting = Decimal(meta["starting_balance"])
        if starting != self.tracker.starting_cash:
            raise ConfigError(
                f"paper: {self.state_path} holds an account opened with balance {starting}, "
                f"the config says {self.tracker.starting_cash}; use another state file"
            )
        for m in meta["markets"]:
            self._markets.setdefault(
                m["symbol"],
                MarketInfo(
                    m["symbol"],
                    Decimal(m["price_increment"]),
                    Decimal(m["qty_increment"]),
                    Decimal(m["min_qty"]),
                    m["quote_currency"],
                ),
            )
        lives: list[_Live] = []
        for cid, body in conn.execute("SELECT client_order_id, body FROM paper_orders"):
            data = json.loads(body)
            live = _Live(
                order=codec.decode(data["order"]),
                placed=codec.decode(data["placed"]),
                seq=int(data["seq"]),
                exchange_order_id=data["exchange_order_id"],
                status=OrderStatus(data["status"]),
                filled=Decimal(data["filled"]),
                notional=Decimal(data["notional"]),
                triggered=bool(data["triggered"]),
                reason=data["reason"],
            )
            lives.append(live)
            self._saved[cid] = self._key(live)
        lives.sort(key=lambda o: o.seq)
        every = {live.order.client_order_id: live for live in lives}
        for live in lives:
            cid = live.order.client_order_id
            self._orders[cid] = live
            if live.status.is_open:
                self._rest(live)
            else:  # the engine's bounded history of closed orders
                self._closed.append(cid)
                while len(self._closed) > self._history:
                    self._orders.pop(self._closed.popleft(), None)
        fills = [
            codec.decode(json.loads(b))
            for (b,) in conn.execute("SELECT body FROM paper_fills ORDER BY n")
        ]
        for fill in fills:
            order = every[fill.client_order_id].order
            opening = self._opening_qty(order, fill.qty)
            self.tracker.apply(
                fill,
                leverage=order.leverage if opening else None,
                stop_loss=order.stop_loss if opening else None,
            )
            self._fills.append(fill)
        self._saved_fills = len(fills)
        if self._saved_fills != int(meta["fill_seq"]):
            raise ConfigError(
                f"paper: {self.state_path}: {self._saved_fills} fills stored, the counter says "
                f"{meta['fill_seq']}; the state file is damaged"
            )
        for symbol, tick in meta["last"].items():
            self._last[symbol] = codec.decode(tick)
            self.tracker.on_market_data(self._last[symbol])
        self._avail = {
            s: [Decimal(a[Side.BUY.value]), Decimal(a[Side.SELL.value])]
            for s, a in meta["avail"].items()
        }
        self._seq = int(meta["seq"])
        self._fill_seq = int(meta["fill_seq"])
        self._set_now(datetime.fromisoformat(meta["now"]) if meta["now"] else None)
        self._last_ts = datetime.fromisoformat(meta["last_tick"]) if meta["last_tick"] else None
        self.resume_after = self._last_ts
        if "margin" in meta:  # absent in a file written before the margin account
            # Funding is in the stored starting balance already (the tracker's
            # adjust_cash moves it), so only the account's own state comes back.
            self.margin.load(meta["margin"])
            self._funded = self.margin.funded  # the data's funding rates came back too
        stored = {p["symbol"]: Decimal(p["qty"]) for p in meta["positions"]}
        replayed = {p.symbol: p.qty for p in self.positions()}
        if stored != replayed:
            raise ConfigError(
                f"paper: {self.state_path}: stored positions {stored} differ from the fills "
                f"{replayed}; the state file is damaged"
            )
