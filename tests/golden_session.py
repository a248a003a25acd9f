"""The default session's decisions, orders and fills as a digest: the golden
check that a rebuild of the hot path (issue 13) changes no decision.

Read from the session's journal (``bot4 journal export``), not from the
recording, so that a new recording format does not change what is compared.
Each decision, intent, fill and risk action becomes one canonical line of the
fields that make it what it is (event time, client id, deciding rule, side,
quantity, prices, fee); the reason's wording is left out on purpose (a
rounding change in a message is no change of decision) but the numbers that
decide are in.

``python -m tests.golden_session`` prints the digest of a fresh run, to write
into ``tests/golden/default_session.json`` after a change that is meant to
change decisions (and say so in the commit).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "default_session.json"
KINDS = ("decision", "intent", "fill", "action")


def _order(o: dict[str, Any]) -> list[Any]:
    return [
        o.get("client_order_id"),
        o.get("symbol"),
        o.get("side"),
        o.get("type"),
        o.get("qty"),
        o.get("price"),
        o.get("stop_loss"),
        o.get("take_profit"),
        o.get("leverage"),
        o.get("reduce_only"),
    ]


def canonical(record: dict[str, Any]) -> list[Any] | None:
    """The line a journal record contributes, or None for other kinds."""
    kind, body = record.get("kind"), record.get("body") or {}
    if kind not in KINDS:
        return None
    head = [kind, record.get("ts_ns"), record.get("client_order_id"), record.get("rule")]
    if kind == "decision":
        order = body.get("order") or {}
        return [*head, body.get("_t"), _order(order), body.get("suggested_size")]
    if kind == "intent":
        # An intent is stamped with the wall clock when it is written ahead:
        # its place in the journal, between the events it follows, says when.
        return [kind, record.get("client_order_id"), _order(body)]
    if kind == "fill":
        return [
            *head,
            body.get("fill_id"),
            body.get("symbol"),
            body.get("side"),
            body.get("qty"),
            body.get("price"),
            body.get("fee"),
        ]
    return [*head, body.get("kind"), body.get("symbol"), body.get("fraction")]


def digest(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and one sha256 over the lines of each kind in journal order.
    Kinds are hashed apart: intents are written ahead on their own path, so
    where they fall among the batched records varies from run to run, while
    each kind's own order is the session's."""
    lines = [c for c in map(canonical, records) if c is not None]
    sha = hashlib.sha256()
    for kind in KINDS:
        for line in lines:
            if line[0] == kind:
                sha.update(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    counts = Counter(line[0] for line in lines)
    return {"counts": dict(sorted(counts.items())), "sha256": sha.hexdigest()}


def run_default_session(work: Path) -> dict[str, Any]:
    """``bot4 run`` with no options (the main job) in ``work``; its digest
    and summary."""
    out = work / "out"
    run = subprocess.run(
        [sys.executable, "-m", "bot4", "run", "--out", str(out), "--no-chart", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
        check=False,
    )
    if run.returncode != 0:
        raise AssertionError(f"bot4 run failed ({run.returncode}): {run.stderr}")
    export = work / "journal.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bot4",
            "journal",
            "export",
            "--format",
            "jsonl",
            str(out / "journal.sqlite"),
            "-o",
            str(export),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    records = [json.loads(line) for line in export.read_text().splitlines() if line.strip()]
    summary = json.loads(run.stdout)
    return {
        **digest(records),
        "summary": {
            k: summary[k]
            for k in ("ticks", "orders_approved", "orders_rejected", "fills", "final_equity")
            if k in summary
        },
    }


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run_default_session(Path(tmp)), indent=2))
