"""Every guarantee the README lists names a test that exists.

The README's "What bot4 guarantees" tables pair each invariant with the
tests that prove it. A test renamed, moved or deleted would leave the
guarantee claimed with nothing proving it; this reads every row and finds
each named test function in its file.

How a row names its tests (the README's own convention): ``file.py::test``
(a file under ``tests/test_guarantees/`` unless it has a path), ``::test``
(another test of the file named before it in the row), or a path to a
whole file of tests (``tests/test_journal_facade.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUARANTEES = ROOT / "tests" / "test_guarantees"
_REF = re.compile(r"`([^`\s]*(?:\.py(?:::[A-Za-z_][\w\[\]-]*)?|::[A-Za-z_][\w\[\]-]*))`")


def _rows() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## What bot4 guarantees")
    end = text.index("\n## ", start + 1)
    rows = []
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[-1]) <= {"-", " "} or cells[-1] == "test":
            continue  # not a row of a table, its header or its rule
        rows.append(cells[-1])
    return rows


def _resolve(name: str) -> Path:
    return ROOT / name if "/" in name else GUARANTEES / name


def _defines(path: Path, test: str) -> bool:
    test = test.split("[", 1)[0]  # a parametrised case: the function
    source = path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:async\s+)?def {re.escape(test)}\(", source, re.M) is not None


def _missing(cell: str) -> list[str]:
    missing: list[str] = []
    current: Path | None = None
    refs = _REF.findall(cell)
    if not refs:
        return [f"no test named in: {cell[:80]}"]
    for ref in refs:
        file, _, test = ref.partition("::")
        if file:
            current = _resolve(file)
            if not current.is_file():
                missing.append(f"{ref}: no file {current.relative_to(ROOT)}")
                current = None
                continue
        if not test:
            continue  # a whole file
        if current is None:
            missing.append(f"{ref}: no file named before it")
        elif not _defines(current, test):
            missing.append(f"{ref}: no test {test} in {current.relative_to(ROOT)}")
    return missing


def test_every_guarantee_names_a_test_that_exists() -> None:
    rows = _rows()
    assert len(rows) > 80  # the tables were found
    missing = [m for row in rows for m in _missing(row)]
    assert missing == []


def test_a_stale_name_is_found() -> None:
    # The checker itself, on rows naming real and unreal tests.
    real = "`test_leverage.py::test_an_order_above_3x_is_rejected_by_max_leverage_even_on_an_empty_book`"  # noqa: E501 - a README cell as written
    assert _missing(real) == []
    assert _missing("`tests/test_layering.py`") == []
    assert _missing(real + ", `::test_that_never_was`") == [
        "::test_that_never_was: no test test_that_never_was in "
        "tests/test_guarantees/test_leverage.py"
    ]
    assert _missing("`test_gone.py::test_x`")[0].startswith("test_gone.py::test_x: no file")
    assert _missing("nothing named")[0].startswith("no test named")
