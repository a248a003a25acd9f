""" "Did you mean ...?" for a misspelt name: a fact, a parameter, a key.

One helper so every error that names an unknown thing suggests the same way:
for a dotted name first the names that share its last part
(``portfolio.qty`` -> ``position.qty``: the usual slip is the namespace),
then the names it begins, then the closest spellings by :func:`difflib.get_close_matches` (ratio >=
0.8, 0.7 for names of up to 8 letters, so a typo is caught and an unrelated
name is not offered); three at most.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_names(name: str, known: Iterable[str], limit: int = 3) -> list[str]:
    """The known names closest to ``name``, best first (empty if none is close)."""
    pool = sorted(set(known) - {name})
    found: list[str] = []
    if "." in name:
        leaf = name.rsplit(".", 1)[1]
        found = [c for c in pool if c.rsplit(".", 1)[-1] == leaf]
    if len(name) >= 3:  # a name cut short: max_lev -> max_leverage
        found += [c for c in pool if c.startswith(name) and c not in found]
    # A short name has few letters to match: one swap (wehn) scores 0.75.
    cutoff = 0.8 if len(name) > 8 else 0.7
    for candidate in difflib.get_close_matches(name, pool, n=limit, cutoff=cutoff):
        if candidate not in found:
            found.append(candidate)
    return found[:limit]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` (or ``'x' or 'y'``), or ``""`` when nothing is close."""
    found = close_names(name, known)
    if not found:
        return ""
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?"
