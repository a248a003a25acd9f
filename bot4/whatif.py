"""``bot4 rules diff``: what an edited policy would have done in a recorded session.

The question a policy author asks before switching: "with last week's market,
what would the new rules have decided, and what would it have cost?". No
trading framework answers it; bot4 can, because a recording holds every input
(the ticks, and the policy text) and the kernel is deterministic.

How: the recorded session is run twice in a sandbox, like ``bot4 replay``
(nothing the recording names is opened or reached: see :mod:`bot4.replay`),
once with the old policy (the one recorded, hot reloads included, or
``--old RULES``) and once with the new one (``--new RULES``; a recorded
reload is not applied to it: the point is to see this policy). Both runs use
the paper engine over the recorded ticks, with the recorded strategies and
settings. A paper recording re-simulated with its own policy is the session
itself (``bot4 replay`` proves that); a recording of a live venue is
re-simulated by the paper engine, and the report says so: its fills are the
paper engine's, not the venue's.

A policy that changes a decision changes what follows: an order the old
policy approved and the new one refuses is never filled, so the positions,
the later signals and decisions differ from there. That is why both sides are
simulated rather than the old decisions re-judged: from the first changed
decision on (the report gives its time) the new side is what the new policy
would have done, as the paper engine simulates it.

Decisions are paired by the strategy signal that asked for them (event time,
strategy, symbol, side, and their order within that time). A change is one
of: ``approved->rejected``, ``rejected->approved``, ``resized`` (approved both
ways at a different size, or cut to size on one side only), ``rule`` (rejected
both ways by different rules), ``only-old`` / ``only-new`` (a signal one run
produced and the other did not, after the runs diverged); risk actions (the
liquidation ladder, the breaker) are compared per event time and symbol as
``action-added`` / ``action-removed``.
"""

from __future__ import annotations

import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bot4.errors import ConfigError
from bot4.plugins import PluginManager
from bot4.recording_read import read_stream
from bot4.replay import _RecordedRules, check_plugins, config_from_header, read_header
from bot4.replayvenue import RecordedPrefix, RecordedTicks
from bot4.session import run_session
from bot4.session_summary import summary_json

KINDS = (
    "approved->rejected",
    "rejected->approved",
    "resized",
    "rule",
    "only-old",
    "only-new",
    "action-added",
    "action-removed",
)
_EFFECTS = (
    "trades",
    "fills",
    "pnl",
    "return_pct",
    "max_drawdown",
    "exposure",
    "avg_gross_exposure",
    "orders_approved",
    "orders_rejected",
    "orders_resized",
    "breaker_trips",
)


@attrs.frozen
class Outcome:
    """What became of one signal: ``approved`` (at ``qty``; ``cut`` when the
    size ``rule`` suggested was taken) or ``rejected`` (by ``rule``)."""

    verdict: str
    qty: str | None
    rule: str | None
    cut: bool

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Change:
    kind: str
    ts_ns: int
    symbol: str
    side: str
    strategy: str
    old: Outcome | None
    new: Outcome | None
    rule: str | None  # the rule the change is about (the deciding one on the side that refused)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ts_ns": self.ts_ns,
            "symbol": self.symbol,
            "side": self.side,
            "strategy": self.strategy,
            "rule": self.rule,
            "old": self.old.as_dict() if self.old else None,
            "new": self.new.as_dict() if self.new else None,
        }


@attrs.frozen
class Side:
    """One re-run: its decisions by signal, its actions, its summary."""

    signals: dict[tuple[int, str, str, str, int], Outcome]
    actions: Counter[tuple[int, str, str]]
    summary: dict[str, Any]
    recording: Path


@attrs.define
class DiffResult:
    recording: Path
    old_label: str
    new_label: str
    changes: list[Change]
    old: Side
    new: Side
    notes: list[str]

    @property
    def first_change_ns(self) -> int | None:
        return min((c.ts_ns for c in self.changes), default=None)

    def counts(self) -> dict[str, int]:
        return dict(Counter(c.kind for c in self.changes))

    def by_rule(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for c in self.changes:
            table[c.rule or "-"][c.kind] += 1
        return {rule: dict(kinds) for rule, kinds in sorted(table.items())}

    def effects(self) -> dict[str, tuple[Any, Any]]:
        out = {key: (self.old.summary.get(key), self.new.summary.get(key)) for key in _EFFECTS}
        rules = sorted(
            set(self.old.summary.get("rejections_by_rule", {}))
            | set(self.new.summary.get("rejections_by_rule", {}))
        )
        for rule in rules:
            out[f"rejected by {rule}"] = (
                self.old.summary.get("rejections_by_rule", {}).get(rule, 0),
                self.new.summary.get("rejections_by_rule", {}).get(rule, 0),
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "recording": str(self.recording),
            "old": self.old_label,
            "new": self.new_label,
            "notes": self.notes,
            "first_change_ns": self.first_change_ns,
            "counts": self.counts(),
            "by_rule": self.by_rule(),
            "effects": {k: {"old": a, "new": b} for k, (a, b) in self.effects().items()},
            "changes": [c.as_dict() for c in self.changes],
        }


# -- reading a run's decisions ----------------------------------------------------------


def _payload(item: Mapping[str, Any]) -> Mapping[str, Any]:
    payload = item.get("payload")
    return payload if isinstance(payload, Mapping) else {}


def read_side(recording: Path, summary: dict[str, Any]) -> Side:
    """The decisions of one run, keyed by the signal that asked for them."""
    signals: dict[tuple[int, str, str, str, int], Outcome] = {}
    actions: Counter[tuple[int, str, str]] = Counter()
    # The signal each entry order answered: the kernel numbers an entry's
    # client id after the signal it publishes just before (correlation id).
    pending: dict[str, tuple[int, str, str, str, int]] = {}
    ordinal: Counter[tuple[int, str, str, str]] = Counter()
    last_signal: tuple[int, str, str, str, int] | None = None
    for _, topic, item in read_stream(recording, ticks="skip"):
        ts = int(item.get("ts", 0))
        payload = _payload(item)
        if topic.startswith("signal."):
            head = (
                ts,
                str(payload.get("strategy", topic[7:])),
                str(payload.get("symbol")),
                str(payload.get("side")),
            )
            key = (*head, ordinal[head])
            ordinal[head] += 1
            last_signal = key
            continue
        if topic in ("risk.approved", "risk.rejected"):
            cid = str(item.get("correlation_id", ""))
            bound = pending.get(cid)
            if bound is None:
                if last_signal is None or last_signal[0] != ts:
                    continue  # an exit or a ladder order: not a signal's decision
                bound = pending[cid] = last_signal
                last_signal = None
            key = bound
            order = payload.get("order") if isinstance(payload.get("order"), Mapping) else {}
            assert isinstance(order, Mapping)
            before = signals.get(key)
            if topic == "risk.approved":
                # Approved after a rejection: cut to the size the rule suggested.
                cut_by = before.rule if before is not None else None
                signals[key] = Outcome(
                    "approved", str(order.get("qty")), cut_by, before is not None
                )
            elif before is None:
                signals[key] = Outcome("rejected", None, str(payload.get("rule")), False)
            continue
        if topic == "risk.action":
            actions[(ts, str(payload.get("symbol")), str(payload.get("kind")))] += 1
    return Side(signals, actions, summary, recording)


# -- comparing -----------------------------------------------------------------------


def compare_sides(old: Side, new: Side) -> list[Change]:
    changes: list[Change] = []
    for key in sorted(set(old.signals) | set(new.signals)):
        a, b = old.signals.get(key), new.signals.get(key)
        ts, strategy, symbol, side, _ = key
        kind: str | None = None
        rule: str | None = None
        if a is None:
            kind, rule = "only-new", b.rule if b else None
        elif b is None:
            kind, rule = "only-old", a.rule
        elif a.verdict == "approved" and b.verdict == "rejected":
            kind, rule = "approved->rejected", b.rule
        elif a.verdict == "rejected" and b.verdict == "approved":
            kind, rule = "rejected->approved", a.rule
        elif a.verdict == "rejected" and b.verdict == "rejected" and a.rule != b.rule:
            kind, rule = "rule", b.rule
        elif (
            a.verdict == "approved" and b.verdict == "approved" and (a.qty, a.cut) != (b.qty, b.cut)
        ):
            kind, rule = "resized", b.rule or a.rule
        if kind is not None:
            changes.append(Change(kind, ts, symbol, side, strategy, a, b, rule))
    for act in sorted(set(old.actions) | set(new.actions)):
        ts, symbol, action = act
        delta = new.actions.get(act, 0) - old.actions.get(act, 0)
        if delta:
            kind = "action-added" if delta > 0 else "action-removed"
            for _ in range(abs(delta)):
                changes.append(Change(kind, ts, symbol, "", "", None, None, action))
    changes.sort(key=lambda c: (c.ts_ns, c.symbol, c.kind))
    return changes


# -- running both sides ---------------------------------------------------------------------


async def _run(
    header: Mapping[str, Any],
    recording: Path,
    rules: Sequence[Path] | None,
    folder: Path,
    manager: PluginManager,
    packs: list[str],
) -> Side:
    recorded = _RecordedRules(folder / "rules", recording)
    recorded.write(header["rules"])
    if rules is None:  # the recorded policy, hot reloads as they happened
        rule_paths: list[Path] = [recorded.folder]
        on_reload = recorded.reload
    else:
        rule_paths = list(rules)

        def on_reload(number: int, payload: Mapping[str, Any]) -> None:
            return None  # the policy under study stays the one given

    config = config_from_header(header, folder / "out")
    if header["config"].get("exchange") != "paper":
        # A live venue's recording: its ticks, simulated by the paper engine.
        config = attrs.evolve(config, exchange="paper")
    feed = RecordedTicks(recording, on_reload)
    venue = manager.registry.exchange("paper").factory({**config.exchange_params, "feed": feed})
    result = await run_session(
        config,
        manager=manager,
        exchange=RecordedPrefix(venue, feed),
        rule_paths=rule_paths,
        services=[],
        pack_names=packs,
        reload_every=0.0,
    )
    if result.error is not None:
        raise result.error
    assert result.recording is not None
    summary = summary_json(result.report.finish(result.stats), result.report)
    return read_side(result.recording, summary)


def _packs(header: Mapping[str, Any], manager: PluginManager) -> list[str]:
    if header.get("plugins") is None:
        return sorted(manager.registry.risk_rules)
    return [
        str(p["name"])
        for p in header["plugins"]
        if isinstance(p, dict) and p.get("kind") == "risk_rules"
    ]


async def rules_diff(
    recording: Path,
    new: Sequence[Path],
    old: Sequence[Path] | None = None,
    *,
    manager: PluginManager | None = None,
    keep: Path | None = None,
) -> DiffResult:
    """Re-run ``recording`` under ``old`` (default: the recorded policy) and
    ``new``; return every changed decision and the effects side by side.
    ``keep``: a folder to keep both runs' recordings in (``old/``, ``new/``)."""
    for path in [*new, *(old or ())]:
        if not path.exists():
            raise ConfigError(f"{path}: no such rule file or directory")
    header = read_header(recording)
    manager = manager or PluginManager.load()
    notes = check_plugins(header, manager, recording)
    if header["config"].get("exchange") != "paper":
        notes.append(
            f"the session ran on {header['config'].get('exchange')!r}: both policies are "
            "simulated by the paper engine over its recorded ticks (fills are the paper engine's)"
        )
    packs = _packs(header, manager)
    with tempfile.TemporaryDirectory(prefix="bot4-diff-") as tmp:
        base = keep or Path(tmp)
        sides = []
        for name, rules in (("old", old), ("new", new)):
            folder = base / name
            folder.mkdir(parents=True, exist_ok=keep is not None)
            sides.append(await _run(header, recording, rules, folder, manager, packs))
    result = DiffResult(
        recording,
        "the recorded policy" if old is None else ", ".join(map(str, old)),
        ", ".join(map(str, new)),
        compare_sides(sides[0], sides[1]),
        sides[0],
        sides[1],
        notes,
    )
    if result.changes:
        first = result.first_change_ns
        assert first is not None
        from bot4.summary import ns_to_datetime

        result.notes.append(
            f"the decisions first differ at {ns_to_datetime(first).isoformat()}; from there the "
            "new side re-simulates with the paper engine what the new policy would have done"
        )
    return result


# -- showing it --------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def as_text(result: DiffResult, limit: int = 20) -> Iterator[str]:
    yield f"recording: {result.recording}"
    yield f"old: {result.old_label}"
    yield f"new: {result.new_label}"
    for note in result.notes:
        yield f"note: {note}"
    counts = result.counts()
    if not result.changes:
        yield "no decision changes"
    else:
        total = len(result.changes)
        yield f"{total} changed decisions: " + ", ".join(
            f"{counts[k]} {k}" for k in KINDS if k in counts
        )
        yield ""
        yield "by rule:"
        for rule, kinds in result.by_rule().items():
            yield f"  {rule:<28} " + ", ".join(f"{n} {k}" for k, n in kinds.items())
    yield ""
    yield f"  {'effect':<34}{'old':>16}{'new':>16}"
    for key, (a, b) in result.effects().items():
        mark = "" if a == b else "  *"
        yield f"  {key:<34}{_fmt(a):>16}{_fmt(b):>16}{mark}"
    if result.changes:
        yield ""
        yield f"first {min(limit, len(result.changes))} changes:"
        from bot4.summary import ns_to_datetime

        for c in result.changes[:limit]:
            when = ns_to_datetime(c.ts_ns).isoformat()
            what = f"{c.kind} {c.symbol} {c.side}".rstrip()
            yield f"  {when} {what} ({c.rule or '-'}): {_outcome(c.old)} -> {_outcome(c.new)}"


def _outcome(o: Outcome | None) -> str:
    if o is None:
        return "none"
    if o.verdict == "approved":
        return f"approved {o.qty}" + (f" (cut by {o.rule})" if o.cut else "")
    return f"rejected by {o.rule}"
