"""What differs between the venues bot4 trades through ccxt, in one table.

ccxt unifies the call (``create_order(..., {"clientOrderId": ...})``) but not
what each venue accepts in it, so each supported venue has a
:class:`VenueProfile`: how bot4's client order ids are written for it, how an
order is looked up by that id, and which market types it trades. Every entry
here is checked by ``tests/test_venue_requests.py``, which builds each request
with ccxt's own code for the venue (signing included) and reads it off the
HTTP layer, without network.

**Client order ids.** bot4's ids look like ``s1-t-4`` (session, tag, number).
Each venue restricts the characters and the length:

=============  ================  ==================================================
venue          ccxt sends        accepted
=============  ================  ==================================================
binance(usdm)  newClientOrderId  ``[.A-Z:/a-z0-9_-]``, up to 36
bybit          orderLinkId       letters, digits, ``-`` and ``_``, up to 36
okx            clOrdId           letters and digits, up to 32
kraken         userref           a 32-bit signed integer
=============  ================  ==================================================

:func:`encode_coid` writes an id the venue accepts, deterministically (a
restarted bot finds its orders by the same id) and, where it fits, reversibly
(:func:`decode_coid` reads the venue's id back into bot4's): characters the
venue does not accept are escaped as the venue's escape character followed by
two hex digits (``s1-t-4`` is ``s1Z2DtZ2D4`` on OKX; a leading ``h`` is
escaped too, so that only a digest starts with ``h``). An id
whose escaped form is too long, and every id on Kraken, becomes a digest
(``h`` and 31 base-36 digits on OKX; a 31-bit number on Kraken): still
deterministic, so look-ups by id work after a restart, but only ids this
process has seen read back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["PROFILES", "VenueProfile", "decode_coid", "encode_coid", "profile_of"]


@attrs.frozen
class VenueProfile:
    """One venue's rules for what bot4 sends through ccxt."""

    exchange: str  # ccxt's id
    types: tuple[str, ...]  # market types bot4 trades here: "spot", "swap"
    coid_chars: str  # a regex character class of what the venue accepts
    coid_max: int
    escape: str  # the escape character (itself escaped when it occurs)
    # The ccxt ``fetchMarkets.types`` entry that loads each bot4 market type.
    market_types: Mapping[str, str] = attrs.field(factory=dict)
    coid_int: bool = False  # Kraken: a 32-bit integer, always a digest
    order_margin_mode: bool = False  # OKX: every swap order names its margin mode (tdMode)
    lookup: str = "fetch_order"  # how an order is found by client id (see exchange.py)
    # The market types whose stop and take-profit orders go to the venue (in
    # the others the kernel holds them), and how they are sent and found
    # (bot4_ccxt.triggers: "unified", "binance_algo", "bybit_conditional").
    triggers: tuple[str, ...] = ("spot", "swap")
    trigger_orders: str = "unified"
    # How margin is added to an isolated position: "" (not supported), "ccxt"
    # (ccxt's add_margin), "bybit" (ccxt's implicit /v5/position/add-margin).
    margin_add: str = ""
    trades_page: int = 1000  # the most trades one fetch_my_trades page holds
    # False: the venue answers a create with ids only, the state is read back.
    create_answers_state: bool = True
    tested: str = ""  # what tests/test_venue_requests.py covers (for the README)
    # The local fake venue (a bot4_ccxt module) the conformance kit and
    # `bot4 run --exchange ccxt` are tested against end to end; "" for none.
    fake: str = ""
    history: bool = False  # `bot4 data download` tested against the fake (fakehistory)


_BINANCE_CHARS = r"A-Za-z0-9_\-"  # a subset of Binance's (":", "/", "." left out)

PROFILES: Mapping[str, VenueProfile] = {
    p.exchange: p
    for p in (
        VenueProfile(
            "binance",
            ("spot",),
            _BINANCE_CHARS,
            36,
            "_",
            {"spot": "spot"},
            tested="spot: markets, place (newClientOrderId), look-up and cancel by "
            "origClientOrderId, open orders, trades, balance",
            fake="fakebinance",
            history=True,
        ),
        VenueProfile(
            "binanceusdm",
            ("swap",),
            _BINANCE_CHARS,
            36,
            "_",
            {"swap": "linear"},
            trigger_orders="binance_algo",
            margin_add="ccxt",
            tested="USDⓈ-M perpetuals: the above on /fapi, reduceOnly, leverage, margin type, "
            "positionRisk; STOP_MARKET and TAKE_PROFIT_MARKET on the Algo Service "
            "(/fapi/v1/algoOrder: clientAlgoId, triggerPrice, workingType, reduceOnly; "
            "look-up, open list and cancel by clientAlgoId; the triggered order by "
            "actualOrderId); add margin (/fapi/v1/positionMargin type 1)",
            fake="fakefutures",
        ),
        VenueProfile(
            "bybit",
            ("spot", "swap"),
            _BINANCE_CHARS,
            36,
            "_",
            {"spot": "spot", "swap": "linear"},
            lookup="bybit",
            triggers=("swap",),
            trigger_orders="bybit_conditional",
            margin_add="bybit",
            trades_page=100,
            create_answers_state=False,
            tested="v5 spot and linear: place (orderLinkId, category), look-up by orderLinkId "
            "(realtime, then history), cancel, reduceOnly, set-leverage, set-margin-mode "
            "(unified account), positions; linear conditional orders (triggerPrice, "
            "triggerDirection, triggerBy, reduceOnly; look-up and open list with "
            "orderFilter=StopOrder, cancel by orderLinkId); add margin "
            "(/v5/position/add-margin)",
            fake="fakebybit",
        ),
        VenueProfile(
            "okx",
            ("spot", "swap"),
            r"A-Za-z0-9",
            32,
            "Z",
            {"spot": "spot", "swap": "swap"},
            order_margin_mode=True,
            tested="spot and USDT swaps: place (clOrdId letters and digits, tdMode, sz in "
            "contracts), look-up and cancel by clOrdId, reduceOnly, set-leverage with mgnMode, "
            "positions",
        ),
        VenueProfile(
            "kraken",
            ("spot",),
            "",
            0,
            "",
            coid_int=True,
            lookup="kraken",
            tested="spot: place with an integer userref, look-up by userref",
        ),
    )
}


def profile_of(exchange: str) -> VenueProfile | None:
    """The profile of a supported venue; None for one bot4 has not tested."""
    return PROFILES.get(exchange)


def _digest(coid: str) -> int:
    return int.from_bytes(hashlib.sha256(coid.encode()).digest()[:16], "big")


def _base36(n: int, width: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for _ in range(width):
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


def encode_coid(profile: VenueProfile, coid: str) -> str | int:
    """bot4's client order id as the venue accepts it (see the module docstring)."""
    if profile.coid_int:
        # A positive 31-bit int: Kraken's userref is int32, 0 means "none".
        return _digest(coid) % (2**31 - 1) + 1
    ok = re.compile(f"[{profile.coid_chars}]")
    out = []
    for i, ch in enumerate(coid):
        if ch != profile.escape and ok.fullmatch(ch) and not (i == 0 and ch == "h"):
            out.append(ch)
        elif ord(ch) < 256:
            out.append(f"{profile.escape}{ord(ch):02X}")
        else:
            out = []
            break
    text = "".join(out)
    if text and len(text) <= profile.coid_max:
        return text
    # Too long (or not escapable): a digest; an escaped id never starts with "h".
    return "h" + _base36(_digest(coid), profile.coid_max - 1)


def decode_coid(profile: VenueProfile, venue_coid: object) -> str | None:
    """bot4's id back from the venue's, None when it is a digest (or not ours)."""
    if venue_coid is None or profile.coid_int:
        return None
    text = str(venue_coid)
    if not text or text.startswith("h"):
        return None
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == profile.escape:
            hexpart = text[i + 1 : i + 3]
            if len(hexpart) != 2 or not re.fullmatch("[0-9A-F]{2}", hexpart):
                return None
            out.append(chr(int(hexpart, 16)))
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def market_options(profile: VenueProfile | None, kind: str) -> dict[str, Any]:
    """The ccxt options that load and default to the markets of ``kind``."""
    ccxt_type = (profile.market_types if profile else {}).get(
        kind, "spot" if kind == "spot" else "linear"
    )
    return {"defaultType": kind, "fetchMarkets": {"types": [ccxt_type]}}
