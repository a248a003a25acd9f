"""The correlation pack passes the risk-rule conformance kit."""

from __future__ import annotations

from bot4_correlation import CorrelationPack

from bot4.testing import RiskRulesSuite


class TestCorrelationConformance(RiskRulesSuite):
    factory = CorrelationPack
