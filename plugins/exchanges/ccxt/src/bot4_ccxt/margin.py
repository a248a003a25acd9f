"""The fake venues' margin model: :mod:`bot4.margin`, shared with the paper
venue (kept under this name for the plugin's callers)."""

from __future__ import annotations

from bot4.margin import (
    DEFAULT_TIERS,
    FUNDING_INTERVAL,
    MarginPositionModel,
    Tier,
    funding_payment,
    funding_times,
    liquidation_price,
    maintenance_margin,
    tier_of,
    tiers,
)

__all__ = [
    "DEFAULT_TIERS",
    "FUNDING_INTERVAL",
    "MarginPositionModel",
    "Tier",
    "funding_payment",
    "funding_times",
    "liquidation_price",
    "maintenance_margin",
    "tier_of",
    "tiers",
]
