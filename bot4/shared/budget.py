"""The shared risk budget: exposure reserved atomically in Redis before an order goes out.

Every figure is an integer number of micro-units of the quote currency
(``notional x 10**6``; reservations round up, so rounding never lets an order
through that the exact figure would refuse). Lua numbers are doubles, exact
up to 2**53, so the budget is exact up to about 9 x 10**9 of quote currency.

Keys, under the deployment's namespace ``<ns>``::

    <ns>:budget:res       hash  order id -> "process|symbol|units" (still reserved)
    <ns>:budget:reserved  hash  "total" and each symbol -> units reserved
    <ns>:budget:exposure  hash  "process|symbol" -> units of filled exposure
    <ns>:budget:exposed   hash  "total" and each symbol -> units of filled exposure
    <ns>:budget:equity    hash  process -> units of equity (for the leverage limit)
    <ns>:lease:<process>  hash  order id -> units: the process's reservations
    <ns>:hb:<process>     string with a PX expiry: the process's heartbeat
    <ns>:procs            set   processes that registered

The scripts (each one EVALSHA, so each is atomic on the server):

* ``reserve`` refreshes the caller's heartbeat and equity, then admits the
  order only if filled exposure + reservations + the order stay within the
  global limit, the symbol's limit and ``max_leverage x`` the summed equity
  of live processes; admitted, the order's notional is reserved under its
  id. Reserving an id again is a no-op that admits (idempotent retries).
* ``settle`` (a fill) moves the filled notional out of the reservation
  (never below zero) and sets the process's filled exposure in the symbol to
  the position's notional, as the process's own book reports it: fills that
  reduce or flip a position reduce exposure too.
* ``release`` (cancel, reject, an order done) frees what is left reserved.
* ``sweep`` releases every reservation of a process whose heartbeat key has
  expired, and forgets its equity. Its filled exposure stays counted:
  positions outlive a crashed bot, so the limit keeps counting them until a
  process with the same name (``BOT4_REDIS_PROCESS``) registers again and
  reports its book, or an operator clears them.
* ``restore`` re-registers this process's open reservations and positions
  after Redis lost them (a restart without persistence, an expired lease).
* ``withdraw`` removes everything of a process that stops cleanly.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any

import attrs
import redis
import trio

from bot4.errors import ConfigError
from bot4.gate import AsyncRiskCheck
from bot4.model import ZERO, Order, Portfolio, Rejected
from bot4.shared.connection import SharedConnection, SharedUnavailable

SCALE = Decimal(10**6)
DEFAULT_LEASE = 10.0  # seconds without a heartbeat before a process's reservations go

_COMMON = """
local p = ARGV[1]
local function num(v) if v then return tonumber(v) end return 0 end
local function fmt(x) return string.format('%.0f', x) end
local function unreserve(cid)
  local held = redis.call('HGET', p..':budget:res', cid)
  if not held then return 0 end
  local proc, sym, units = string.match(held, '^(.*)|([^|]*)|([^|]*)$')
  redis.call('HDEL', p..':budget:res', cid)
  redis.call('HDEL', p..':lease:'..proc, cid)
  redis.call('HINCRBY', p..':budget:reserved', 'total', '-'..units)
  redis.call('HINCRBY', p..':budget:reserved', sym, '-'..units)
  return tonumber(units)
end
local function set_exposure(proc, sym, units)
  local key = proc..'|'..sym
  local old = num(redis.call('HGET', p..':budget:exposure', key))
  local delta = units - old
  if units == 0 then redis.call('HDEL', p..':budget:exposure', key)
  else redis.call('HSET', p..':budget:exposure', key, fmt(units)) end
  if delta ~= 0 then
    redis.call('HINCRBY', p..':budget:exposed', 'total', fmt(delta))
    redis.call('HINCRBY', p..':budget:exposed', sym, fmt(delta))
  end
end
local function register(proc, lease_ms, equity)
  local was = redis.call('SET', p..':hb:'..proc, '1', 'PX', lease_ms, 'GET')
  redis.call('SADD', p..':procs', proc)
  if equity ~= '' then redis.call('HSET', p..':budget:equity', proc, equity) end
  return was
end
"""

# ARGV: prefix, process, order id, symbol, units, max total, max symbol,
# max leverage (-1 = no limit), lease ms, equity units ('' = unknown)
_RESERVE = (
    _COMMON
    + """
local proc, cid, sym = ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local max_total, max_sym, max_lev = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
register(proc, ARGV[9], ARGV[10])
local reserved = p..':budget:reserved'
local exposed = p..':budget:exposed'
local used = num(redis.call('HGET', reserved, 'total')) + num(redis.call('HGET', exposed, 'total'))
local used_sym = num(redis.call('HGET', reserved, sym)) + num(redis.call('HGET', exposed, sym))
local equity = 0
for _, v in ipairs(redis.call('HVALS', p..':budget:equity')) do equity = equity + tonumber(v) end
if redis.call('HEXISTS', p..':budget:res', cid) == 1 then
  return {1, 'held', fmt(used), fmt(used_sym), fmt(equity)}
end
if max_total >= 0 and used + n > max_total then
  return {0, 'exposure', fmt(used), fmt(used_sym), fmt(equity)}
end
if max_sym >= 0 and used_sym + n > max_sym then
  return {0, 'symbol', fmt(used), fmt(used_sym), fmt(equity)}
end
if max_lev >= 0 and (equity <= 0 or used + n > max_lev * equity) then
  return {0, 'leverage', fmt(used), fmt(used_sym), fmt(equity)}
end
redis.call('HSET', p..':budget:res', cid, proc..'|'..sym..'|'..ARGV[5])
redis.call('HSET', p..':lease:'..proc, cid, ARGV[5])
redis.call('HINCRBY', reserved, 'total', ARGV[5])
redis.call('HINCRBY', reserved, sym, ARGV[5])
return {1, 'ok', fmt(used + n), fmt(used_sym + n), fmt(equity)}
"""
)

# ARGV: prefix, process, order id, symbol, filled units, position units ('' = keep)
_SETTLE = (
    _COMMON
    + """
local proc, cid, sym = ARGV[2], ARGV[3], ARGV[4]
local filled = tonumber(ARGV[5])
local held = redis.call('HGET', p..':budget:res', cid)
local left = 0
if held then
  local rproc, rsym, units = string.match(held, '^(.*)|([^|]*)|([^|]*)$')
  local take = math.min(tonumber(units), filled)
  left = tonumber(units) - take
  redis.call('HINCRBY', p..':budget:reserved', 'total', fmt(-take))
  redis.call('HINCRBY', p..':budget:reserved', rsym, fmt(-take))
  if left <= 0 then
    redis.call('HDEL', p..':budget:res', cid)
    redis.call('HDEL', p..':lease:'..rproc, cid)
  else
    redis.call('HSET', p..':budget:res', cid, rproc..'|'..rsym..'|'..fmt(left))
    redis.call('HSET', p..':lease:'..rproc, cid, fmt(left))
  end
end
if ARGV[6] ~= '' then set_exposure(proc, sym, tonumber(ARGV[6])) end
return fmt(left)
"""
)

# ARGV: prefix, order id
_RELEASE = (
    _COMMON
    + """
return fmt(unreserve(ARGV[2]))
"""
)

# ARGV: prefix, process, lease ms, equity units
_HEARTBEAT = (
    _COMMON
    + """
local was = register(ARGV[2], ARGV[3], ARGV[4])
if was then return 1 end
return 0
"""
)

# ARGV: prefix
_SWEEP = (
    _COMMON
    + """
local swept, released = 0, 0
for _, proc in ipairs(redis.call('SMEMBERS', p..':procs')) do
  if redis.call('EXISTS', p..':hb:'..proc) == 0 then
    for _, cid in ipairs(redis.call('HKEYS', p..':lease:'..proc)) do
      unreserve(cid)
      released = released + 1
    end
    redis.call('DEL', p..':lease:'..proc)
    redis.call('HDEL', p..':budget:equity', proc)
    redis.call('SREM', p..':procs', proc)
    swept = swept + 1
  end
end
return {swept, released}
"""
)

# ARGV: prefix, process, lease ms, equity units, count of reservations,
# then (order id, symbol, units) per reservation, then (symbol, units) per position
_RESTORE = (
    _COMMON
    + """
local proc = ARGV[2]
register(proc, ARGV[3], ARGV[4])
local count = tonumber(ARGV[5])
local i = 6
local added = 0
for _ = 1, count do
  local cid, sym, units = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if redis.call('HEXISTS', p..':budget:res', cid) == 0 then
    redis.call('HSET', p..':budget:res', cid, proc..'|'..sym..'|'..units)
    redis.call('HSET', p..':lease:'..proc, cid, units)
    redis.call('HINCRBY', p..':budget:reserved', 'total', units)
    redis.call('HINCRBY', p..':budget:reserved', sym, units)
    added = added + 1
  end
end
local keep = {}
while i <= #ARGV do
  set_exposure(proc, ARGV[i], tonumber(ARGV[i + 1]))
  keep[ARGV[i]] = true
  i = i + 2
end
for _, key in ipairs(redis.call('HKEYS', p..':budget:exposure')) do
  local kproc, sym = string.match(key, '^(.*)|([^|]*)$')
  if kproc == proc and not keep[sym] then set_exposure(proc, sym, 0) end
end
return added
"""
)

# ARGV: prefix, process
_WITHDRAW = (
    _COMMON
    + """
local proc = ARGV[2]
local released = 0
for _, cid in ipairs(redis.call('HKEYS', p..':lease:'..proc)) do
  unreserve(cid)
  released = released + 1
end
for _, key in ipairs(redis.call('HKEYS', p..':budget:exposure')) do
  local kproc, sym = string.match(key, '^(.*)|([^|]*)$')
  if kproc == proc then set_exposure(proc, sym, 0) end
end
redis.call('DEL', p..':lease:'..proc, p..':hb:'..proc)
redis.call('HDEL', p..':budget:equity', proc)
redis.call('SREM', p..':procs', proc)
return released
"""
)


def to_units(value: Decimal, *, up: bool = False) -> int:
    """Quote-currency amount -> integer micro-units (rounded up for reservations)."""
    rounding = ROUND_CEILING if up else ROUND_HALF_EVEN
    return int((value * SCALE).to_integral_value(rounding=rounding))


def from_units(units: int | str) -> Decimal:
    return Decimal(int(units)) / SCALE


def _limit_env(env: Mapping[str, str], name: str) -> Decimal | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except ArithmeticError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{name}: {raw!r} must be a number >= 0")
    return value


@attrs.frozen
class BudgetLimits:
    """The shared limits, in quote currency; None = no limit of that kind.
    From the environment: BOT4_SHARED_MAX_EXPOSURE, BOT4_SHARED_MAX_SYMBOL_EXPOSURE,
    BOT4_SHARED_MAX_LEVERAGE. Every process of a deployment should use the same
    figures: each reservation is checked against the limits its caller passes."""

    max_exposure: Decimal | None = None
    max_symbol_exposure: Decimal | None = None
    max_leverage: Decimal | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BudgetLimits:
        env = os.environ if environ is None else environ
        return cls(
            _limit_env(env, "BOT4_SHARED_MAX_EXPOSURE"),
            _limit_env(env, "BOT4_SHARED_MAX_SYMBOL_EXPOSURE"),
            _limit_env(env, "BOT4_SHARED_MAX_LEVERAGE"),
        )

    def argv(self) -> list[str]:
        def units(v: Decimal | None) -> str:
            return "-1" if v is None else str(to_units(v))

        lev = "-1" if self.max_leverage is None else str(self.max_leverage)
        return [units(self.max_exposure), units(self.max_symbol_exposure), lev]


@attrs.frozen
class ReserveResult:
    """The script's answer: admitted or not, why (``ok``, ``held`` for an id
    already reserved, ``exposure``, ``symbol``, ``leverage``) and the shared
    figures it decided on (exposure + reservations, total and in the symbol,
    after the order when admitted; summed equity of live processes)."""

    ok: bool
    code: str
    used: Decimal
    used_symbol: Decimal
    equity: Decimal


@attrs.frozen
class SymbolFigures:
    exposure: Decimal
    reserved: Decimal


@attrs.frozen
class SharedFigures:
    """A consistent read of the shared budget (one MULTI), for facts and status."""

    exposure: Decimal
    reserved: Decimal
    equity: Decimal
    processes: int
    symbols: Mapping[str, SymbolFigures]
    taken_at: float  # time.monotonic() of the read

    @property
    def used(self) -> Decimal:
        return self.exposure + self.reserved

    def symbol(self, symbol: str) -> SymbolFigures:
        return self.symbols.get(symbol, SymbolFigures(ZERO, ZERO))


class SharedBudget:
    """This process's handle on the shared budget. The ``*_sync`` methods
    block (run them in a thread: :meth:`call` does); the process keeps a
    mirror of the reservations it holds so it can restore them if Redis
    loses them."""

    def __init__(
        self,
        conn: SharedConnection,
        limits: BudgetLimits | None = None,
        *,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, not {lease!r}")
        self.conn = conn
        self.limits = limits or BudgetLimits()
        self.lease = lease
        self.process = conn.config.process
        self.prefix = conn.config.prefix  # hash-tagged on a cluster
        self._scripts = {
            name: conn.client.register_script(text)
            for name, text in (
                ("reserve", _RESERVE),
                ("settle", _SETTLE),
                ("release", _RELEASE),
                ("heartbeat", _HEARTBEAT),
                ("sweep", _SWEEP),
                ("restore", _RESTORE),
                ("withdraw", _WITHDRAW),
            )
        }
        self._route = f"{self.prefix}:budget:res"
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, int]] = {}  # order id -> (symbol, units left)
        self.available = False  # the last call reached Redis
        self.last_error = ""
        self.failed_at: float | None = None  # time.monotonic() of the last failure

    @property
    def lease_ms(self) -> str:
        return str(max(1, int(self.lease * 1000)))

    @property
    def held(self) -> dict[str, tuple[str, int]]:
        """A copy of the reservations this process holds (order id -> symbol, units)."""
        with self._lock:
            return dict(self._held)

    def _eval(self, name: str, argv: list[str]) -> Any:
        def go(_: redis.Redis) -> Any:
            # The one key names the slot: on a cluster the script runs on the
            # node that holds every key of the namespace (one hash tag).
            return self._scripts[name](keys=[self._route], args=[self.prefix, *argv])

        try:
            answer = self.conn.run(go)
        except SharedUnavailable as exc:
            self._failed(exc)
            raise
        self.available = True
        self.failed_at = None
        return answer

    def _failed(self, exc: SharedUnavailable) -> None:
        self.available = False
        self.last_error = str(exc)
        self.failed_at = time.monotonic()

    # -- the scripts -------------------------------------------------------

    def reserve_sync(
        self, order_id: str, symbol: str, notional: Decimal, equity: Decimal | None = None
    ) -> ReserveResult:
        units = to_units(notional, up=True)
        eq = "" if equity is None else str(max(0, to_units(equity)))
        ok, code, used, used_sym, total_eq = self._eval(
            "reserve",
            [self.process, order_id, symbol, str(units), *self.limits.argv(), self.lease_ms, eq],
        )
        result = ReserveResult(
            bool(ok), str(code), from_units(used), from_units(used_sym), from_units(total_eq)
        )
        if result.code == "ok":
            with self._lock:
                self._held[order_id] = (symbol, units)
        return result

    def settle_sync(
        self, order_id: str, symbol: str, filled: Decimal, position: Decimal | None
    ) -> Decimal:
        """A fill of ``filled`` notional; ``position`` = this process's
        position notional in the symbol now (None: leave it). Returns what is
        still reserved for the order."""
        pos = "" if position is None else str(to_units(abs(position)))
        left = int(
            self._eval("settle", [self.process, order_id, symbol, str(to_units(filled)), pos])
        )
        with self._lock:
            if left > 0 and order_id in self._held:
                self._held[order_id] = (symbol, left)
            else:
                self._held.pop(order_id, None)
        return from_units(left)

    def release_sync(self, order_id: str) -> Decimal:
        released = int(self._eval("release", [order_id]))
        with self._lock:
            self._held.pop(order_id, None)
        return from_units(released)

    def heartbeat_sync(self, equity: Decimal | None = None) -> bool:
        """Refresh the lease. False when Redis had no heartbeat of ours (the
        lease expired or Redis restarted empty): then :meth:`restore_sync`."""
        eq = "" if equity is None else str(max(0, to_units(equity)))
        return bool(self._eval("heartbeat", [self.process, self.lease_ms, eq]))

    def restore_sync(self, equity: Decimal | None, positions: Mapping[str, Decimal]) -> int:
        """Put this process's reservations and position notionals back.
        Returns how many reservations Redis did not have."""
        eq = "" if equity is None else str(max(0, to_units(equity)))
        held = self.held
        argv = [self.process, self.lease_ms, eq, str(len(held))]
        for cid, (symbol, units) in held.items():
            argv += [cid, symbol, str(units)]
        for symbol, notional in positions.items():
            argv += [symbol, str(to_units(abs(notional)))]
        return int(self._eval("restore", argv))

    def sweep_sync(self) -> tuple[int, int]:
        """Release reservations of processes whose lease expired: (processes, reservations)."""
        swept, released = self._eval("sweep", [])
        return int(swept), int(released)

    def withdraw_sync(self) -> int:
        """This process stops: remove its reservations, exposure and lease."""
        released = int(self._eval("withdraw", [self.process]))
        with self._lock:
            self._held.clear()
        return released

    def figures_sync(self) -> SharedFigures:
        def read(client: redis.Redis) -> list[Any]:
            pipe = client.pipeline(transaction=True)
            pipe.hgetall(f"{self.prefix}:budget:reserved")
            pipe.hgetall(f"{self.prefix}:budget:exposed")
            pipe.hvals(f"{self.prefix}:budget:equity")
            pipe.scard(f"{self.prefix}:procs")
            return pipe.execute()

        try:
            reserved, exposed, equities, procs = self.conn.run(read)
        except SharedUnavailable as exc:
            self._failed(exc)
            raise
        self.available = True
        self.failed_at = None
        symbols = {
            s: SymbolFigures(from_units(exposed.get(s, 0)), from_units(reserved.get(s, 0)))
            for s in (set(reserved) | set(exposed)) - {"total"}
        }
        return SharedFigures(
            exposure=from_units(exposed.get("total", 0)),
            reserved=from_units(reserved.get("total", 0)),
            equity=sum((from_units(v) for v in equities), ZERO),
            processes=int(procs),
            symbols=symbols,
            taken_at=time.monotonic(),
        )

    # -- async wrappers ------------------------------------------------------

    async def reserve(
        self, order_id: str, symbol: str, notional: Decimal, equity: Decimal | None = None
    ) -> ReserveResult:
        return await trio.to_thread.run_sync(
            self.reserve_sync, order_id, symbol, notional, equity, limiter=self.conn.limiter
        )

    async def settle(
        self, order_id: str, symbol: str, filled: Decimal, position: Decimal | None
    ) -> Decimal:
        return await trio.to_thread.run_sync(
            self.settle_sync, order_id, symbol, filled, position, limiter=self.conn.limiter
        )

    async def release(self, order_id: str) -> Decimal:
        return await trio.to_thread.run_sync(self.release_sync, order_id, limiter=self.conn.limiter)

    async def figures(self) -> SharedFigures:
        return await trio.to_thread.run_sync(self.figures_sync, limiter=self.conn.limiter)


_REASONS = {
    "exposure": "shared exposure limit: {used:,.2f} in use across processes + {notional:,.2f} "
    "for this order > {limit:,.2f}",
    "symbol": "shared {symbol} limit: {used_symbol:,.2f} in use across processes + "
    "{notional:,.2f} for this order > {limit:,.2f}",
    "leverage": "shared leverage limit: {used:,.2f} in use across processes + {notional:,.2f} "
    "for this order > {limit}x the shared equity {equity:,.2f}",
}


class SharedBudgetCheck(AsyncRiskCheck):
    """The gate's check: reserve the order's notional in the shared budget,
    or refuse it. Reduce-only orders pass without a reservation (they only
    take risk off). Redis unreachable: refused, naming Redis (fail closed)."""

    name = "shared-budget"

    def __init__(self, budget: SharedBudget, *, retry_after: float = 0.5) -> None:
        self.budget = budget
        # After a failure, orders within this many seconds are refused without
        # asking Redis again: an unreachable host must not cost every order a
        # connect timeout. The session's heartbeat keeps probing meanwhile.
        self.retry_after = retry_after

    async def check(self, order: Order, portfolio: Portfolio) -> Rejected | None:
        if order.reduce_only:
            return None
        failed_at = self.budget.failed_at
        if failed_at is not None and time.monotonic() - failed_at < self.retry_after:
            return Rejected(
                rule=self.name,
                reason="shared risk budget unavailable, new orders refused: "
                f"{self.budget.last_error}",
                order=order,
            )
        price = order.price if order.price is not None else portfolio.mark(order.symbol)
        if price <= 0:
            return Rejected(
                rule=self.name,
                reason=f"no price to value {order.symbol} for the shared budget",
                order=order,
            )
        notional = order.qty * price
        try:
            result = await self.budget.reserve(
                order.client_order_id, order.symbol, notional, portfolio.equity
            )
        except SharedUnavailable as exc:
            return Rejected(
                rule=self.name,
                reason=f"shared risk budget unavailable, new orders refused: {exc}",
                order=order,
            )
        if result.ok:
            return None
        limits = self.budget.limits
        limit = {
            "exposure": limits.max_exposure,
            "symbol": limits.max_symbol_exposure,
            "leverage": limits.max_leverage,
        }.get(result.code)
        template = _REASONS.get(result.code, "shared budget refused the order ({code})")
        values = {
            "used": result.used,
            "used_symbol": result.used_symbol,
            "equity": result.equity,
            "notional": notional,
            "limit": limit if limit is not None else ZERO,
            "symbol": order.symbol,
            "code": result.code,
        }
        return Rejected(
            rule=self.name,
            reason=template.format(**values),
            values={k: str(v) for k, v in values.items()},
            order=order,
        )
