"""The account on a ccxt venue, as read: orders, fills, balance, positions.

:class:`CcxtAccount` (on :class:`~bot4_ccxt.connection.CcxtConnection`)
keeps what this exchange object knows of the account's orders: those it
placed (:class:`_Known`), the venue's ids and client ids of each, its fills
in execution order, and the order states the stream has yet to emit. It
writes bot4's client order id as the venue accepts it and reads it back
(:mod:`bot4_ccxt.venues`), finds an order by that id where the venue files
it (trigger orders apart on some venues: :mod:`bot4_ccxt.triggers`), turns
the venue's records into OrderStates and Fills, and answers the Exchange
reads. The writes that place, cancel and set margin
(:class:`~bot4_ccxt.exchange.CcxtExchange`) and the polling stream
(:mod:`bot4_ccxt.poll_stream`) build on these.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import attrs

from bot4.errors import ExchangeRefused, OrderNotFound
from bot4.model import (
    Balance,
    Fill,
    Order,
    OrderState,
    OrderStatus,
    OrderType,
    Position,
    Side,
)
from bot4.portfolio import PortfolioTracker
from bot4_ccxt.connection import CcxtConnection
from bot4_ccxt.conversions import _ZERO, _d, _id_key, _order_of
from bot4_ccxt.perps import MarginPosition, margin_position
from bot4_ccxt.settings import CcxtSettings
from bot4_ccxt.triggers import (
    TRIGGER_TYPES,
    actual_order_id,
    lookup_params,
    merged_with_actual,
    separate,
)
from bot4_ccxt.venues import decode_coid, encode_coid

__all__ = ["CcxtAccount"]

log = logging.getLogger("bot4_ccxt")


@attrs.define
class _Known:
    """An order this object placed (or adopted): what the caller asked and what
    was sent after rounding; ``confirmed`` once the venue acknowledged it."""

    placed: Order
    sent: Order
    confirmed: bool = False


class CcxtAccount(CcxtConnection):
    """The account's orders and fills as this object knows them, and the
    Exchange reads (see the module docstring); the exchange object's base."""

    def __init__(self, settings: CcxtSettings) -> None:
        super().__init__(settings)
        self._orders: dict[str, _Known] = {}
        self._coids: dict[tuple[str, str], str] = {}  # (symbol, exchange id) -> client id
        self._fills: dict[str, dict[str, Fill]] = {}  # symbol -> fill id -> fill
        self._fill_order: dict[str, tuple[int, tuple[int, str], str]] = {}
        self._since: dict[str, int] = {}
        self._traded: set[str] = set(settings.symbols)
        # Order states for the stream: those the writes returned, those it emitted.
        self._outbox: deque[OrderState] = deque()
        self._emitted: dict[str, tuple[OrderStatus, Decimal]] = {}
        self._coid_back: dict[str, str] = {}  # the venue's client id -> bot4's
        # Trigger orders whose triggered order is known (its fills map to them).
        self._resolved: set[tuple[str, str]] = set()

    # --- reads ------------------------------------------------------------------------------

    async def fetch_balance(self) -> Balance:
        await self._ready()
        raw = await self._call("fetch_balance()", lambda c: c.fetch_balance())
        cur = self.settings.currency
        entry = raw.get(cur) or {}
        free, used = _d(entry.get("free")), _d(entry.get("used"))
        return Balance(currency=cur, total=free + used, free=free, used=max(used, _ZERO))

    async def fetch_order(self, symbol: str, client_order_id: str) -> OrderState:
        await self._ready()
        raw = await self._lookup(symbol, client_order_id)
        if raw is None:
            raise OrderNotFound(f"{self.name}: no order {client_order_id!r} on {symbol}")
        return self._state(raw, symbol)

    # --- client order ids ----------------------------------------------------------------

    def _venue_coid(self, coid: str) -> str | int:
        """bot4's client id as this venue accepts it (:mod:`bot4_ccxt.venues`)."""
        if self.profile is None:
            return coid  # an untested venue (allow_untested): sent as it is
        venue = encode_coid(self.profile, coid)
        self._coid_back[str(venue)] = coid
        return venue

    def _coid_params(self, coid: str) -> dict[str, Any]:
        venue = self._venue_coid(coid)
        if self.profile is not None and self.profile.coid_int:
            return {"userref": venue}
        return {"clientOrderId": venue}

    def _coid_of(self, raw: Mapping[str, Any]) -> str:
        """bot4's client id of a venue order record (its own id when not ours)."""
        venue = raw.get("clientOrderId")
        if venue is None and self.profile is not None and self.profile.coid_int:
            venue = (raw.get("info") or {}).get("userref")
        if venue is not None and str(venue) in self._coid_back:
            return self._coid_back[str(venue)]
        if venue is not None and self.profile is not None:
            decoded = decode_coid(self.profile, venue)
            if decoded is not None:
                return decoded
        return str(venue or raw.get("id"))

    @property
    def _algo_service(self) -> bool:
        """Binance USDⓈ-M: trigger orders live in the Algo Service (own ids, look-ups)."""
        return (
            self._swap
            and self.profile is not None
            and self.profile.trigger_orders == "binance_algo"
        )

    def _is_trigger(self, coid: str, kind: OrderType | None = None) -> bool | None:
        """Whether ``coid`` is a trigger order (None: this object cannot tell)."""
        known = self._orders.get(coid)
        kind = known.sent.type if known is not None else kind
        return None if kind is None else kind in TRIGGER_TYPES

    async def _lookup(
        self, symbol: str, coid: str, kind: OrderType | None = None
    ) -> dict[str, Any] | None:
        """The venue's record of an order by client id; None if it has none.

        Binance, OKX: ``fetch_order`` by client id. Bybit v5: its open orders
        filtered by ``orderLinkId`` (``/v5/order/realtime``, category from the
        market), then its order history (ccxt's ``fetch_order`` there needs an
        exchange id). Kraken: open, then closed orders filtered by ``userref``.
        On a venue that files trigger orders apart (:mod:`bot4_ccxt.triggers`),
        a trigger order is looked up there, an order of unknown type in both."""
        trigger = self._is_trigger(coid, kind)
        if not separate(self.profile, self._swap):
            return await self._lookup_in(symbol, coid, False)
        for conditional in (False, True) if trigger is None else (trigger,):
            raw = await self._lookup_in(symbol, coid, conditional)
            if raw is not None:
                return raw
        return None

    async def _lookup_in(self, symbol: str, coid: str, trigger: bool) -> dict[str, Any] | None:
        sym = self._sym(symbol)
        what = f"fetch_order({symbol!r}, {coid!r})"
        kind = self.profile.lookup if self.profile is not None else "fetch_order"
        extra = lookup_params(self.profile, trigger, self._swap)
        if kind == "fetch_order":
            params = {**self._coid_params(coid), **extra}
            try:
                raw: dict[str, Any] = await self._call(
                    what, lambda c: c.fetch_order(None, sym, dict(params))
                )
            except OrderNotFound:
                return None
            if trigger:
                return await self._with_actual(symbol, coid, raw)
            return raw
        venue = self._venue_coid(coid)
        key = "orderLinkId" if kind == "bybit" else "userref"
        for method in ("fetch_open_orders", "fetch_closed_orders"):
            found = await self._call(
                what,
                lambda c, m=method: getattr(c, m)(sym, None, None, {key: venue, **extra}),
            )
            mine = [r for r in found if str(r.get("clientOrderId") or "") == str(venue)]
            if not mine and kind == "kraken":
                mine = [r for r in found if (r.get("info") or {}).get("userref") == venue]
            if mine:
                return dict(mine[-1])
        return None

    async def _with_actual(self, symbol: str, coid: str, raw: dict[str, Any]) -> dict[str, Any]:
        """A Binance algo order with the status and fills of the order it
        placed when it triggered (:mod:`bot4_ccxt.triggers`); that order's
        fills are booked under ``coid``."""
        actual = actual_order_id(raw)
        if actual is None:
            if raw.get("status") == "closed":  # triggered, its order not named yet
                return {**raw, "status": "open"}
            return raw
        self._coids[(symbol, actual)] = coid
        sym = self._sym(symbol)
        placed: dict[str, Any] = await self._call(
            f"fetch_order({actual!r})", lambda c: c.fetch_order(actual, sym)
        )
        return merged_with_actual(raw, placed)

    async def fetch_open_orders(self, symbol: str | None = None) -> Sequence[OrderState]:
        await self._ready()
        symbols = [symbol] if symbol is not None else sorted(self._traded)
        raws: list[tuple[str, dict[str, Any]]] = []
        apart = separate(self.profile, self._swap)
        extra = lookup_params(self.profile, True, self._swap)
        for sym in symbols:
            ccxt_symbol = self._sym(sym)
            got = await self._call(
                f"fetch_open_orders({sym!r})", lambda c, s=ccxt_symbol: c.fetch_open_orders(s)
            )
            raws.extend((sym, r) for r in got)
            if apart:  # the venue lists its trigger orders apart
                got = await self._call(
                    f"fetch_open_orders({sym!r}, trigger)",
                    lambda c, s=ccxt_symbol: c.fetch_open_orders(s, None, None, dict(extra)),
                )
                raws.extend((sym, r) for r in got)
        raws.sort(key=lambda sr: (sr[1].get("timestamp") or 0, _id_key(sr[1].get("id"))))
        return [self._state(r, sym) for sym, r in raws]

    async def fetch_fills(self, since: datetime | None = None) -> Sequence[Fill]:
        await self._ready()
        for sym in sorted(self._traded):
            await self._refresh_fills(sym)
        fills = [f for book in self._fills.values() for f in book.values()]
        fills.sort(key=lambda f: self._fill_order[f.fill_id])
        if since is not None:
            fills = [f for f in fills if f.timestamp >= since]
        return fills

    async def fetch_positions(self) -> Sequence[Position]:
        if self._swap:
            return [p.position() for p in await self.fetch_margin_positions()]
        fills = await self.fetch_fills()
        tracker = PortfolioTracker(_ZERO)
        for fill in fills:
            tracker.apply(fill)
        return [p for p in tracker.positions().values() if p.qty != 0]

    # --- margin positions (type: swap) ------------------------------------------------------

    async def fetch_margin_positions(self) -> Sequence[MarginPosition]:
        """Open perpetual positions as the venue reports them: liquidation
        price, margin and mark included (:mod:`bot4_ccxt.perps`)."""
        await self._ready()
        if not self._swap:
            raise ExchangeRefused(f"{self.name}: margin positions need type: swap")
        wanted = sorted(self._traded) or sorted(self._markets)
        syms = [self._sym(s) for s in wanted]
        raws = await self._call("fetch_positions()", lambda c: c.fetch_positions(syms))
        out = []
        for raw in raws:
            symbol = self._from_ccxt.get(str(raw.get("symbol")))
            if symbol is None:
                continue
            pos = margin_position(symbol, raw, self._sizes[symbol])
            if pos is not None:
                out.append(pos)
        return sorted(out, key=lambda p: p.symbol)

    # --- fills and order states -------------------------------------------------------------

    async def _refresh_fills(self, symbol: str) -> list[Fill]:
        """Fetch the account's new trades in ``symbol``; returns those not seen before."""
        ccxt_symbol = self._sym(symbol)
        book = self._fills.setdefault(symbol, {})
        page = self.profile.trades_page if self.profile is not None else 1000
        new: list[Fill] = []
        while True:
            since = self._since.get(symbol)
            trades = await self._call(
                f"fetch_my_trades({symbol!r})",
                lambda c, since=since: c.fetch_my_trades(ccxt_symbol, since, page),
            )
            fresh = 0
            for t in trades:
                fill_id = f"{symbol}:{t['id']}"
                if fill_id in book:
                    continue
                fill = await self._fill(symbol, t, fill_id)
                book[fill_id] = fill
                self._fill_order[fill_id] = (
                    int(t.get("timestamp") or 0),
                    _id_key(t["id"]),
                    fill_id,
                )
                new.append(fill)
                fresh += 1
                stamp = int(t.get("timestamp") or 0)
                self._since[symbol] = max(self._since.get(symbol, 0), stamp)
            if len(trades) < page or not fresh:
                break
        new.sort(key=lambda f: self._fill_order[f.fill_id])
        return new

    async def _fill(self, symbol: str, t: Mapping[str, Any], fill_id: str) -> Fill:
        order_id = str(t.get("order") or "")
        coid = self._coids.get((symbol, order_id))
        link = (t.get("info") or {}).get("orderLinkId")  # Bybit names the order's client id
        if coid is None and link:
            coid = self._coid_of({"clientOrderId": link})
            self._coids[(symbol, order_id)] = coid
        if coid is None and self._algo_service:
            coid = await self._trigger_of_fill(symbol, order_id)
        if coid is None:
            sym = self._sym(symbol)
            # Bybit: its fetch_order by exchange id wants the "last 500 orders" caveat acknowledged.
            extra = {"acknowledged": True} if self.settings.exchange == "bybit" else {}
            try:
                raw = await self._call(
                    f"fetch_order({order_id!r})", lambda c: c.fetch_order(order_id, sym, extra)
                )
            except ExchangeRefused as exc:
                # The venue will not say (an old or a venue-made order): the fill
                # still counts, under the venue's order id.
                log.warning("%s: order %r of a fill not found: %s", self.name, order_id, exc)
                raw = {}
            coid = self._coid_of(raw) if raw.get("clientOrderId") else order_id or fill_id
            self._coids[(symbol, order_id)] = coid
        qty, price = _d(t.get("amount")) * self._sizes[symbol], _d(t.get("price"))
        fee = _ZERO
        info = self._markets[symbol]
        for f in t.get("fees") or ([t["fee"]] if t.get("fee") else []):
            cost = _d(f.get("cost"))
            if f.get("currency") == info.quote_currency:
                fee += cost
            elif f.get("currency") == symbol.split("-")[0]:
                fee += cost * price
        stamp = t.get("timestamp")
        when = datetime.fromtimestamp(int(stamp) / 1000, UTC) if stamp else datetime.now(UTC)
        return Fill(
            fill_id=fill_id,
            client_order_id=coid,
            symbol=symbol,
            side=Side(str(t.get("side"))),
            qty=qty,
            price=price,
            fee=abs(fee),
            timestamp=when,
            liquidity=str(t.get("takerOrMaker") or "taker"),
        )

    async def _trigger_of_fill(self, symbol: str, order_id: str) -> str | None:
        """The client id of our trigger order whose triggered order ``order_id``
        is (Binance: a fill names the order the algo order placed)."""
        for coid, known in list(self._orders.items()):
            if known.sent.symbol != symbol or known.sent.type not in TRIGGER_TYPES:
                continue
            if ("algo", coid) in self._resolved:
                continue
            raw = await self._lookup_in(symbol, coid, True)
            if raw is not None and actual_order_id(raw) is not None:
                self._resolved.add(("algo", coid))
            if self._coids.get((symbol, order_id)) == coid:
                return coid
        return self._coids.get((symbol, order_id))

    def _state(self, raw: Mapping[str, Any], symbol: str, coid: str | None = None) -> OrderState:
        coid = coid or self._coid_of(raw)
        exchange_id = str(raw.get("id") or "")
        self._coids[(symbol, exchange_id)] = coid
        known = self._orders.get(coid)
        size = self._sizes.get(symbol, Decimal(1))
        order = known.sent if known is not None else _order_of(raw, symbol, coid, size)
        filled = _d(raw.get("filled")) * size
        cost = raw.get("cost")
        if filled and cost is not None:
            avg: Decimal | None = _d(cost) / filled
        elif filled and raw.get("average") is not None:
            avg = _d(raw.get("average"))
        else:
            avg = None
        status = {
            "closed": OrderStatus.FILLED,
            "canceled": OrderStatus.CANCELED,
            "cancelled": OrderStatus.CANCELED,
            "expired": OrderStatus.CANCELED,
            "rejected": OrderStatus.REJECTED,
        }.get(str(raw.get("status")))
        if status is None:
            status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW
        return OrderState(
            order=order,
            status=status,
            filled_qty=min(filled, order.qty),
            avg_price=avg,
            exchange_order_id=exchange_id,
        )
