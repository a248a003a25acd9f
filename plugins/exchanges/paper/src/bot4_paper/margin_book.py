"""The paper venue's margin account: per-symbol leverage and margin mode,
collateral added to isolated positions, funding and liquidation thresholds,
on top of :mod:`bot4.margin` (the model the ccxt fake venues share).

A market is **spot** or **perp** (:class:`MarketMargin`; a ``-PERP`` symbol is
a perpetual, other symbols are perpetual-style unless configured ``type:
spot``, which is what the paper venue has always done for the demo's
``BTC-USDT``). Spot has spot semantics: leverage 1, no selling more than is
held, no funding, no liquidation.

For a perpetual position (one-way mode, USDT-margined, linear):

* **Collateral** (isolated) is the initial margin ``|q| E / leverage`` booked
  by the fills plus what :meth:`MarginBook.add` moved into it from the free
  balance; it returns to the free balance when the position closes.
* **Mark** is the ``mark`` of the symbol's last tick when the data carries
  one (a ``mark`` column), else its mid.
* **Liquidation price**: :func:`bot4.margin.liquidation_price` for the
  market's tier table, from the collateral (isolated) or from the cross
  wallet (cross: the cash less the collateral of isolated positions, less the
  other cross positions' maintenance margin plus their unrealised PnL,
  Binance's formula for one cross position). Isolated thresholds are cached
  per position and recomputed on a fill or a margin change; a cross
  position's is reported (:meth:`MarginBook.state`) but not what liquidates it.
* **Cross liquidation is by account** (:meth:`MarginBook.cross_account`):
  the cross margin balance is the cash less the isolated positions'
  collateral plus the unrealised PnL of every cross position at its mark;
  when it falls to the sum of the cross positions' maintenance margins (each
  by its tier at its mark), the venue closes cross positions, largest
  unrealised loss first, each at its mark with the liquidation fee, until the
  balance is above what the remaining ones need (as Binance's cross margin
  ratio reaching 100%). Two cross positions can so be liquidated together
  although neither is past the price its own collateral would give it.
* **Funding** at the funding times (every 8 h from 00:00 UTC): the wallet
  moves by ``-q * mark * rate``, rounded to the currency's 1e-8 against the
  account (:func:`bot4.margin.funding_due`), at the latest funding rate a tick
  of the symbol carried before that time (:attr:`MarginBook.rates`, from a
  ``funding_rate`` column), else the market's configured ``funding_rate``.
  What each open position paid is kept too (``MarginState.funding_paid``,
  the risk fact ``position.funding_paid``) and forgotten when it closes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs

from bot4.margin import DEFAULT_TIERS, Tier, liquidation_price, maintenance_margin, tier_of
from bot4.model import ZERO, Position

__all__ = ["CROSS", "ISOLATED", "MODES", "SPOT", "MarginBook", "MarginState", "MarketMargin"]

ISOLATED = "isolated"
CROSS = "cross"
MODES = (ISOLATED, CROSS)
PERP_SUFFIX = "-PERP"
FUNDING_STEP = Decimal("0.00000001")


@attrs.frozen
class MarketMargin:
    """How one market is margined: ``kind`` is ``"spot"`` or ``"perp"``;
    ``tiers`` the maintenance-margin brackets; ``funding_rate`` per 8 h."""

    kind: str = "perp"
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    funding_rate: Decimal = ZERO

    @property
    def spot(self) -> bool:
        return self.kind == "spot"


DEFAULT_MARGIN = MarketMargin()
SPOT = MarketMargin("spot")


@attrs.frozen
class MarginState:
    """One position's margin as the venue computes it (see the module docstring)."""

    symbol: str
    mode: str
    leverage: Decimal
    collateral: Decimal  # isolated: initial margin plus added; cross: the cross wallet
    added: Decimal
    mark: Decimal
    maintenance: Decimal
    liquidation_price: Decimal | None
    margin_ratio: Decimal | None  # maintenance / equity of the position (>= 1: liquidated)
    funding_paid: Decimal = ZERO  # funding the open position paid so far (negative: received)


class MarginBook:
    """Leverage, mode and added collateral per symbol (the engine owns one)."""

    def __init__(self, markets: Mapping[str, MarketMargin] | None = None) -> None:
        self.markets: dict[str, MarketMargin] = dict(markets or {})
        self.leverage: dict[str, Decimal] = {}
        self.mode: dict[str, str] = {}
        self.added: dict[str, Decimal] = {}
        self.added_total = ZERO
        self.funding_paid = ZERO  # what funding took from the wallet (negative: received)
        self.funding_events = 0
        # What each open position paid in funding (negative: received).
        self.position_funding: dict[str, Decimal] = {}
        self.liquidations: list[str] = []  # client ids of the venue's liquidation orders
        # Isolated liquidation thresholds by symbol: (price, long) or None.
        self._threshold: dict[str, tuple[Decimal, bool] | None] = {}
        self.next_funding: datetime | None = None
        # The latest funding rate the data gave each symbol (it overrides the
        # configured one from the next funding time on).
        self.rates: dict[str, Decimal] = {}

    def of(self, symbol: str) -> MarketMargin:
        spec = self.markets.get(symbol)
        if spec is not None:
            return spec
        # "*": the spec of every market not named (the exchange's config
        # reader puts the top-level funding rate there).
        return self.markets.get("*", DEFAULT_MARGIN)

    def mode_of(self, symbol: str) -> str:
        return self.mode.get(symbol, ISOLATED)

    @property
    def funded(self) -> bool:
        """Whether any market pays funding (else the engine skips the check
        until a tick carries a funding rate)."""
        return bool(self.rates) or any(m.funding_rate for m in self.markets.values() if not m.spot)

    def add(self, symbol: str, amount: Decimal) -> None:
        self.added[symbol] = self.added.get(symbol, ZERO) + amount
        self.added_total += amount
        self._threshold.pop(symbol, None)

    def pay_funding(self, symbol: str, paid: Decimal) -> None:
        """The position in ``symbol`` paid ``paid`` of funding (negative: received)."""
        self.funding_paid += paid
        self.funding_events += 1
        self.position_funding[symbol] = self.position_funding.get(symbol, ZERO) + paid

    def release(self, symbol: str) -> None:
        """The position closed: its added collateral is free again."""
        self.added_total -= self.added.pop(symbol, ZERO)
        self.position_funding.pop(symbol, None)
        self._threshold.pop(symbol, None)

    def changed(self, symbol: str) -> None:
        self._threshold.pop(symbol, None)

    def collateral(self, position: Position) -> Decimal:
        return position.margin() + self.added.get(position.symbol, ZERO)

    def cross_wallet(
        self,
        symbol: str,
        cash: Decimal,
        positions: Sequence[Position],
        marks: Mapping[str, Decimal],
    ) -> Decimal:
        wallet = cash
        for other in positions:
            if other.symbol == symbol or self.of(other.symbol).spot:
                continue
            if self.mode_of(other.symbol) == ISOLATED:
                wallet -= self.collateral(other)
                continue
            mark = marks.get(other.symbol, other.entry_price)
            wallet -= maintenance_margin(other.qty, mark, self.of(other.symbol).tiers)
            wallet += other.unrealized_pnl(mark)
        return wallet

    def cross_account(
        self,
        cash: Decimal,
        positions: Sequence[Position],
        marks: Mapping[str, Decimal],
    ) -> tuple[Decimal, Decimal, list[Position]]:
        """The cross margin balance (cash less isolated collateral plus the
        cross positions' unrealised PnL at ``marks``), the sum of the cross
        positions' maintenance margins, and those positions: the account is
        liquidated when the first is at or below the second."""
        balance = cash
        maintenance = ZERO
        cross: list[Position] = []
        for position in positions:
            symbol = position.symbol
            spec = self.of(symbol)
            if spec.spot:
                continue
            if self.mode_of(symbol) == ISOLATED:
                balance -= self.collateral(position)
                continue
            mark = marks.get(symbol, position.entry_price)
            balance += position.unrealized_pnl(mark)
            maintenance += maintenance_margin(position.qty, mark, spec.tiers)
            cross.append(position)
        return balance, maintenance, cross

    def cached(self, symbol: str) -> tuple[Decimal, bool] | bool | None:
        """An isolated position's cached threshold, or False (not cached, or cross)."""
        if self.mode.get(symbol) == CROSS:
            return False
        return self._threshold.get(symbol, False)

    def threshold(
        self, position: Position, wallet: Decimal | None = None
    ) -> tuple[Decimal, bool] | None:
        """The liquidation price of ``position`` and whether it is long; an
        isolated one's is cached, a cross one's needs ``wallet``."""
        symbol = position.symbol
        cross = self.mode_of(symbol) == CROSS
        if not cross and symbol in self._threshold:
            return self._threshold[symbol]
        collateral = wallet if cross and wallet is not None else self.collateral(position)
        price = liquidation_price(
            position.qty, position.entry_price, collateral, self.of(symbol).tiers
        )
        out = None if price is None else (price, position.qty > 0)
        if not cross:
            self._threshold[symbol] = out
        return out

    def state(self, position: Position, mark: Decimal, wallet: Decimal | None) -> MarginState:
        symbol = position.symbol
        table = self.of(symbol).tiers
        cross = self.mode_of(symbol) == CROSS
        collateral = wallet if cross and wallet is not None else self.collateral(position)
        mm = maintenance_margin(position.qty, mark, table)
        equity = collateral + position.unrealized_pnl(mark)
        threshold = self.threshold(position, wallet)
        return MarginState(
            symbol=symbol,
            mode=self.mode_of(symbol),
            leverage=position.leverage,
            collateral=collateral,
            added=self.added.get(symbol, ZERO),
            mark=mark,
            maintenance=mm,
            liquidation_price=None if threshold is None else threshold[0],
            margin_ratio=mm / equity if equity > 0 else None,
            funding_paid=self.position_funding.get(symbol, ZERO),
        )

    def dump(self) -> dict[str, Any]:
        """The account's state as JSON-able values (the durable venue's file)."""
        return {
            "leverage": {k: str(v) for k, v in self.leverage.items()},
            "mode": dict(self.mode),
            "added": {k: str(v) for k, v in self.added.items()},
            "funding_paid": str(self.funding_paid),
            "funding_events": self.funding_events,
            "position_funding": {k: str(v) for k, v in self.position_funding.items()},
            "liquidations": list(self.liquidations),
            "next_funding": None if self.next_funding is None else self.next_funding.isoformat(),
            "rates": {k: str(v) for k, v in self.rates.items()},
        }

    def load(self, raw: Mapping[str, Any]) -> None:
        """Restore what :meth:`dump` wrote."""
        self.leverage = {str(k): Decimal(v) for k, v in raw["leverage"].items()}
        self.mode = {str(k): str(v) for k, v in raw["mode"].items()}
        self.added = {str(k): Decimal(v) for k, v in raw["added"].items()}
        self.added_total = sum(self.added.values(), ZERO)
        self.funding_paid = Decimal(raw["funding_paid"])
        self.funding_events = int(raw["funding_events"])
        # Absent in a file written before positions kept their funding.
        held = raw.get("position_funding") or {}
        self.position_funding = {str(k): Decimal(v) for k, v in held.items()}
        self.liquidations = [str(c) for c in raw["liquidations"]]
        due = raw["next_funding"]
        self.next_funding = None if due is None else datetime.fromisoformat(due)
        # A state file written before funding rates came from the data has none.
        self.rates = {str(k): Decimal(v) for k, v in raw.get("rates", {}).items()}
        self._threshold.clear()

    def max_leverage(self, symbol: str) -> Decimal:
        return tier_of(ZERO, self.of(symbol).tiers).max_leverage
