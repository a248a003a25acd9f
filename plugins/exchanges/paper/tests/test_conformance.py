"""The paper exchange passes the conformance kit it is the reference for."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from bot4_paper import PaperEngine, PaperExchange
from bot4_paper.margin_book import MarketMargin

from bot4.model import MarketData
from bot4.testing import ExchangeSuite


class TestPaperConformance(ExchangeSuite):
    factory = PaperExchange


def _funded(feed: Iterable[MarketData]) -> PaperExchange:
    """The paper venue with funding (0.01% per 8 h on every perpetual), so the
    funding check sees payments, not only their absence."""
    return PaperExchange(
        feed, PaperEngine(margin={"*": MarketMargin(funding_rate=Decimal("0.0001"))})
    )


class TestPaperFundedConformance(ExchangeSuite):
    factory = _funded
