"""sma_cross passes the strategy conformance kit."""

from __future__ import annotations

from bot4_sma_cross import SmaCross

from bot4.testing import StrategySuite


def make() -> SmaCross:
    return SmaCross(fast=5, slow=20)


class TestSmaCrossConformance(StrategySuite):
    factory = make
