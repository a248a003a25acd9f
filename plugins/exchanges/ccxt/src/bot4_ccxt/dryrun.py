"""The README's dry-run recipe as one call, for tests: a local fake venue
started as its own process from a data file, and ``bot4 run --exchange ccxt``
against it, to the data's end.

:func:`dry_run` starts ``python -m bot4_ccxt.fakebinance`` on a free port with
the wire format asked for (``spot``, ``usdm``, ``bybit``, ``bybit-spot``),
writes a session config pointing the plugin at it (keys from the environment,
as a user's would be), runs the session (it ends by itself: ``max_idle``),
stops the venue and returns the finished ``bot4 run``. :func:`sine_ticks`
writes a small tick file whose moving averages cross a few times.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bot4_ccxt.fakebinance import API_KEY, SECRET

__all__ = ["dry_run", "sine_ticks"]


def sine_ticks(path: Path, symbol: str, count: int = 120) -> None:
    """``count`` one-second ticks of ``symbol`` swinging around 100."""
    rows = ["timestamp,symbol,bid,ask,last,volume"]
    for i in range(count):
        price = 100 + 5 * math.sin(i / 6)
        rows.append(
            f"2024-03-01T00:{i // 60:02d}:{i % 60:02d}Z,{symbol},"
            f"{price:.2f},{price + 0.02:.2f},{price:.2f},5"
        )
    path.write_text("\n".join(rows) + "\n")


def dry_run(
    out: Path,
    *,
    data: Path,
    wire: str,
    exchange: str,
    kind: str,
    symbol: str,
    leverage: str,
    hold: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the sma_cross strategy on ``symbol`` through ccxt against a fake
    venue replaying ``data``; ``hold`` (``BTC=100``) is what a spot account
    holds at the start. The session writes into ``out``; its stdout is the
    summary as JSON."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot4_ccxt.fakebinance",
            "--venue",
            wire,
            "--port",
            "0",
            "--data",
            str(data),
            "--interval",
            "0.05",
            # The ticks start when bot4 first asks for a quote: a bot4 slow to
            # start on a loaded machine would otherwise miss them.
            "--start-on-request",
            *(arg for held in hold for arg in ("--hold", held)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[-1]
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake venue did not start: {url!r}")
        out.mkdir(parents=True, exist_ok=True)
        config = out / "session.yaml"
        config.write_text(
            "exchange:\n"
            "  name: ccxt\n"
            f"  exchange: {exchange}\n"
            f"  type: {kind}\n"
            f"  api_url: {url}\n"
            "  api_key_env: DRY_RUN_API_KEY\n"
            "  secret_env: DRY_RUN_SECRET\n"
            f"  symbols: [{symbol}]\n"
            "  poll_interval: 0.02\n"
            "  max_idle: 1.5\n"
            "strategies:\n"
            "  - name: sma_cross\n"
            f"    params: {{fast: 3, slow: 8, size: '0.5', leverage: '{leverage}', "
            f"symbols: [{symbol}],\n"
            "             stop_loss_pct: '20', take_profit_pct: '20'}\n"
        )
        env = {**os.environ, "DRY_RUN_API_KEY": API_KEY, "DRY_RUN_SECRET": SECRET}
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "bot4",
                "run",
                "--exchange",
                "ccxt",
                "--config",
                str(config),
                "--out",
                str(out),
                "--no-chart",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        if server.stdout is not None:
            server.stdout.close()
