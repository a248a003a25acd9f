"""The facts rule files can name: their names, kinds, stages and meaning.

Three kinds of evaluation ("stages"), each with its own facts:

* ``order`` — pre-trade, in :meth:`RiskPolicy.check_order`;
* ``tick``  — an open position on a price update, in ``on_market_data``;
* ``fill``  — one of our fills, in ``on_fill`` (stop-out counting).

:data:`BUILTIN_FACTS` is the catalogue the compiler checks a rule's facts
against (a fact of another stage, or a misspelt one, is a ``file:line``
error), that ``bot4 rules facts`` prints and that the scenario tests fill
in. The sets after it name the facts that are built only when a stage's
rules read one. How each fact is built from bot4's types, and converted for
the engine, is :mod:`bot4.risk.facts`, which re-exports all of this.

This module imports only the rule language's kinds (:mod:`bot4.risk.expr`).
"""

from __future__ import annotations

from decimal import Decimal

import attrs

from bot4.risk.expr import BOOL, NUMBER, STRING

__all__ = [
    "BUILTIN_FACTS",
    "CONTEXT_FACTS",
    "FILL",
    "LIQUIDATION_FACTS",
    "MARGIN_FACTS",
    "NO_BALANCE_MARGIN_RATIO",
    "NO_EQUITY_LEVERAGE",
    "ORDER",
    "STAGES",
    "TICK",
    "FactSpec",
]

ORDER = "order"
TICK = "tick"
FILL = "fill"
STAGES = (ORDER, TICK, FILL)

# With no equity every exposure is unbounded leverage; the engine cannot take
# infinity, so this large finite stand-in is used (it is below MAX_MAGNITUDE).
NO_EQUITY_LEVERAGE = 1e12
# The margin ratio of a position whose margin balance is gone (zero or less):
# infinite, so the same kind of large finite stand-in.
NO_BALANCE_MARGIN_RATIO = Decimal(10**12)


@attrs.frozen(slots=True)
class FactSpec:
    """One fact of the catalogue: its name, its kind (the rule language's
    NUMBER, BOOL or STRING), the stages whose rules may read it, and what it
    means (as ``bot4 rules facts`` prints it)."""

    name: str
    kind: str
    stages: frozenset[str]
    doc: str


_ALL = frozenset(STAGES)
_O = frozenset({ORDER})
_T = frozenset({TICK})
_F = frozenset({FILL})
_OT = frozenset({ORDER, TICK})

BUILTIN_FACTS: dict[str, FactSpec] = {
    spec.name: spec
    for spec in [
        FactSpec("order.symbol", STRING, _O, 'the order\'s symbol, e.g. "ETH-USDT"'),
        FactSpec(
            "order.exchange",
            STRING,
            _O,
            'the venue quoting the symbol (its market data\'s exchange), "" when unknown',
        ),
        FactSpec("order.type", STRING, _O, '"market", "limit", "stop_loss", "take_profit"'),
        FactSpec("order.qty", NUMBER, _O, "order quantity"),
        FactSpec("order.price", NUMBER, _O, "entry price: the order's price, else the market mid"),
        FactSpec("order.notional", NUMBER, _O, "qty x entry price"),
        FactSpec("order.side", STRING, _O, '"buy" or "sell"'),
        FactSpec("order.leverage", NUMBER, _O, "leverage the order asks for"),
        FactSpec("order.has_stop_loss", BOOL, _O, "the order carries a stop loss"),
        FactSpec("order.stop_loss", NUMBER, _O, "stop-loss price, 0 when none"),
        FactSpec("order.reduce_only", BOOL, _O, "flagged reduce-only"),
        FactSpec(
            "order.reducing",
            BOOL,
            _O,
            "reduce-only, or against the open position and no larger than it",
        ),
        FactSpec("portfolio.cash", NUMBER, _ALL, "cash balance"),
        FactSpec("portfolio.equity", NUMBER, _ALL, "cash + unrealised PnL"),
        FactSpec("portfolio.peak_equity", NUMBER, _ALL, "high-water mark of equity"),
        FactSpec("portfolio.drawdown", NUMBER, _ALL, "(peak - equity) / peak, 0 when peak <= 0"),
        FactSpec("portfolio.gross_exposure", NUMBER, _ALL, "sum of |qty| x mark over positions"),
        FactSpec("portfolio.free_margin", NUMBER, _ALL, "equity - initial margin of positions"),
        FactSpec("portfolio.open_positions", NUMBER, _ALL, "number of open positions"),
        FactSpec(
            "portfolio.realized_pnl_today",
            NUMBER,
            _ALL,
            "realised PnL minus fees of today's fills (UTC day of the event time)",
        ),
        FactSpec(
            "portfolio.daily_loss",
            NUMBER,
            _ALL,
            "today's loss: -(realized_pnl_today + unrealised PnL of open positions), "
            "0 when that is a gain",
        ),
        FactSpec(
            "portfolio.losing_streak",
            NUMBER,
            _ALL,
            "fills in a row that closed (part of) a position at a loss; a profit resets it",
        ),
        FactSpec(
            "portfolio.gross_after",
            NUMBER,
            _O,
            "gross exposure if the order filled at its entry price",
        ),
        FactSpec(
            "portfolio.leverage_after",
            NUMBER,
            _O,
            f"gross_after / equity ({NO_EQUITY_LEVERAGE:g} when equity <= 0 and exposure > 0)",
        ),
        FactSpec("position.qty", NUMBER, _OT, "signed quantity held in the symbol (long > 0)"),
        FactSpec(
            "position.qty_along",
            NUMBER,
            _O,
            "position quantity in the order's direction (negative when opposite)",
        ),
        FactSpec("position.notional", NUMBER, _OT, "|qty| x mark"),
        FactSpec(
            "position.notional_after",
            NUMBER,
            _O,
            "|position after the order| x entry price",
        ),
        FactSpec("position.entry_price", NUMBER, _OT, "average entry price, 0 when flat"),
        FactSpec("position.leverage", NUMBER, _T, "leverage of the open position"),
        FactSpec(
            "position.margin",
            NUMBER,
            _OT,
            "margin held by the open position: the venue's figure when it reports one "
            "(isolated: initial margin plus what was added), else the initial margin "
            "|qty| x entry / leverage; 0 when flat",
        ),
        FactSpec(
            "position.margin_ratio",
            NUMBER,
            _OT,
            "maintenance margin / margin balance of the open position at market.mark "
            "(or at market.mid if that is higher; 1 or more: liquidated); maintenance at "
            "the venue's rate when reported, else "
            "maintenance_margin_rate; balance = the venue's (isolated collateral, cross "
            f"wallet) else position.margin, plus unrealised PnL; {NO_BALANCE_MARGIN_RATIO:.0e} "
            "when that balance is not positive; 0 when flat",
        ),
        FactSpec(
            "position.funding_paid",
            NUMBER,
            _OT,
            "funding the open position paid so far (negative: received), as the venue "
            "reports it; 0 when flat or not reported",
        ),
        FactSpec(
            "position.age_seconds",
            NUMBER,
            _OT,
            "event time since the position in the symbol opened, 0 when flat",
        ),
        FactSpec("market.available", BOOL, _OT, "a quote for the symbol is known"),
        FactSpec("market.bid", NUMBER, _OT, "best bid, 0 when unknown"),
        FactSpec("market.ask", NUMBER, _OT, "best ask, 0 when unknown"),
        FactSpec("market.last", NUMBER, _OT, "last trade, 0 when unknown"),
        FactSpec("market.mid", NUMBER, _OT, "(bid + ask) / 2, 0 when unknown"),
        FactSpec(
            "market.mark",
            NUMBER,
            _OT,
            "mark price: the venue's (as last reported for the held position, carried by the "
            "mid's move since) when reported, else market.mid; 0 when unknown",
        ),
        FactSpec("breaker.tripped", BOOL, _ALL, "the circuit breaker is tripped"),
        FactSpec(
            "liquidation.price",
            NUMBER,
            _OT,
            "liquidation price (order: of the new position at entry, isolated formula; "
            "tick: of the open position, the venue's when it reports one, else the formula)",
        ),
        FactSpec(
            "liquidation.distance",
            NUMBER,
            _OT,
            "(price - liquidation) / price for a long, (liquidation - price) / price for "
            "a short, 0 at or past the liquidation price (order: at entry; tick: at the "
            "last price)",
        ),
        FactSpec("fill.qty", NUMBER, _F, "filled quantity"),
        FactSpec("fill.price", NUMBER, _F, "fill price"),
        FactSpec("fill.notional", NUMBER, _F, "qty x price"),
        FactSpec("fill.side", STRING, _F, '"buy" or "sell"'),
        FactSpec("fill.stop_out", BOOL, _F, "the fill closed a position at its stop loss"),
        FactSpec("time.hour", NUMBER, _ALL, "hour of the event time, UTC (0-23)"),
        FactSpec("time.minute", NUMBER, _ALL, "minute of the event time (0-59)"),
        FactSpec(
            "time.weekday",
            NUMBER,
            _ALL,
            "day of the week of the event time, UTC (0 Monday - 6 Sunday)",
        ),
    ]
}

# Facts of the event's time and the book's activity: built only for a stage
# whose rules read one (context_facts), not on every evaluation.
CONTEXT_FACTS = frozenset(
    {
        "time.hour",
        "time.minute",
        "time.weekday",
        "portfolio.open_positions",
        "portfolio.realized_pnl_today",
        "portfolio.daily_loss",
        "portfolio.losing_streak",
        "position.age_seconds",
    }
)
LIQUIDATION_FACTS = frozenset(
    {"liquidation.price", "liquidation.distance", "position.margin_ratio"}
)
# Facts of the held position's margin account: built only for a stage whose
# rules read one (margin_facts). position.margin_ratio needs the rules'
# maintenance_margin_rate when the venue reports no rate, so it is one of
# LIQUIDATION_FACTS too (a rule reading it needs the setting).
MARGIN_FACTS = frozenset(
    {"position.margin", "position.margin_ratio", "position.funding_paid", "market.mark"}
)
