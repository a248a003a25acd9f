"""A PostgreSQL server of the test's own, on a free loopback port, that the
test may stop and start again (the shared test server must not be stopped).

Built from the Debian server binaries (``/usr/lib/postgresql/<n>/bin``:
initdb, pg_ctl). PostgreSQL refuses to run as root, so as root the commands
run as the ``postgres`` user (``runuser``) in a folder that user owns.
Missing binaries or user: skipped locally, a failure under CI=true.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import service_missing

__all__ = ["OwnPostgres", "own_postgres"]


def _bin_dir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnPostgres:
    def __init__(self, bin_dir: Path, folder: Path, prefix: list[str]) -> None:
        self.bin = bin_dir
        self.folder = folder
        self.data = folder / "data"
        self.prefix = prefix
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stderr or done.stdout}")

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def _processes(self) -> list[int]:
        """The postmaster and every process it started (from /proc)."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        found = [postmaster]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == postmaster:  # the parent's pid
                found.append(int(stat.parent.name))
        return found

    def pause(self) -> None:
        """Stop every process of the server (SIGSTOP): connections stay open
        and the kernel keeps accepting on its port, but nothing answers, as
        with a server whose disk hangs or a host gone quiet."""
        for pid in self._processes():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def own_postgres() -> Iterator[OwnPostgres]:
    """A started server (stopped and removed after)."""
    bin_dir = _bin_dir()
    if bin_dir is None or (shutil.which("runuser") is None and os.geteuid() == 0):
        service_missing("PostgreSQL server binaries", "no /usr/lib/postgresql/*/bin/pg_ctl")
        raise AssertionError("unreachable")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="bot4-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            service_missing("PostgreSQL server", "no postgres user to run it as")
            raise AssertionError("unreachable") from None
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    server = OwnPostgres(bin_dir, folder, prefix)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(OSError, ValueError, IndexError):
            server.resume()  # a test that paused it and failed: stop it running
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.stop()  # raises when not running (the test stopped it)
        shutil.rmtree(folder, ignore_errors=True)
