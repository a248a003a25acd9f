"""``bot4 replay``: run a recorded session again and check it matches.

The recording's ``session.start`` event holds the configuration and the text
of every rule file; its ``market.*`` events are the input. Replaying feeds
those ticks through a new kernel with the same plugins and rules, records
again, and compares every decision, order, fill and risk action of the two
recordings, field for field, in order. Both files are streamed, so memory
does not grow with the length of the session.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from itertools import zip_longest
from pathlib import Path
from typing import Any

import attrs

from bot4 import codec
from bot4.errors import ConfigError
from bot4.model import MarketData
from bot4.session import SessionConfig, StrategyConfig, run_session

# Everything the kernel decided or the exchange did; market data is input.
_OUTPUT_PREFIXES = ("signal.", "risk.", "order.", "fill.", "kernel.")


@attrs.frozen
class ReplayResult:
    compared: int
    mismatch: str | None  # first difference, described; None when identical
    recording: Path

    @property
    def matched(self) -> bool:
        return self.mismatch is None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a recording line: {exc.msg}") from exc
            if not isinstance(record, dict) or "topic" not in record:
                raise ConfigError(f"{path}:{number}: not a recording line (no topic)")
            yield number, record


def read_header(path: Path) -> dict[str, Any]:
    for number, record in _records(path):
        if record["topic"] != "session.start":
            raise ConfigError(
                f"{path}:{number}: a recording starts with session.start, not {record['topic']}"
            )
        header = record["payload"]
        if not isinstance(header, dict) or "config" not in header or "rules" not in header:
            raise ConfigError(f"{path}:{number}: session.start carries no config and rules")
        return header
    raise ConfigError(f"{path}: empty recording")


def _ticks(path: Path) -> Iterator[MarketData]:
    for number, record in _records(path):
        if record["topic"].startswith("market."):
            tick = codec.decode(record["payload"])
            if not isinstance(tick, MarketData):
                raise ConfigError(f"{path}:{number}: market event without market data")
            yield tick


def _outputs(path: Path) -> Iterator[tuple[int, str, str]]:
    for number, record in _records(path):
        if record["topic"].startswith(_OUTPUT_PREFIXES):
            yield number, record["topic"], json.dumps(record["payload"], sort_keys=True)


def config_from_header(header: dict[str, Any], out: Path) -> SessionConfig:
    c = header["config"]
    return SessionConfig(
        data=c["data"],
        exchange=c["exchange"],
        exchange_params=c["exchange_params"],
        strategies=tuple(StrategyConfig(s["name"], s["params"]) for s in c["strategies"]),
        rules=tuple(c["rules"]),
        speed=0.0,
        out=str(out),
        record=True,
        session_id=c["session_id"],
        journal="off",  # a replay re-decides in a sandbox: it must not touch the live journal
        # The same risk packs (a recording from before packs were recorded: all).
        packs=None if c.get("packs") is None else tuple(c["packs"]),
    )


def compare(original: Path, again: Path) -> tuple[int, str | None]:
    compared = 0
    for a, b in zip_longest(_outputs(original), _outputs(again)):
        if a is None or b is None:
            which = "replay" if a is None else "original"
            extra = b if a is None else a
            assert extra is not None
            return compared, f"the {which} ended early; next is {extra[1]} at line {extra[0]}"
        if a[1:] != b[1:]:
            return compared, (
                f"event {compared + 1} differs: original line {a[0]} {a[1]} {a[2][:200]} "
                f"vs replay line {b[0]} {b[1]} {b[2][:200]}"
            )
        compared += 1
    return compared, None


async def replay(recording: Path, out: Path | None = None) -> ReplayResult:
    header = read_header(recording)
    with tempfile.TemporaryDirectory(prefix="bot4-replay-") as tmp:
        rules_dir = Path(tmp) / "rules"
        rules_dir.mkdir()
        for name, text in header["rules"].items():
            (rules_dir / Path(name).name).write_text(text, encoding="utf-8")
        target = out or Path(tmp) / "out"
        config = config_from_header(header, target)
        result = await run_session(config, feed=_ticks(recording), rule_paths=[rules_dir])
        assert result.recording is not None
        compared, mismatch = compare(recording, result.recording)
        kept = result.recording if out is not None else recording
        return ReplayResult(compared, mismatch, kept)
