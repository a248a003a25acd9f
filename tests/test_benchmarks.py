"""The benchmark harness's own logic: reading a child's result, interleaving
the two sides, medians and ratios, and the one-line refusal of a bad
``--vs-nautilus``. No benchmark runs here: the children are tiny scripts that
print the anchor's output format."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_kernel  # noqa: E402 - the benchmarks are scripts in their own folder
import harness  # noqa: E402

# Prints what nautilus_bench.py prints around its result: a warning on
# stderr, log lines, then `RESULT {json}`; and notes each call in a log file
# so that the test can see the order the harness ran them in.
FAKE_ANCHOR = textwrap.dedent(
    """
    import json, sys
    log, side, scenario, run_cpu = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    with open(log, "a") as f:
        f.write(f"{side} {scenario}\\n")
    print("Pandas4Warning: Timestamp.utcnow is deprecated", file=sys.stderr)
    print("2024-01-01T00:00:00Z [INFO] BENCH-001.BacktestEngine: RESULT of nothing")
    n = 1000
    res = {"scenario": scenario, "n_ticks": n, "run_s": run_cpu * 2, "run_cpu_s": run_cpu,
           "ticks_per_s": n / (run_cpu * 2), "submitted": n // 10, "denied": 0,
           "deny_reasons": {}, "filled": n // 10,
           "orders_per_s": (n // 10) / (run_cpu * 2), "peak_rss_mib": 300.0}
    print("RESULT " + json.dumps(res), flush=True)
    print("engine disposed")
    """
)


@pytest.fixture
def fake_anchor(tmp_path: Path) -> Path:
    script = tmp_path / "fake_anchor.py"
    script.write_text(FAKE_ANCHOR)
    return script


def _measured(side: str, scenario: str, rnd: int, **result: Any) -> harness.Measured:
    return harness.Measured(harness.Job(side, scenario, []), rnd, result)


def test_parse_result_takes_the_last_result_line_among_other_output() -> None:
    out = 'RESULT {"run_s": 1}\nlog line\nRESULT {"run_s": 2, "x": null}\ndone\n'
    assert harness.parse_result(out) == {"run_s": 2, "x": None}


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("no result here\n", "no 'RESULT {...}' line"),
        ("RESULT {not json\n", "unreadable result line"),
        ("RESULT [1, 2]\n", "not a JSON object"),
    ],
)
def test_parse_result_says_what_is_wrong_in_one_line(stdout: str, expected: str) -> None:
    with pytest.raises(harness.HarnessError, match=expected) as err:
        harness.parse_result(stdout)
    assert "\n" not in str(err.value)


def test_interleave_runs_the_sides_in_turn_each_round(tmp_path: Path, fake_anchor: Path) -> None:
    log = tmp_path / "calls.log"

    def job(side: str, scenario: str, cpu: str) -> harness.Job:
        return harness.Job(
            side, scenario, [sys.executable, str(fake_anchor), str(log), side, scenario, cpu]
        )

    jobs = [job("bot4", "noop", "0.5"), job("nautilus", "noop", "0.25")]
    seen: list[tuple[int, str]] = []
    done = harness.interleave(jobs, 3, progress=lambda m: seen.append((m.round, m.job.side)))
    calls = log.read_text().splitlines()
    assert calls == ["bot4 noop", "nautilus noop"] * 3
    assert seen == [(r, s) for r in range(3) for s in ("bot4", "nautilus")]
    # The RESULT line is read through the noise, and the harness adds what
    # the kernel accounted for the child process itself.
    first = done[0].result
    assert first["run_cpu_s"] == 0.5
    assert first["scenario"] == "noop"
    assert first["child_cpu_s"] > 0
    assert first["child_peak_rss_mib"] > 1


def test_a_failing_child_is_one_line_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "boom.py"
    script.write_text("import sys\nprint('starting')\nsys.exit('no engine today')\n")
    with pytest.raises(harness.HarnessError, match="exited with 1: no engine today") as err:
        harness.run_child([sys.executable, str(script)])
    assert str(script) in str(err.value)
    assert "\n" not in str(err.value)


def test_spread_is_median_and_half_the_range() -> None:
    s = harness.Spread.of([110.0, 90.0, 100.0])
    assert (s.median, s.low, s.high, s.n) == (100.0, 90.0, 110.0, 3)
    assert s.pct == pytest.approx(10.0)


def test_ratios_come_from_the_medians_of_one_run() -> None:
    done = []
    # bot4 noop CPU rates 80, 100, 120 (median 100); NT's 190, 200, 400 (median 200).
    for r, (ours, theirs) in enumerate([(80, 190), (100, 200), (120, 400)]):
        done.append(
            _measured(
                "bot4",
                "noop",
                r,
                n_ticks=1000,
                ticks_per_s=ours / 2,
                ticks_per_cpu_s=ours,
                child_peak_rss_mib=50.0,
                run_s=1.0,
                run_cpu_s=1.0,
            )
        )
        done.append(
            _measured(
                "nautilus",
                "noop",
                r,
                n_ticks=1000,
                ticks_per_s=theirs / 4,
                ticks_per_cpu_s=theirs,
                child_peak_rss_mib=500.0,
                run_s=1.0,
                run_cpu_s=1.0,
            )
        )
    (q,) = bench_kernel.ratios(bench_kernel.summarize(done))
    assert (q["scenario"], q["against"], q["unit"]) == ("noop", "noop", "ticks/s")
    assert q["cpu"] == pytest.approx(0.5)
    assert q["wall"] == pytest.approx((100 / 2) / (200 / 4))
    assert q["rss"] == pytest.approx(0.1)


def test_orders_compare_with_the_anchor_and_its_bypass() -> None:
    done = []
    for side, scenario, cpu in [
        ("bot4", "orders", 1000.0),
        ("nautilus", "orders", 1250.0),
        ("nautilus", "bypass", 2000.0),
    ]:
        done.append(
            _measured(
                side,
                scenario,
                0,
                n_ticks=10_000,
                ticks_per_s=cpu * 10,
                ticks_per_cpu_s=cpu * 10,
                orders_per_s=cpu,
                orders_per_cpu_s=cpu,
                child_peak_rss_mib=100.0,
                run_s=1.0,
                run_cpu_s=1.0,
            )
        )
    found = {q["against"]: q for q in bench_kernel.ratios(bench_kernel.summarize(done))}
    assert found["orders"]["cpu"] == pytest.approx(0.8)
    assert found["bypass"]["cpu"] == pytest.approx(0.5)
    assert found["orders"]["unit"] == "orders/s"


def test_the_anchor_reports_wall_rates_and_gets_cpu_rates_alike() -> None:
    res = bench_kernel._with_cpu_rates(
        {"n_ticks": 1000, "run_cpu_s": 0.5, "submitted": 100, "orders_per_s": 50.0}
    )
    assert res["ticks_per_cpu_s"] == 2000
    assert res["orders_per_cpu_s"] == 200


def test_the_plan_alternates_bot4_and_the_anchor_on_the_same_ticks(tmp_path: Path) -> None:
    anchor = tmp_path / "nautilus_bench.py"
    jobs, once = bench_kernel.plan(False, None, ("/opt/nt/python", anchor))
    assert [(j.side, j.scenario) for j in jobs] == [
        ("bot4", "noop"),
        ("nautilus", "noop"),
        ("bot4", "orders"),
        ("nautilus", "orders"),
        ("nautilus", "bypass"),
    ]

    def n_of(job: harness.Job) -> int:
        flag = "--ticks" if job.side == "bot4" else "--n"
        return int(job.argv[list(job.argv).index(flag) + 1])

    assert [n_of(j) for j in jobs] == [1_000_000, 1_000_000, 200_000, 200_000, 200_000]
    assert jobs[1].argv[:4] == ["/opt/nt/python", str(anchor), "run", "--scenario"]
    assert jobs[3].argv[-2:] == ["--every", "10"]
    assert [j.scenario for j in once] == ["oversized", "flat", "perps"]
    assert [n_of(j) for j in once] == [200_000, 1_000_000, 200_000]
    quick, _ = bench_kernel.plan(True, None, None)
    assert {j.scenario: n_of(j) for j in quick} == {
        "noop": 100_000,
        "orders": 20_000,
        "oversized": 20_000,
        "flat": 100_000,
        "perps": 20_000,
    }


def test_the_perps_case_trades_a_perpetual_at_leverage_with_margin_on() -> None:
    """The perpetuals variant runs through the kernel's margin path: the
    paper venue's isolated margin at 3x on BTC-USDT-PERP, every order filled."""
    result = bench_kernel.child("perps", 2_000)
    assert result["submitted"] == result["approved"] == result["filled"] == 200
    assert result["deny_reasons"] == {}
    assert result["margin"] == {"leverage": "3", "mode": "isolated"}


def test_ticks_follow_the_anchors_walk_and_are_built_before_the_run() -> None:
    import random

    rng = random.Random(12345)  # the anchor's generator, drawn the same way
    px = 500_000
    expected = []
    for _ in range(200):
        px += rng.choice((-2, -1, 0, 1, 2))
        expected.append(px)
    assert bench_kernel.price_path(200) == expected
    ticks = bench_kernel.build_ticks(3)
    assert isinstance(ticks, list)
    assert len(ticks) == 3
    first = ticks[0]
    assert first.last == Decimal(expected[0]).scaleb(-1)
    assert (first.ask - first.last, first.last - first.bid) == (Decimal("0.05"),) * 2
    assert first.timestamp == datetime(2024, 1, 1, tzinfo=UTC)
    assert ticks[2].timestamp - ticks[1].timestamp == timedelta(milliseconds=100)
    assert first.symbol == "BTC-USDT"
    assert first.volume == 10


def test_anchor_script_named_but_missing_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(harness.ANCHOR_ENV, str(tmp_path / "nope.py"))
    with pytest.raises(harness.UsageError, match=harness.ANCHOR_ENV):
        harness.anchor_script()
    real = tmp_path / "bench.py"
    real.write_text("")
    monkeypatch.setenv(harness.ANCHOR_ENV, str(real))
    assert harness.anchor_script() == real
    with pytest.raises(harness.UsageError, match="--nautilus-script"):
        harness.anchor_script(str(tmp_path / "other.py"))


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_vs_nautilus_without_that_interpreter_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nt-venv" / "bin" / "python"
    result = _bench("--vs-nautilus", str(missing), "bench_kernel")
    assert result.returncode == 2
    assert result.stdout == ""  # refused before any benchmark started
    assert result.stderr.strip().splitlines() == [
        f"bench: --vs-nautilus: no Python interpreter at {str(missing)!r}"
    ]


def test_vs_nautilus_with_a_python_lacking_nautilus_is_one_line_and_exit_2(
    tmp_path: Path, fake_anchor: Path
) -> None:
    # A real interpreter that cannot import nautilus_trader whatever is
    # installed: this one without its site-packages.
    python = tmp_path / "python-no-site"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    result = _bench("--vs-nautilus", str(python), "--nautilus-script", str(fake_anchor))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"bench: --vs-nautilus: {python} cannot import nautilus_trader "
        "(see ../shared/bench/README.md for its set-up)"
    ]


def test_conditions_line_states_date_load_cpu_and_python() -> None:
    line = harness.Conditions().line()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert today in line
    assert "at start" in line
    assert "at end" in line
    assert "Python 3." in line
    assert "CPUs (" in line


def test_dev_bench_reads_a_relative_interpreter_from_the_callers_folder(
    tmp_path: Path,
    fake_anchor: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bot4_dev_script", REPO / "dev.py")
    assert spec is not None
    assert spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    # The venv is this interpreter's; its set-up is not what is tested here.
    monkeypatch.setattr(dev, "setup", lambda: Path(sys.executable).parent)
    (tmp_path / "nt").mkdir()
    python = tmp_path / "nt" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    code = dev.main(["bench", "--vs-nautilus", "nt/python", "--nautilus-script", str(fake_anchor)])
    assert code == 2
    # Found relative to the caller's folder: refused for lacking NautilusTrader,
    # not for being absent.
    assert capfd.readouterr().err.strip().splitlines() == [
        "bench: --vs-nautilus: nt/python cannot import nautilus_trader "
        "(see ../shared/bench/README.md for its set-up)"
    ]
