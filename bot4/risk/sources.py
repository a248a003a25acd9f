"""Find and read rule files: every entry is a readable regular file, or an error naming it.

A rules path is a file or a directory. In a directory every entry whose name
ends in ``.yaml`` is a rule file, in name order; hidden names (starting with
``.``) are skipped, as a shell glob skips them: editors keep their lock and
swap files there (Emacs's ``.#x.yaml`` is a dangling link by design).

An entry that is not a readable regular file holding UTF-8 text (a dangling
symlink, a symlink loop, a FIFO, a device, a directory named ``x.yaml``, a file
that cannot be opened or read) is a :class:`~bot4.errors.RuleFileError` naming
the path, never skipped: skipping it would change the policy without a word
(removing ``10-breaker.yaml`` behind a dangling link would turn the breaker off).

Reading never blocks: an entry is ``stat``-ed before it is opened, opened with
``O_NONBLOCK`` (a FIFO put there in between does not wait for a writer) and
checked again on the open descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bot4.contracts import RiskRules
from bot4.errors import RuleFileError

SUFFIX = ".yaml"
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 1 << 16


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def problem(path: Path) -> str | None:
    """Why ``path`` is not a rule file one can read, or None when it is a
    regular file (through any symlinks) that this process may open."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling symlink (its target {os.readlink(path)!r} does not exist)"
        return "no such file or directory"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"cannot stat: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a rule file"
    if not stat.S_ISREG(st.st_mode):
        return f"is {_kind(st.st_mode)}, not a regular file"
    return None


def read_bytes(path: Path, limit: int) -> bytes:
    """The bytes of one regular file of at most ``limit`` bytes. Never blocks
    on a FIFO or a device; every refusal is a RuleFileError naming ``path``."""
    name = str(path)
    why = problem(path)
    if why is not None:
        raise RuleFileError(name, None, why)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise RuleFileError(name, None, f"cannot open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise RuleFileError(name, None, f"is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise RuleFileError(name, None, f"larger than {limit} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # grew after fstat
                raise RuleFileError(name, None, f"larger than {limit} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise RuleFileError(name, None, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_text(path: Path, limit: int) -> str:
    """:func:`read_bytes`, decoded as UTF-8 (strictly: a stray byte is an error
    naming its offset, not a replacement character in a reason)."""
    raw = read_bytes(path, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RuleFileError(
            str(path), None, f"not UTF-8 text: {exc.reason} at byte {exc.start}"
        ) from None


def _directory(path: Path) -> list[Path]:
    try:
        with os.scandir(path) as entries:
            names = sorted(
                e.name for e in entries if e.name.endswith(SUFFIX) and not e.name.startswith(".")
            )
    except OSError as exc:
        raise RuleFileError(
            str(path), None, f"cannot list the directory: {exc.strerror or exc}"
        ) from None
    if not names:
        raise RuleFileError(str(path), None, f"no *{SUFFIX} rule files in this directory")
    files = [path / n for n in names]
    for f in files:
        why = problem(f)
        if why is not None:
            raise RuleFileError(str(f), None, why)
    return files


def rule_files(paths: Sequence[Path], packs: Sequence[RiskRules] = ()) -> list[Path]:
    """Every rule file of a policy: the given files, each directory's
    ``*.yaml`` entries, then each pack's ``rule_files()``; a file named twice
    (through a link, or by two paths) once. Raises RuleFileError."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            is_dir = False  # problem() below says why
        if is_dir:
            files.extend(_directory(path))
            continue
        why = problem(path)
        if why is not None:
            raise RuleFileError(str(path), None, why)
        files.append(path)
    for pack in packs:
        try:
            extra = [Path(p) for p in pack.rule_files()]
        except Exception as exc:  # a pack is third-party code
            raise RuleFileError(
                f"risk pack {pack.name!r}", None, f"rule_files() failed: {exc}"
            ) from None
        for path in extra:
            why = problem(path)
            if why is not None:
                raise RuleFileError(str(path), None, f"rule file of risk pack {pack.name!r}: {why}")
            files.append(path)
    if not files:
        raise RuleFileError("<policy>", None, "no rule files given")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def fingerprint(paths: Sequence[Path], packs: Sequence[RiskRules]) -> tuple[Any, ...]:
    """A cheap fingerprint of the rule files, to notice a change without
    reading them (contents are hashed only when it moves). It holds each
    file's identity, mode, mtime, ctime and size: ``chmod 000`` or a link
    pointed elsewhere moves the ctime or the inode, not the mtime. A path
    that is not a rule file makes the fingerprint the error itself."""
    try:
        files = rule_files(paths, packs)
    except RuleFileError as exc:
        return ("error", str(exc))
    out: list[Any] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError as exc:
            out.append((str(f), "error", exc.errno))
            continue
        out.append(
            (str(f), st.st_dev, st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        )
    return tuple(out)
