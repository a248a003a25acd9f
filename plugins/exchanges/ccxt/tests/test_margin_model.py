"""The fake venues' linear-perpetual margin model (bot4_ccxt.margin)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bot4_ccxt.margin import (
    DEFAULT_TIERS,
    MarginPositionModel,
    Tier,
    funding_payment,
    funding_times,
    liquidation_price,
    maintenance_margin,
    tier_of,
    tiers,
)

D = Decimal


def test_default_first_tier_is_half_a_percent() -> None:
    assert tier_of(D(10_000)).rate == D("0.005")
    assert maintenance_margin(D(1), D(10_000)) == D(50)


@pytest.mark.parametrize("tier", DEFAULT_TIERS[:-1])
def test_maintenance_margin_is_continuous_across_tiers(tier: Tier) -> None:
    assert tier.cap is not None
    cap = tier.cap
    below = maintenance_margin(D(1), cap)
    above = maintenance_margin(D(1), cap + D("0.000001"))
    assert abs(above - below) < D("0.001")


def test_tier_caps_must_grow() -> None:
    with pytest.raises(ValueError, match="grow"):
        tiers([(100, "0.01", 10), (50, "0.02", 5)])


def _equity_is_maintenance(pos: MarginPositionModel, price: Decimal) -> None:
    equity = pos.collateral + pos.unrealized(price)
    assert abs(equity - pos.maintenance(price)) < D("0.0000001")
    assert pos.liquidated(price - D(1).copy_sign(pos.qty) * D("0.01"))
    assert not pos.liquidated(price + D(1).copy_sign(pos.qty) * D("0.01"))


def test_isolated_long_liquidation_price() -> None:
    pos = MarginPositionModel.opened(D(1), D(50_000), D(10))
    assert pos.collateral == D(5000)
    lp = pos.liquidation_price()
    assert lp is not None
    assert lp.quantize(D("0.01")) == D("45226.13")  # (5000 - 50000) / (0.005 - 1)
    _equity_is_maintenance(pos, lp)


def test_isolated_short_picks_the_tier_of_its_own_notional() -> None:
    pos = MarginPositionModel.opened(D(-1), D(50_000), D(10))
    lp = pos.liquidation_price()
    assert lp is not None
    # The first tier's price (54726) is above its 50 000 cap: the second tier's is taken.
    assert lp.quantize(D("0.01")) == D("54702.97")  # (5000 + 250 + 50000) / (0.01 + 1)
    assert tier_of(lp).rate == D("0.01")
    _equity_is_maintenance(pos, lp)


def test_add_margin_moves_the_liquidation_price_away() -> None:
    long = MarginPositionModel.opened(D("0.5"), D(60_000), D(20))
    before = long.liquidation_price()
    long.add_margin(D(500))
    after = long.liquidation_price()
    assert before is not None
    assert after is not None
    assert after < before
    short = MarginPositionModel.opened(D("-0.5"), D(60_000), D(20))
    s_before = short.liquidation_price()
    short.add_margin(D(500))
    s_after = short.liquidation_price()
    assert s_before is not None
    assert s_after is not None
    assert s_after > s_before
    with pytest.raises(ValueError, match="positive"):
        long.add_margin(D(0))


def test_fully_collateralised_long_is_never_liquidated() -> None:
    pos = MarginPositionModel.opened(D(1), D(100), D(1))
    assert pos.liquidation_price() is None  # collateral 100 covers the whole notional
    assert not pos.liquidated(D("0.01"))


def test_cross_uses_the_wallet() -> None:
    pos = MarginPositionModel(D(1), D(50_000), D(10), mode="cross")
    with pytest.raises(ValueError, match="wallet"):
        pos.liquidation_price()
    thin, thick = pos.liquidation_price(D(5000)), pos.liquidation_price(D(20_000))
    assert thin is not None
    assert thick is not None
    assert thick < thin
    assert thin == liquidation_price(D(1), D(50_000), D(5000))


def test_margin_ratio_reaches_one_at_liquidation() -> None:
    pos = MarginPositionModel.opened(D(2), D(30_000), D(25))
    lp = pos.liquidation_price()
    assert lp is not None
    ratio = pos.margin_ratio(lp)
    assert ratio is not None
    assert abs(ratio - 1) < D("0.0000001")
    healthy = pos.margin_ratio(D(30_000))
    assert healthy is not None
    assert healthy < 1


def test_funding_times_and_payment() -> None:
    after = datetime(2024, 3, 1, 7, 59, tzinfo=UTC)
    until = datetime(2024, 3, 2, 0, 0, tzinfo=UTC)
    assert [t.hour for t in funding_times(after, until)] == [8, 16, 0]
    assert list(funding_times(until, until)) == []  # a time is paid once
    # Fewer than one time when the window holds none (a time is paid once).
    assert funding_payment(D(2), D(100), D("0.0001")) == D("-0.0200")  # a long pays
    assert funding_payment(D(-2), D(100), D("0.0001")) == D("0.0200")  # a short receives
    assert funding_payment(D(2), D(100), D("-0.0001")) == D("0.0200")
