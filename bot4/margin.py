"""The linear-perpetual margin model shared by the paper venue
(:mod:`bot4_paper.margin_book`) and the ccxt plugin's fake futures venues:
maintenance margin, liquidation price and funding of a position.

All money is Decimal, in the quote (settlement) currency; quantities are in
the base asset, signed (positive long). One-way mode (one net position per
symbol), USDT-margined, Binance-style.

**Maintenance margin** is tiered by the position's notional at the mark price
(:class:`Tier`, a Binance-style bracket table; the default first tier holds
0.5%): ``mm = notional * rate - cum`` where ``cum`` (Binance's "maintenance
amount") keeps ``mm`` continuous across tier boundaries.

**Liquidation price** of an isolated position with collateral ``W`` (the
margin in it), quantity ``q`` and entry ``E``, in the tier of rate ``r`` and
amount ``cum``: the price ``P`` where equity ``W + q (P - E)`` equals the
maintenance margin ``|q| P r - cum``::

    P = (W + cum - q E) / (|q| r - q)

The tier depends on ``|q| P``, so each tier's ``P`` is computed and the one
whose notional range holds its own ``P`` is taken. Cross margin uses the
same formula with ``W`` the account's wallet balance less the other
positions' maintenance margin plus their unrealised PnL (Binance's formula
for one cross position). A position whose ``P`` is not positive cannot be
liquidated (a long with collateral above its notional).

**Funding** is paid at the funding times (every ``interval``, default 8 h from
00:00 UTC): a long pays ``q * mark * rate`` to shorts when the rate is
positive (a short receives it), so the wallet moves by ``-q * mark * rate``.
The model returns the exact product.

**Rounding toward the safe side.** Everything here is exact Decimal
arithmetic; where a venue needs a price on its tick grid,
:func:`round_liquidation_price` moves a liquidation price *towards* the
current price (a long's up, a short's down), so a check against the rounded
price liquidates no later than the exact one and a risk rule measuring the
distance to it sees the position no safer than it is. :func:`funding_due`
rounds a payment to ``step`` against the account (what it pays rounds up,
what it receives rounds down).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import attrs

__all__ = [
    "DEFAULT_TIERS",
    "FUNDING_INTERVAL",
    "MarginPositionModel",
    "Tier",
    "funding_due",
    "funding_payment",
    "funding_times",
    "liquidation_price",
    "maintenance_margin",
    "next_funding_time",
    "round_liquidation_price",
    "tier_of",
    "tiers",
]

ZERO = Decimal(0)
FUNDING_INTERVAL = timedelta(hours=8)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@attrs.frozen
class Tier:
    """Positions with notional up to ``cap`` (None: no cap) hold ``rate`` of it
    as maintenance margin, less ``cum``; ``max_leverage`` caps their leverage."""

    cap: Decimal | None
    rate: Decimal
    max_leverage: Decimal
    cum: Decimal = ZERO


def tiers(rows: Sequence[tuple[Decimal | int | None, str, int]]) -> tuple[Tier, ...]:
    """A bracket table from (cap, rate, max leverage) rows, ``cum`` computed so
    the maintenance margin is continuous: ``cum_i = cum_{i-1} + floor_i * (r_i - r_{i-1})``."""
    out: list[Tier] = []
    floor, cum, prev = ZERO, ZERO, None
    for cap, rate, lev in rows:
        r = Decimal(rate)
        if prev is not None:
            cum += floor * (r - prev)
        capd = None if cap is None else Decimal(cap)
        if capd is not None and capd <= floor:
            raise ValueError(f"tier caps must grow: {capd} after {floor}")
        out.append(Tier(capd, r, Decimal(lev), cum))
        prev = r
        floor = capd if capd is not None else floor
    return tuple(out)


# A Binance-style table for BTCUSDT-like markets, first tier at 0.5%.
DEFAULT_TIERS = tiers(
    [
        (50_000, "0.005", 125),
        (250_000, "0.01", 100),
        (1_000_000, "0.025", 50),
        (10_000_000, "0.05", 20),
        (50_000_000, "0.1", 10),
        (None, "0.125", 5),
    ]
)


def tier_of(notional: Decimal, table: Sequence[Tier] = DEFAULT_TIERS) -> Tier:
    """The tier of a position of ``notional`` (its absolute value)."""
    n = abs(notional)
    for tier in table:
        if tier.cap is None or n <= tier.cap:
            return tier
    return table[-1]


def maintenance_margin(
    qty: Decimal, mark: Decimal, table: Sequence[Tier] = DEFAULT_TIERS
) -> Decimal:
    notional = abs(qty) * mark
    tier = tier_of(notional, table)
    return max(ZERO, notional * tier.rate - tier.cum)


def liquidation_price(
    qty: Decimal,
    entry: Decimal,
    collateral: Decimal,
    table: Sequence[Tier] = DEFAULT_TIERS,
) -> Decimal | None:
    """The mark price at which the position is liquidated (see the module
    docstring); None when flat or when no positive price liquidates it."""
    if qty == 0:
        return None
    size = abs(qty)
    floor = ZERO
    candidate: Decimal | None = None
    for tier in table:
        denom = size * tier.rate - qty
        if denom == 0:
            floor = tier.cap if tier.cap is not None else floor
            continue
        price = (collateral + tier.cum - qty * entry) / denom
        notional = size * price
        within = notional >= floor and (tier.cap is None or notional <= tier.cap)
        if price > 0 and within:
            return price
        if candidate is None and price > 0:
            candidate = price
        floor = tier.cap if tier.cap is not None else floor
    return candidate if candidate is not None and candidate > 0 else None


def funding_times(
    after: datetime, until: datetime, interval: timedelta = FUNDING_INTERVAL
) -> Iterator[datetime]:
    """Funding times ``after < t <= until``: multiples of ``interval`` from 00:00 UTC."""
    step = interval.total_seconds()
    n = int((after - _EPOCH).total_seconds() // step) + 1
    while True:
        t = _EPOCH + timedelta(seconds=n * step)
        if t > until:
            return
        yield t
        n += 1


def next_funding_time(after: datetime, interval: timedelta = FUNDING_INTERVAL) -> datetime:
    """The first funding time strictly after ``after``."""
    step = interval.total_seconds()
    n = int((after - _EPOCH).total_seconds() // step) + 1
    return _EPOCH + timedelta(seconds=n * step)


_FUNDING_NS = int(FUNDING_INTERVAL.total_seconds()) * 10**9


def next_funding_ns(now_ns: int) -> int:
    """:func:`next_funding_time` of ``now_ns``'s whole second, as integer ns
    since the epoch: the floor of the floor is the floor, so no datetime is
    built (the margin desk plans a read at each funding time)."""
    return (now_ns // _FUNDING_NS + 1) * _FUNDING_NS


def funding_payment(qty: Decimal, mark: Decimal, rate: Decimal) -> Decimal:
    """What the wallet gains at a funding time (negative: it pays)."""
    return -qty * mark * rate


def funding_due(qty: Decimal, mark: Decimal, rate: Decimal, step: Decimal) -> Decimal:
    """:func:`funding_payment` rounded to a multiple of ``step`` against the
    account: a payment (negative) rounds away from zero, a receipt towards it."""
    exact = funding_payment(qty, mark, rate)
    return (exact / step).to_integral_value(ROUND_FLOOR) * step


def round_liquidation_price(price: Decimal, qty: Decimal, increment: Decimal) -> Decimal:
    """A liquidation price on the ``increment`` grid, rounded towards the
    position's safe side: a long's (``qty > 0``) up, a short's down."""
    mode = ROUND_CEILING if qty > 0 else ROUND_FLOOR
    return (price / increment).to_integral_value(mode) * increment


@attrs.define
class MarginPositionModel:
    """One symbol's position as the model sees it."""

    qty: Decimal
    entry: Decimal
    leverage: Decimal
    mode: str = "isolated"  # or "cross"
    collateral: Decimal = ZERO  # isolated: the margin in the position
    table: Sequence[Tier] = DEFAULT_TIERS

    @classmethod
    def opened(
        cls, qty: Decimal, entry: Decimal, leverage: Decimal, mode: str = "isolated"
    ) -> MarginPositionModel:
        """A new position with the initial margin ``|q| E / leverage`` as collateral."""
        return cls(qty, entry, leverage, mode, abs(qty) * entry / leverage)

    def initial_margin(self) -> Decimal:
        return abs(self.qty) * self.entry / self.leverage

    def unrealized(self, mark: Decimal) -> Decimal:
        return self.qty * (mark - self.entry)

    def maintenance(self, mark: Decimal) -> Decimal:
        return maintenance_margin(self.qty, mark, self.table)

    def liquidation_price(self, wallet_for_cross: Decimal | None = None) -> Decimal | None:
        """Isolated: from the collateral. Cross: from ``wallet_for_cross`` (the
        wallet less the other positions' maintenance plus their unrealised PnL)."""
        if self.mode == "cross":
            if wallet_for_cross is None:
                raise ValueError("a cross position's liquidation price needs the wallet")
            return liquidation_price(self.qty, self.entry, wallet_for_cross, self.table)
        return liquidation_price(self.qty, self.entry, self.collateral, self.table)

    def margin_ratio(self, mark: Decimal) -> Decimal | None:
        """Maintenance margin over equity (1 or more: liquidated)."""
        equity = self.collateral + self.unrealized(mark)
        if equity <= 0:
            return None
        return self.maintenance(mark) / equity

    def liquidated(self, mark: Decimal) -> bool:
        """Isolated: equity at ``mark`` at or below its maintenance margin."""
        return self.collateral + self.unrealized(mark) <= self.maintenance(mark)

    def add_margin(self, amount: Decimal) -> None:
        if amount <= 0:
            raise ValueError("add_margin needs a positive amount")
        self.collateral += amount
