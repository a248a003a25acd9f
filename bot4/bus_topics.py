"""Topic and pattern syntax of the event bus: validation and matching.

A topic is dot-separated segments, each non-empty and free of whitespace,
``*`` and ``#``; a pattern may also use ``*`` for exactly one segment and,
as its last segment, ``#`` for zero or more (see :mod:`bot4.bus`).
:func:`topic_matches` is the public test.  The bus compiles each pattern
once (:func:`_compile_pattern`) and matches a topic against the compiled
form (:func:`_match`) only when its route cache misses, so none of this is
on the per-event path.  The recorder's ``replay`` filters with it too.
"""

from __future__ import annotations

import re

__all__ = ["topic_matches"]

_SEGMENT = r"[^\s.*#]+"
_TOPIC_RE = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_SEGMENT_RE = re.compile(rf"{_SEGMENT}|\*|#")


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str):
        raise TypeError(f"invalid topic {topic!r}: not a string")
    if _TOPIC_RE.fullmatch(topic) is None:
        raise ValueError(
            f"invalid topic {topic!r}: expected non-empty dot-separated "
            "segments without whitespace, '*' or '#'"
        )


def _compile_pattern(pattern: str) -> tuple[tuple[str, ...], bool]:
    """Split a pattern into (fixed segments, ends with '#')."""
    if not isinstance(pattern, str):
        raise TypeError(f"invalid pattern {pattern!r}: not a string")
    segments = pattern.split(".")
    for i, seg in enumerate(segments):
        if _PATTERN_SEGMENT_RE.fullmatch(seg) is None:
            raise ValueError(
                f"invalid pattern {pattern!r}: segment {seg!r} must be "
                "non-empty, without whitespace, and '*'/'#' must fill a "
                "whole segment"
            )
        if seg == "#" and i != len(segments) - 1:
            raise ValueError(
                f"invalid pattern {pattern!r}: '#' is only allowed as the last segment"
            )
    if segments[-1] == "#":
        return tuple(segments[:-1]), True
    return tuple(segments), False


def _match(fixed: tuple[str, ...], tail: bool, segments: list[str]) -> bool:
    if len(segments) != len(fixed) and not (tail and len(segments) >= len(fixed)):
        return False
    return all(want == "*" or want == got for want, got in zip(fixed, segments, strict=False))


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether ``topic`` matches ``pattern``; both are validated."""
    fixed, tail = _compile_pattern(pattern)
    _check_topic(topic)
    return _match(fixed, tail, topic.split("."))
