"""A rule file that cannot be read is an error naming it, never skipped.

At start the policy (and so the session, and ``bot4 rules check``) refuses to
load; on hot reload inside a running kernel the last good policy stays in
force, the session goes on, and the refusal is reported: a log line, a
``kernel.error`` event and ``bot4_rule_reloads_total{result="failed"}``. A
reload that takes is logged with its rule count and sha256.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bot4.errors import RuleFileError
from bot4.model import Approved, Rejected
from bot4.risk import RiskPolicy, sources
from tests.conftest import run_bot4, write_ticks
from tests.test_guarantees.reloadkit import (
    RULES,
    copy_rules,
    fifo_unblocker,
    pack,
    run_with_broken_files,
)

Make = Callable[[Path], Path]


def _dangling_breaker(rules: Path) -> Path:
    # The attack of the issue: the breaker's file replaced by a link to nothing.
    entry = rules / "10-breaker.yaml"
    entry.unlink()
    entry.symlink_to("10-breaker.yaml.moved")
    return entry


def _loop(rules: Path) -> Path:
    entry = rules / "15-loop.yaml"
    entry.symlink_to("15-loop.yaml")
    return entry


def _fifo(rules: Path) -> Path:
    entry = rules / "15-pipe.yaml"
    os.mkfifo(entry)
    return entry


def _device(rules: Path) -> Path:
    entry = rules / "15-null.yaml"
    entry.symlink_to(os.devnull)
    return entry


def _directory(rules: Path) -> Path:
    entry = rules / "15-dir.yaml"
    entry.mkdir()
    (entry / "inner.yaml").write_text("rules: []\n")
    return entry


def _not_utf8(rules: Path) -> Path:
    entry = rules / "15-latin1.yaml"
    entry.write_bytes("# r\xe9gle\nrules: []\n".encode("latin-1"))
    return entry


BAD_ENTRIES: dict[str, tuple[Make, str]] = {
    "dangling symlink": (_dangling_breaker, "dangling symlink"),
    "symlink loop": (_loop, "symlink loop"),
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "device": (_device, "is a device, not a regular file"),
    "directory named x.yaml": (_directory, "is a directory, not a rule file"),
    "not utf-8": (_not_utf8, "not UTF-8 text"),
}


def _repair(rules: Path, entry: Path) -> None:
    if entry.name == "10-breaker.yaml":
        entry.unlink()
        entry.write_text((RULES / "10-breaker.yaml").read_text())
    elif entry.is_dir() and not entry.is_symlink():
        for child in entry.iterdir():
            child.unlink()
        entry.rmdir()
    else:
        entry.unlink()


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
def test_a_bad_entry_refuses_the_policy_at_start_naming_it(case: str, tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    make, what = BAD_ENTRIES[case]
    entry = make(rules)
    started = time.monotonic()
    guard = fifo_unblocker(entry) if case == "fifo" else contextlib.nullcontext()
    with guard, pytest.raises(RuleFileError) as info:
        RiskPolicy.load([rules], [pack()])
    assert time.monotonic() - started < 4, "reading the rule files blocked"
    assert info.value.path == str(entry)
    assert what in str(info.value)


@pytest.mark.parametrize("case", ["dangling symlink", "fifo", "not utf-8"])
def test_rules_check_and_run_refuse_a_bad_entry_in_one_line(case: str, tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    entry = BAD_ENTRIES[case][0](rules)
    check = run_bot4("rules", "check", str(rules), timeout=60)
    assert check.returncode == 1
    assert check.stdout == ""
    assert check.stderr.strip().splitlines() == [check.stderr.strip()]
    assert check.stderr.startswith(f"{entry}: {BAD_ENTRIES[case][1]}")
    data = write_ticks(tmp_path / "ticks.csv", seconds=20)
    run = run_bot4(
        "run",
        "--rules",
        str(rules),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--no-chart",
        timeout=120,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"bot4: {entry}: {BAD_ENTRIES[case][1]}")
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_rules_path_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-rules"
    check = run_bot4("rules", "check", str(missing), timeout=60)
    assert check.returncode == 1
    assert check.stderr.strip() == f"{missing}: no such file or directory"
    run = run_bot4("run", "--rules", str(missing), "--out", str(tmp_path / "out"), timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"bot4: {missing}: no such file or directory"]
    assert "Traceback" not in run.stderr


def test_a_pack_rule_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "pack.yaml"
    os.mkfifo(fifo)

    class Piped(type(pack())):  # type: ignore[misc]
        def rule_files(self) -> list[Path]:
            return [fifo]

    with fifo_unblocker(fifo), pytest.raises(RuleFileError) as info:
        RiskPolicy.load([copy_rules(tmp_path)], [Piped()])
    assert str(info.value).startswith(f"{fifo}: rule file of risk pack 'correlation': is a FIFO")


def test_hidden_entries_are_not_rule_files(tmp_path: Path) -> None:
    # Editors keep lock files beside the file being edited: Emacs's
    # .#name is a dangling link by design. Hidden names are skipped, as a
    # shell glob skips them; every other entry counts.
    rules = copy_rules(tmp_path)
    (rules / ".#20-entry.yaml").symlink_to("root@host.1234:1700000000")
    policy = RiskPolicy.load([rules], [pack()])
    assert str(rules / ".#20-entry.yaml") not in policy.files
    assert len(policy.files) == 7
    policy.close()


def test_a_fifo_swapped_in_after_the_check_does_not_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check before opening can be raced (the entry replaced in between):
    # the open itself does not wait for a writer and the descriptor is checked.
    fifo = tmp_path / "late.yaml"
    os.mkfifo(fifo)
    monkeypatch.setattr(sources, "problem", lambda path: None)
    started = time.monotonic()
    with fifo_unblocker(fifo), pytest.raises(RuleFileError) as info:
        sources.read_text(fifo, 1000)
    assert time.monotonic() - started < 4
    assert str(info.value) == f"{fifo}: is a FIFO, not a regular file"


def test_rules_check_prints_the_files_it_compiled(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    result = run_bot4("rules", "check", str(rules), timeout=60)
    assert result.returncode == 0, result.stderr
    listed = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert listed == [str(p) for p in sorted(rules.glob("*.yaml"))]
    policy = RiskPolicy.load([rules], [pack()])
    assert f"sha256: {policy.digest}" in result.stdout
    policy.close()


# --- hot reload inside a running kernel ---------------------------------------------------


@pytest.mark.trio
@pytest.mark.parametrize("case", sorted(BAD_ENTRIES))
async def test_a_bad_entry_on_hot_reload_keeps_the_last_good_policy_and_is_reported(
    case: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = copy_rules(tmp_path)
    make, what = BAD_ENTRIES[case]
    made: list[Path] = []
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="bot4.risk"), fifo_unblocker(rules / "15-pipe.yaml"):
        run = await run_with_broken_files(
            rules,
            spoil=lambda: made.append(make(rules)),
            repair=lambda: _repair(rules, made[0]),
        )
    assert time.monotonic() - started < 30
    entry = made[0]
    kernel = run.kernel
    # The session ran to the end of its data.
    assert kernel.stats.ticks == 900
    assert kernel.halted is None
    # Refused once, then taken once the entry was repaired.
    assert kernel.stats.reload_failures == 1
    assert kernel.stats.reloads == 1
    errors = [str(e) for e in run.topics("kernel.error")]
    assert len(errors) == 1
    assert errors[0].startswith(f"rule reload refused, keeping the previous policy: {entry}: ")
    assert what in errors[0]
    assert run.metrics['bot4_rule_reloads_total{result="failed"}'] == 1
    assert run.metrics['bot4_rule_reloads_total{result="ok"}'] == 1
    assert run.metrics["bot4_kernel_errors_total"] == 1
    # While refused, the last good policy decided: the buy passed the old 2%
    # limit, and every rule of it (the breaker's too) was still there.
    assert run.digest_at_first_buy == run.digest_before
    approved = [d for d in run.topics("risk.approved") if isinstance(d, Approved)]
    rejected = [d for d in run.topics("risk.rejected") if isinstance(d, Rejected)]
    assert len(approved) == 1
    assert [r.rule for r in rejected] == ["max-position-size"]
    assert run.digest_after != run.digest_before
    assert f"rule reload refused, keeping the previous policy: {entry}" in caplog.text
    assert f"policy reloaded: {len(run.rule_names_before)} rules, sha256 " in caplog.text
    assert run.digest_after[:16] in caplog.text


# --- permission denied ----------------------------------------------------------------------


def _unopenable(tmp_path: Path) -> Path:
    """A regular file whose open() for reading fails with EACCES for this
    process. chmod 000 stops every user but root, and the tests may run as
    root: a write-only sysctl file is refused to root too (procfs checks its
    mode for every user), so as root that is the file."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked.yaml"
        locked.write_text("rules: []\n")
        locked.chmod(0)
        return locked
    sysctl = Path("/proc/sys/vm/drop_caches")  # --w-------: reading is refused
    assert sysctl.exists(), "needs Linux procfs to make a file root cannot open"
    return sysctl


def test_a_file_that_cannot_be_opened_is_refused_at_start_and_on_reload(tmp_path: Path) -> None:
    target = _unopenable(tmp_path)
    with pytest.raises(PermissionError):
        target.open("rb")  # the premise: this process cannot open it
    rules = copy_rules(tmp_path)
    entry = rules / "10-breaker.yaml"
    good = entry.read_text()
    entry.unlink()
    entry.symlink_to(target)
    with pytest.raises(RuleFileError) as info:
        RiskPolicy.load([rules], [pack()])
    assert str(info.value).endswith("10-breaker.yaml: cannot open: Permission denied")

    entry.unlink()
    entry.write_text(good)
    policy = RiskPolicy.load([rules], [pack()])
    before = policy.digest
    entry.unlink()
    entry.symlink_to(target)
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert str(outcome.error).endswith("10-breaker.yaml: cannot open: Permission denied")
    assert policy.digest == before
    assert "breaker-tripped" in policy.rule_names
    policy.close()


def test_a_rules_folder_that_disappears_or_empties_keeps_the_policy(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    policy = RiskPolicy.load([rules], [pack()])
    before = policy.digest
    rules.rename(tmp_path / "moved")
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert str(outcome.error) == f"{rules}: no such file or directory"
    rules.mkdir()
    outcome = policy.reload_if_changed()
    assert outcome is not None
    assert str(outcome.error) == f"{rules}: no *.yaml rule files in this directory"
    assert policy.digest == before
    assert "breaker-tripped" in policy.rule_names
    policy.close()
