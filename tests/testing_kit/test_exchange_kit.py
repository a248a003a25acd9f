"""The exchange kit catches wrong exchanges with messages that say what to fix,
passes the reference, and skips what is not claimed with the reason."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import trio
from bot4_paper import PaperExchange

from bot4.testing import CHECKS, CheckSkipped, ConformanceError, ExchangeSuite, FeedHarness, Harness
from bot4.testing.exchange import run_check
from bot4.testing.harness import ExchangeFactory
from bot4.testing.stateful import check_against_reference
from tests.testing_kit import wrong


def run(name: str, make: Callable[[], Harness]) -> None:
    trio.run(run_check, CHECKS[name], make)


def feed(factory: ExchangeFactory) -> Callable[[], Harness]:
    return lambda: FeedHarness(factory)


class TestReferencePasses(ExchangeSuite):
    """The kit is validated against the paper exchange: everything it claims passes."""

    factory = PaperExchange


class TestNetworkedPasses(ExchangeSuite):
    """A correct venue behind a link that drops passes the disconnect check too."""

    def make_harness(self) -> Harness:
        return wrong.LinkHarness(wrong.Networked)


def test_retried_place_that_doubles_the_order_is_caught() -> None:
    with pytest.raises(ConformanceError) as caught:
        run("idempotent_place", feed(wrong.DoubleFill))
    message = str(caught.value)
    assert "client_order_id already used" in message
    assert "created a second order" in message
    assert "return the existing order's state" in message


def test_balance_that_ignores_fees_is_caught() -> None:
    with pytest.raises(ConformanceError) as caught:
        run("balance_fees", feed(wrong.FeeBlindBalance))
    message = str(caught.value)
    assert "The difference is exactly the fees" in message
    assert "charged the fee of every fill" in message


def test_bare_exception_on_rejection_is_caught() -> None:
    with pytest.raises(ConformanceError) as caught:
        run("error_classes", feed(wrong.BareErrors))
    message = str(caught.value)
    assert "raised a bare Exception" in message
    assert "raise bot4.errors.InsufficientFunds (an ExchangeRefused)" in message
    assert "never retries" in message
    # The precision check names InvalidOrder for a quantity below the minimum.
    with pytest.raises(ConformanceError, match=r"bare Exception.*bot4\.errors\.InvalidOrder"):
        run("precision", feed(wrong.BareErrors))


def test_the_same_wrong_exchanges_pass_the_checks_they_do_not_break() -> None:
    run("balance_fees", feed(wrong.DoubleFill))
    run("idempotent_place", feed(wrong.FeeBlindBalance))
    run("market_order_fills", feed(wrong.BareErrors))


def test_method_without_a_checkpoint_is_caught() -> None:
    with pytest.raises(ConformanceError, match=r"fetch_balance\(\) ran to completion inside a"):
        run("trio_cancellation", feed(wrong.NoCheckpoint))


def test_claimed_capability_not_honoured_fails_naming_the_claim() -> None:
    with pytest.raises(ConformanceError) as caught:
        run("stop_orders", feed(wrong.ClaimsStops))
    assert "stop orders are not supported" in str(caught.value)
    assert "refused with InvalidOrder" in str(caught.value)


def test_unclaimed_capability_is_skipped_with_the_reason() -> None:
    with pytest.raises(CheckSkipped) as skipped:
        run("market_order_fills", feed(wrong.LimitOnly))
    assert str(skipped.value) == (
        "limitonly does not claim Capability.MARKET_ORDERS (add it to `capabilities` once "
        "supported, and this check runs)"
    )
    for name in ("idempotent_place", "balance_fees", "precision", "unclaimed_order_types"):
        run(name, feed(wrong.LimitOnly))


def test_unclaimed_order_type_that_is_accepted_is_caught() -> None:
    with pytest.raises(ConformanceError, match=r"place_order of a market order returned .*"):
        run("unclaimed_order_types", feed(wrong.QuietlyAcceptsMarket))


def test_position_sign_is_checked() -> None:
    with pytest.raises(ConformanceError, match=re.escape("a short is a negative qty")):
        run("positions", feed(wrong.ShortAsLong))


def test_cancel_of_a_filled_order_must_be_refused() -> None:
    with pytest.raises(ConformanceError, match=r"filled order .* returned .*InvalidOrder"):
        run("limit_order_lifecycle", feed(wrong.SkipsFilledUpdate))


def test_disconnect_needs_a_harness_that_can_drop_the_link() -> None:
    with pytest.raises(CheckSkipped, match="cannot simulate a disconnect"):
        run("disconnect", feed(PaperExchange))
    run("disconnect", lambda: wrong.LinkHarness(wrong.Networked))


def test_network_error_that_is_not_exchange_failed_is_caught() -> None:
    with pytest.raises(ConformanceError) as caught:
        run("disconnect", lambda: wrong.LinkHarness(wrong.WrongNetworked))
    message = str(caught.value)
    assert "with the link down raised ConnectionError" in message
    assert "ExchangeUnavailable or ExchangeTimeout (ExchangeFailed)" in message


def test_state_machine_finds_a_difference_only_the_reference_shows() -> None:
    # Self-consistent (balance follows its own fills), so only the comparison
    # with the reference notices the doubled fee.
    run("balance_fees", feed(wrong.TwiceTheFee))
    with pytest.raises(ConformanceError) as caught:
        check_against_reference(feed(wrong.TwiceTheFee), max_examples=10)
    message = str(caught.value)
    assert "twicefee and the reference paper exchange disagree" in message
    assert "place market" in message or "place limit" in message


def test_state_machine_catches_a_double_fill() -> None:
    with pytest.raises(ConformanceError, match="disagree"):
        check_against_reference(feed(wrong.DoubleFill), max_examples=25)


def test_suite_without_a_factory_says_how_to_set_one() -> None:
    with pytest.raises(ConformanceError, match="set `factory = YourExchange`"):
        ExchangeSuite().make_harness()


def test_every_check_has_a_one_line_description() -> None:
    assert all(c.doc and "\n" not in c.doc for c in CHECKS.values())
    assert {f"test_{n}" for n in CHECKS} <= set(dir(ExchangeSuite))
