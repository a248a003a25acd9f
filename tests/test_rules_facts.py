"""``bot4 rules facts``: the fact catalogue, and the README's reference generated from it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bot4.risk.catalogue import UNITS
from bot4.risk.facts import BUILTIN_FACTS
from tests.conftest import run_bot4

REPO = Path(__file__).resolve().parent.parent
SECTION = re.compile(r"<!-- facts:begin[^>]*-->\n(.*?)<!-- facts:end -->", re.S)


def test_the_readme_fact_reference_is_current() -> None:
    result = run_bot4("rules", "facts", "--markdown")
    assert result.returncode == 0, result.stderr
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = SECTION.search(readme)
    assert found is not None, "README lost its generated fact reference"
    assert found.group(1) == result.stdout, (
        "README's fact reference is stale: paste `bot4 rules facts --markdown` between the markers"
    )


def test_every_builtin_fact_has_a_unit_entry() -> None:
    assert set(BUILTIN_FACTS) <= set(UNITS)


def test_json_lists_builtin_window_and_pack_facts_with_types_and_sources() -> None:
    result = run_bot4("rules", "facts", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["order.leverage"]["type"] == "number"
    assert rows["order.leverage"]["unit"] == "x"
    assert rows["order.has_stop_loss"]["type"] == "bool"
    assert rows["fill.stop_out"]["stages"] == ["fill"]
    assert rows["window.orders_1m"]["source"].startswith("window (")
    assert rows["correlation.max"]["source"] == "pack correlation"
    assert "Pearson" in rows["correlation.max"]["description"]


def test_no_packs_leaves_the_packs_out(tmp_path: Path) -> None:
    # (The default policy reads correlation.max, so without packs it does not compile.)
    (tmp_path / "10-r.yaml").write_text(
        "rules:\n  - name: x\n    description: d\n"
        "    when: order.qty > 1\n    reject: {reason: r}\n"
    )
    result = run_bot4("rules", "facts", str(tmp_path), "--json", "--no-packs")
    assert result.returncode == 0, result.stderr
    names = {row["name"] for row in json.loads(result.stdout)}
    assert "correlation.max" not in names
    assert "order.qty" in names


def test_a_policy_that_does_not_compile_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "10-bad.yaml"
    bad.write_text(
        "rules:\n  - name: x\n    description: d\n"
        "    when: order.nope > 1\n    reject: {reason: r}\n"
    )
    result = run_bot4("rules", "facts", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"{bad}:4:")
