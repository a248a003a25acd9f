"""write_chart: a real PNG of the right size with something drawn on it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from bot4.bus import open_bus
from bot4.chart import write_chart
from bot4.model import Fill, MarketData, RiskAction, RiskActionKind
from bot4.portfolio import PortfolioTracker
from bot4.report import SessionReport

D = Decimal
T0 = datetime(2024, 3, 1, tzinfo=UTC)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def synthetic_session(ticks: int = 3000) -> SessionReport:
    """Two symbols, a tick every 10 s, a few round trips, a crash of about 25 %
    at two thirds of the run with a breaker trip and emergency closes, and a
    partial rebound. Deterministic: prices follow a fixed zig-zag."""
    tracker = PortfolioTracker(D(10_000))
    report = SessionReport(tracker, sample_every_s=120)
    base = {"BTC-USDT": D(50_000), "ETH-USDT": D(3_000)}
    qty = {"BTC-USDT": D("0.05"), "ETH-USDT": D("0.8")}
    crash = ticks * 2 // 3
    n = 0
    async with open_bus() as bus:
        report.attach(bus)

        async def fill(symbol: str, side: str, size: Decimal, price: Decimal, t: datetime) -> None:
            nonlocal n
            n += 1
            f = Fill(f"f{n}", f"o{n}", symbol, side, size, price, price * size / 1000, t)
            tracker.apply(f)
            await bus.publish(f"fill.{symbol}", f, ts=int(t.timestamp() * 1e9))

        for i in range(ticks):
            t = T0 + timedelta(seconds=10 * i)
            ts = int(t.timestamp() * 1e9)
            wave = D((i * 7) % 40 - 20) / 1000  # +-2 % zig-zag
            if i < crash:
                level = 1 + D(i) / ticks / 5 + wave
            elif i < crash + 60:
                level = 1 + D(crash) / ticks / 5 - D(i - crash) / 200  # -30 % in 10 min
            else:
                level = D("0.95") + D(i - crash) / ticks / 3 + wave
            for symbol, start in base.items():
                price = (start * level).quantize(D("0.01"))
                tracker.mark(symbol, price)
                await bus.publish(
                    f"market.{symbol}",
                    MarketData(symbol, "paper", price, price, price, D(1), t),
                    ts=ts,
                )
                if i < crash and i % 150 == 10:
                    await fill(symbol, "buy", qty[symbol], price, t)
                elif i < crash and i % 150 == 90 and tracker.qty(symbol):
                    await fill(symbol, "sell", qty[symbol], price, t)
            if i == crash + 20:
                trip = RiskAction(RiskActionKind.TRIP_BREAKER, None, "breaker", "drawdown 10 %")
                await bus.publish("risk.action", trip, ts=ts)
                for symbol, start in base.items():
                    if tracker.qty(symbol):
                        close = RiskAction(
                            RiskActionKind.EMERGENCY_CLOSE, symbol, "breaker", "trip"
                        )
                        await bus.publish("risk.action", close, ts=ts)
                        price = (start * level).quantize(D("0.01"))
                        await fill(symbol, "sell", tracker.qty(symbol), price, t)
            await trio.lowlevel.checkpoint()
    return report


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    assert head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.mark.trio
async def test_chart_is_a_png_of_the_expected_size_with_content(tmp_path: Path) -> None:
    import matplotlib.image

    report = await synthetic_session()
    assert report.breaker_trips
    out = write_chart(report, tmp_path / "sub" / "chart.png", breaker_drawdown=0.10)
    assert out == tmp_path / "sub" / "chart.png"
    assert png_size(out) == (1200, 900)
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (900, 1200)
    rgb = pixels[..., :3]
    # Not blank: many distinct colours and a good share of non-white pixels.
    assert rgb.std() > 0.05
    assert (rgb.reshape(-1, 3) < 0.9).any(axis=1).mean() > 0.05
    # The green buy and red sell markers are drawn.
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((green > 0.5) & (red < 0.3) & (blue < 0.4)).sum() > 20
    assert ((red > 0.7) & (green < 0.25) & (blue < 0.25)).sum() > 20


def test_chart_of_an_empty_report(tmp_path: Path) -> None:
    report = SessionReport(PortfolioTracker(D(100)))
    out = write_chart(report, tmp_path / "empty.png", title="nothing happened")
    assert png_size(out) == (1200, 900)


def test_missing_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import matplotlib.figure` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'bot4\[chart\]'"):
        write_chart(SessionReport(PortfolioTracker(D(100))), tmp_path / "x.png")


def test_importing_bot4_does_not_import_matplotlib() -> None:
    code = (
        "import sys, bot4, bot4.chart, bot4.report\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.trio
async def test_write_chart_leaves_the_pyplot_backend_alone(tmp_path: Path) -> None:
    import matplotlib

    before = matplotlib.get_backend()
    write_chart(await synthetic_session(300), tmp_path / "c.png")
    assert matplotlib.get_backend() == before
