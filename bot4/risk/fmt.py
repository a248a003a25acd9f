"""``bot4 rules fmt``: one canonical layout for rule and scenario files.

Like ``opa fmt`` (and ``ruff format``), the point is that two people editing
a policy never argue about layout and a review shows only what changed in
meaning. The layout:

* two-space indentation, list items of ``rules:`` / ``scenarios:`` written
  ``  - name: ...``;
* keys in one order: a file's ``description``, ``settings``, ``params``,
  ``windows``, ``rules``; a rule's ``name``, ``description``, ``on``,
  ``priority``, ``params``, ``when``, then its outcome (``approve``,
  ``reject``, ``action``); a scenario's ``name``, ``description``, ``event``,
  ``facts``, ``history``, ``expected``; keys bot4 does not know keep their
  place after the known ones (the compiler reports them, not the formatter);
* exactly one blank line between two rules (or scenarios), none doubled
  anywhere, no trailing spaces, one final newline.

What it keeps: every comment (it rides with the key or item it sits beside),
the quoting and block style the author chose (a folded ``when: >`` stays
folded, a flow mapping ``{equity: 100000}`` stays on its line), the order
of the rules themselves and the text of every expression.

It never changes meaning: the formatted text is parsed again and must load
to exactly the same data as the original, or the file is left as it was and
the command fails (a formatter bug, never a silent rewrite). YAML is read
round-trip by ruamel.yaml, which keeps comments; PyYAML (the compiler's
reader) cannot.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import attrs
import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from bot4.errors import RuleFileError
from bot4.risk.compiler import FILE_KEYS, RULE_KEYS

FILE_ORDER = (*FILE_KEYS, "scenarios")  # a scenario file's list comes where rules would
RULE_ORDER = RULE_KEYS
SCENARIO_ORDER = ("name", "description", "event", "facts", "history", "expected")
# The top-level lists whose items are separated by one blank line.
_ITEM_LISTS = {"rules": RULE_ORDER, "scenarios": SCENARIO_ORDER}
_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*):")


@attrs.frozen
class Formatted:
    """One file's result: its canonical text and whether that differs."""

    path: str
    original: str
    text: str

    @property
    def changed(self) -> bool:
        return self.text != self.original


def _yaml() -> YAML:
    y = YAML()  # round-trip: comments, quotes and flow style are kept
    y.preserve_quotes = True
    y.indent(mapping=2, sequence=4, offset=2)
    y.width = 4096  # never re-wrap an author's line
    return y


def _reorder(mapping: CommentedMap, order: Sequence[str]) -> None:
    """Put known keys first, in ``order``; the rest keep their relative order.
    A comment above the first key belongs to the mapping, so it stays on top."""
    known = [key for key in order if key in mapping]
    rest = [key for key in mapping if key not in order]
    for key in [*known, *rest]:
        mapping.move_to_end(key)


def _canonical(data: Any) -> None:
    if not isinstance(data, CommentedMap):
        return
    _reorder(data, FILE_ORDER)
    for key, order in _ITEM_LISTS.items():
        items = data.get(key)
        if isinstance(items, CommentedSeq):
            for item in items:
                if isinstance(item, CommentedMap):
                    _reorder(item, order)


def _inside_scalars(text: str) -> set[int]:
    """The (0-based) lines that continue a scalar begun on an earlier line: a
    block scalar's text, or a quoted or plain scalar written over several
    lines, where a blank line is a newline of the value and not layout."""
    inside: set[int] = set()
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        start, end = event.start_mark, event.end_mark
        if isinstance(event, yaml.ScalarEvent) and start is not None and end is not None:
            first, last = start.line, end.line
            if end.column == 0:
                last -= 1  # ends where the next line begins
            inside.update(range(first + 1, last + 1))
    return inside


def _spacing(text: str) -> str:
    """Blank lines and trailing spaces: one blank line between the items of
    a top-level ``rules:`` / ``scenarios:`` list (before the comments that
    lead an item, which are indented as the item), no blank line inside an
    item, never two blank lines anywhere. A scalar written over several
    lines (``when: >``, ``reason: |``, a long quoted string) is left exactly
    as it is: its line breaks are its value."""
    out: list[str] = []
    in_items = False
    first_item = False
    inside = _inside_scalars(text)
    for number, raw in enumerate(text.splitlines()):
        if number in inside:
            out.append(raw)  # part of a value: meaning, not layout
            continue
        line = raw.rstrip()
        top = _TOP_KEY.match(line)
        if top:
            if in_items and out and out[-1] != "":
                out.append("")  # a section after a list of items: set apart
            in_items = top.group(1) in _ITEM_LISTS
            first_item = True
        if line == "":
            if in_items:
                continue  # inside the list, the blank lines are put back below
            if out and out[-1] != "":
                out.append("")
            continue
        if in_items and line.startswith("  - "):
            # The comment lines that lead this item move with it.
            at = len(out)
            while at > 0 and out[at - 1].lstrip().startswith("#"):
                at -= 1
            for i in range(at, len(out)):
                out[i] = "  " + out[i].lstrip()
            if first_item:
                first_item = False
            elif at > 0 and out[at - 1] != "":
                out.insert(at, "")
        out.append(line)
    while out and out[-1].strip() == "":
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, path: str = "<text>") -> str:
    """The canonical layout of one rule or scenario file's text. Raises
    :class:`RuleFileError` (``path:line: ...``) for text that is not YAML, or
    if the layout would change what the file means."""
    y = _yaml()
    try:
        data = y.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise RuleFileError(path, line, f"not valid YAML: {exc.problem or exc}") from exc
    if data is None:
        return _spacing(text)
    _canonical(data)
    buffer = io.StringIO()
    y.dump(data, buffer)
    result = _spacing(buffer.getvalue())
    # The guarantee: the same data, to the last value, or nothing is written.
    if _plain(text) != _plain(result):
        raise RuleFileError(
            path,
            None,
            "bot4 rules fmt would change this file's meaning; "
            "left as it is (please report this as a bug)",
        )
    return result


def _plain(text: str) -> Any:
    # yaml.safe_load: the same reader (and so the same meaning) as the compiler.
    return yaml.safe_load(text)


def format_file(path: str) -> Formatted:
    try:
        with open(path, encoding="utf-8") as handle:
            original = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(path, None, f"cannot read: {exc}") from exc
    return Formatted(path, original, format_text(original, path))
