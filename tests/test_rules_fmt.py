"""``bot4 rules fmt``: one canonical layout, comments kept, meaning never changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot4.errors import RuleFileError
from bot4.risk.fmt import format_text
from tests.conftest import run_bot4

REPO = Path(__file__).resolve().parent.parent

MESSY = """\
rules:
    -   when: order.qty > 1     # big
        name: big-order


        reject:
            reason: "too big"
    # the second rule
    - name: x
      priority: 3
      when: >
        order.qty > 2 and

        order.qty < 9
      reject: {reason: "x"}
params:
   a: 1
description: d
"""

CANONICAL = """\
description: d
params:
  a: 1
rules:
  - name: big-order
    when: order.qty > 1         # big
    reject:
      reason: "too big"

  # the second rule
  - name: x
    priority: 3
    when: >
      order.qty > 2 and

      order.qty < 9
    reject: {reason: "x"}
"""


def _policy_files() -> list[Path]:
    files = sorted((REPO / "rules").glob("*.yaml"))
    files += sorted((REPO / "rules" / "tests").glob("*.yaml"))
    files += sorted((REPO / "rules" / "examples").glob("*.yaml"))
    files += sorted((REPO / "examples").glob("*/rules/**/*.yaml"))
    return files


def test_a_messy_file_gets_the_canonical_layout_with_its_comments() -> None:
    assert format_text(MESSY) == CANONICAL


def test_the_layout_is_a_fixed_point() -> None:
    assert format_text(CANONICAL) == CANONICAL


def test_blank_lines_inside_a_block_scalar_are_content_and_kept() -> None:
    text = "rules:\n  - name: y\n    when: |\n      a\n\n\n      b\n    reject: {reason: x}\n"
    out = format_text(text)
    assert "      a\n\n\n      b\n" in out
    assert yaml.safe_load(out) == yaml.safe_load(text)


@pytest.mark.parametrize("path", _policy_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_bundled_policy_file_is_formatted(path: Path) -> None:
    # The bundled policy is the example users copy: it is in canonical layout.
    text = path.read_text(encoding="utf-8")
    assert format_text(text, str(path)) == text


@pytest.mark.parametrize("path", _policy_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_reordering_and_reindenting_never_changes_meaning(path: Path) -> None:
    # The layout an editor or a generator might produce (four-space indents,
    # keys sorted, long lines wrapped), formatted back: the same data.
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    messy = yaml.safe_dump(data, indent=4, sort_keys=True, width=60)
    out = format_text(messy, str(path))
    assert yaml.safe_load(out) == data
    assert format_text(out, str(path)) == out


def test_text_that_is_not_yaml_names_file_and_line() -> None:
    with pytest.raises(RuleFileError) as raised:
        format_text("rules:\n  - name: a\n   when: [\n", "r.yaml")
    assert str(raised.value).startswith("r.yaml:")


def test_check_reports_and_writes_nothing(tmp_path: Path) -> None:
    messy = tmp_path / "10-x.yaml"
    messy.write_text(MESSY)
    result = run_bot4("rules", "fmt", "--check", str(tmp_path))
    assert result.returncode == 1
    assert f"would reformat {messy}" in result.stdout
    assert messy.read_text() == MESSY


def test_fmt_rewrites_then_check_passes(tmp_path: Path) -> None:
    messy = tmp_path / "10-x.yaml"
    messy.write_text(MESSY)
    messy.chmod(0o640)
    result = run_bot4("rules", "fmt", str(messy))
    assert result.returncode == 0, result.stderr
    assert messy.read_text() == CANONICAL
    assert messy.stat().st_mode & 0o777 == 0o640  # the file's mode is kept
    assert run_bot4("rules", "fmt", "--check", str(messy)).returncode == 0


def test_diff_shows_the_change_and_writes_nothing(tmp_path: Path) -> None:
    messy = tmp_path / "10-x.yaml"
    messy.write_text(MESSY)
    result = run_bot4("rules", "fmt", "--diff", str(messy))
    assert result.returncode == 1
    assert "+  - name: big-order" in result.stdout
    assert messy.read_text() == MESSY


def test_one_bad_file_writes_none_and_exits_2(tmp_path: Path) -> None:
    good = tmp_path / "10-good.yaml"
    good.write_text(MESSY)
    bad = tmp_path / "20-bad.yaml"
    bad.write_text("rules: [\n")
    result = run_bot4("rules", "fmt", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"bot4: {bad}:")
    assert "Traceback" not in result.stderr
    assert good.read_text() == MESSY  # nothing written when any file is bad
