"""Read a YAML file into plain Python values that remember their line numbers.

PyYAML's composer gives every node a start mark; we keep the line of each
mapping value and list item so that every later error can say ``file:line``.
Only the safe YAML subset is accepted (no tags that build objects), mapping
keys must be plain strings, and a duplicated key is an error: PyYAML would
silently keep the last one, which is exactly the edit a person does not see.

Keys are read from the raw node text, never resolved: in YAML 1.1 a bare
``on:`` key would otherwise become the boolean ``True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot4.errors import RuleFileError
from bot4.risk.sources import read_text

# Rule files are small and written by people; a huge file is a mistake or an
# attack on the parser, not a policy.
MAX_FILE_BYTES = 1_000_000
MAX_DEPTH = 32
# YAML aliases can make a small file expand exponentially ("billion laughs").
MAX_NODES = 100_000


class YMap(dict[str, Any]):
    """A mapping that knows its own line and the line of each value."""

    line: int
    lines: dict[str, int]


class YList(list[Any]):
    """A list that knows its own line and the line of each item."""

    line: int
    lines: list[int]


class _Scalars(SafeConstructor):
    """SafeConstructor used only for single scalar nodes."""


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _convert(node: Node, path: str, constructor: _Scalars, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise RuleFileError(
            path, _line(node), f"more than {MAX_NODES} YAML nodes (alias expansion?)"
        )
    if depth > MAX_DEPTH:
        raise RuleFileError(path, _line(node), f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, MappingNode):
        out = YMap()
        out.line = _line(node)
        out.lines = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise RuleFileError(path, _line(key_node), "mapping keys must be plain names")
            key = str(key_node.value)
            if key in out:
                raise RuleFileError(
                    path, _line(key_node), f"duplicate key {key!r} (first at line {out.lines[key]})"
                )
            out[key] = _convert(value_node, path, constructor, depth + 1, budget)
            out.lines[key] = _line(value_node)
        return out
    if isinstance(node, SequenceNode):
        items = YList()
        items.line = _line(node)
        items.lines = []
        for item in node.value:
            items.append(_convert(item, path, constructor, depth + 1, budget))
            items.lines.append(_line(item))
        return items
    if isinstance(node, ScalarNode):
        try:
            return constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            raise RuleFileError(
                path, _line(node), f"not a plain YAML value: {exc.problem}"
            ) from None
    raise RuleFileError(path, _line(node), "unsupported YAML node")


def load_yaml(path: Path, text: str | None = None) -> tuple[Any, str]:
    """Parse ``path`` (or ``text`` read from it). Returns the value and the
    text that was parsed (so callers can hash exactly what they compiled)."""
    name = str(path)
    if text is None:
        # Never blocks (a FIFO), never skips: anything but a readable regular
        # UTF-8 file is a RuleFileError naming the path.
        text = read_text(path, MAX_FILE_BYTES)
    if len(text) > MAX_FILE_BYTES:
        raise RuleFileError(name, None, f"larger than {MAX_FILE_BYTES} characters")
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        what = exc.problem or exc.context or "invalid YAML"
        raise RuleFileError(name, line, f"YAML syntax: {what}") from None
    except yaml.reader.ReaderError as exc:
        # Raised for control characters; it carries a character offset, not a line.
        line = text.count("\n", 0, max(0, int(exc.position))) + 1
        raise RuleFileError(
            name, line, f"control character U+{int(exc.character):04X} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as exc:
        raise RuleFileError(name, None, f"YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise RuleFileError(name, None, "YAML nested too deeply") from None
    if len(nodes) != 1 or nodes[0] is None:
        raise RuleFileError(name, 1, "expected exactly one YAML document")
    constructor = _Scalars()
    return _convert(nodes[0], name, constructor, 0, [MAX_NODES]), text
