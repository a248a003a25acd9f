"""The paper exchange passes the conformance kit it is the reference for."""

from __future__ import annotations

from bot4_paper import PaperExchange

from bot4.testing import ExchangeSuite


class TestPaperConformance(ExchangeSuite):
    factory = PaperExchange
