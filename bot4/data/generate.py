"""Generate the bundled sample ticks: ``python -m bot4.data.generate --out FILE``.

Two days of one-second top-of-book quotes for BTC-USDT (around 50,000) and
ETH-USDT (around 3,000) whose returns are correlated (rho 0.8), with ordinary
volatility (about 65% and 80% a year, clustered in ten-minute regimes), a
crash of more than 12% within 45 minutes on day one, a partial rebound, and a
rally on day two, so that drawdown and stop-loss rules visibly fire.

Reproducible to the byte on any platform: the only randomness is a seeded
``random.Random`` and the only float operations are +, -, *, / and sqrt, which
IEEE 754 rounds identically everywhere (``random.gauss`` is avoided because it
uses log/cos from the platform's maths library). Normal shocks are Irwin-Hall
sums of twelve uniforms. Prices are held as integer cents before formatting.
The gzip header carries no file name and mtime 0.
"""

from __future__ import annotations

import argparse
import gzip
import io
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["HEADER", "generate_csv", "main", "write_sample"]

HEADER = "timestamp,symbol,bid,ask,last,volume\n"
START = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 2
SEED = 20240301
RHO = 0.8

# Per-second volatility: 65%/year for BTC, 80% for ETH (sigma * sqrt(seconds per year)).
SIGMA_BTC = 0.65 / 5615.7
SIGMA_ETH = 0.80 / 5615.7

# Scripted moves, as (start second, end second, per-second drift BTC, ETH, vol factor).
# Per-second drifts compound: (1 + d) ** n; the values were chosen so that the
# crash takes BTC down about 13% and ETH about 16% in 45 minutes.
EVENTS = (
    (13 * 3600, 13 * 3600 + 2700, -5.2e-5, -6.5e-5, 3.0),  # day 1, 13:00-13:45: crash
    (13 * 3600 + 2700, 17 * 3600, 3.3e-6, 4.0e-6, 1.8),  # rebound, partial
    (86400 + 8 * 3600, 86400 + 12 * 3600, 6.0e-6, 8.0e-6, 1.4),  # day 2, 08:00-12:00: rally
)


def _normal(rng: random.Random) -> float:
    """Approximately standard normal: sum of 12 uniforms minus 6 (variance 1)."""
    r = rng.random
    return (r() + r() + r() + r() + r() + r() + r() + r() + r() + r() + r() + r()) - 6.0


def _cents(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


def _milli(m: int) -> str:
    return f"{m // 1000}.{m % 1000:03d}"


def generate_csv(days: int = DAYS, seed: int = SEED) -> Iterator[str]:
    """Yield the CSV text, header first, one line per tick."""
    rng = random.Random(seed)
    yield HEADER
    btc, eth = 50000.0, 3000.0
    ortho = (1.0 - RHO * RHO) ** 0.5
    regime = 1.0
    for sec in range(days * 86400):
        if sec % 600 == 0:
            regime = 0.7 + 0.8 * rng.random()  # volatility clusters in 10-minute regimes
        drift_b = drift_e = 0.0
        factor = 1.0
        for start, end, db, de, vf in EVENTS:
            if start <= sec < end:
                drift_b, drift_e, factor = db, de, vf
        z1 = _normal(rng)
        z2 = RHO * z1 + ortho * _normal(rng)
        btc *= 1.0 + drift_b + SIGMA_BTC * regime * factor * z1
        eth *= 1.0 + drift_e + SIGMA_ETH * regime * factor * z2
        ts = (START + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for symbol, mid, wide, size_lo, size_hi in (
            ("BTC-USDT", btc, 40, 50, 2500),
            ("ETH-USDT", eth, 6, 500, 30000),
        ):
            u = rng.random()
            spread = 1 + int(u * u * wide * factor)  # in cents; wider in a crash
            bid = round(mid * 100.0) - spread // 2
            ask = bid + spread
            flip = rng.random()
            last = bid if flip < 0.5 else ask
            size = size_lo + int(rng.random() * rng.random() * size_hi)  # thousandths
            yield f"{ts},{symbol},{_cents(bid)},{_cents(ask)},{_cents(last)},{_milli(size)}\n"


def write_sample(out: Path, days: int = DAYS, seed: int = SEED) -> None:
    """Write the gzip CSV to ``out`` (deterministic bytes)."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        chunk: list[str] = []
        for line in generate_csv(days, seed):
            chunk.append(line)
            if len(chunk) >= 4096:
                gz.write("".join(chunk).encode("ascii"))
                chunk.clear()
        gz.write("".join(chunk).encode("ascii"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(raw.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot4.data.generate", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="file to write (.csv.gz)")
    parser.add_argument("--days", type=int, default=DAYS, help=f"days of ticks (default {DAYS})")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")
    write_sample(args.out, args.days, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
