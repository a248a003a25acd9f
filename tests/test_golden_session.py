"""The main job decides as it did: the default `bot4 run` session's decisions,
orders and fills are the golden ones (tests/golden/default_session.json), so a
rebuild of the hot path that changes a decision fails here (see
tests/golden_session.py for what is compared and how to renew the file)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.golden_session import GOLDEN, canonical, digest, run_default_session


def test_the_default_session_decides_as_the_golden_one(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    now = run_default_session(tmp_path)
    assert now["summary"] == golden["summary"]
    assert now["counts"] == golden["counts"]
    assert now["sha256"] == golden["sha256"], "a decision, order or fill changed"


def test_the_digest_sees_a_changed_fill_price_and_ignores_other_records() -> None:
    fill = {
        "kind": "fill",
        "ts_ns": 1,
        "client_order_id": "s1-e-1",
        "rule": None,
        "body": {
            "fill_id": "f1",
            "symbol": "BTC-USDT",
            "side": "buy",
            "qty": "0.01",
            "price": "50000",
            "fee": "0.2",
        },
    }
    moved = {**fill, "body": {**fill["body"], "price": "50000.01"}}
    other = {"kind": "position", "ts_ns": 1, "body": {"qty": "0.01"}}
    assert canonical(other) is None
    assert digest([fill, other]) == digest([fill])
    assert digest([fill])["sha256"] != digest([moved])["sha256"]
