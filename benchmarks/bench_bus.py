"""Event bus benchmark: publish -> deliver latency and throughput.

    .venv/bin/python benchmarks/bench_bus.py [--quick]

Scenarios: one subscriber and fan-out to ten, each unbatched (one
``publish`` per event, the producer yielding after each, as a network-fed
producer does) and batched (``publish_batch`` of ``BATCH`` events, then a
yield).  Handlers are plain functions that record one latency sample.

Latency is taken per delivery: ``perf_counter_ns()`` in the handler minus the
event's ``ts``.  The bus is built with ``clock=time.perf_counter_ns`` for
that (a benchmark-only clock; real buses stamp epoch time), so a batched
event's latency counts from the start of its ``publish_batch`` call and
includes waiting behind the events ahead of it.  Throughput is published
events per second, from the first publish until ``drain()`` returns, with
every event delivered to every subscriber.

The seed targets were written for a Rust implementation; they are printed
beside our figures with the ratio, to show the gap honestly.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import trio

from bot4.bus import Bus, Event, open_bus

TARGET_LATENCY_NS = 50
TARGET_THROUGHPUT_EPS = 1_000_000
BATCH = 256
TOPIC = "market.BTC-USDT"


def _percentile(sorted_samples: list[int], q: float) -> int:
    index = min(len(sorted_samples) - 1, int(q * len(sorted_samples)))
    return sorted_samples[index]


def _subscribe(bus: Bus, fanout: int, samples: list[int]) -> None:
    now = time.perf_counter_ns
    record = samples.append

    def handler(event: Event) -> None:
        record(now() - event.ts)

    for i in range(fanout):
        bus.subscribe("market.*", handler, capacity=max(BATCH, 1024), name=f"sub{i}")


async def _unbatched(bus: Bus, events: int) -> None:
    publish = bus.publish
    checkpoint = trio.lowlevel.checkpoint
    for i in range(events):
        await publish(TOPIC, i)
        await checkpoint()


async def _batched(bus: Bus, events: int) -> None:
    # One list reused for every batch: the producer allocates nothing per event.
    batch = [(TOPIC, None)] * BATCH
    publish_batch = bus.publish_batch
    checkpoint = trio.lowlevel.checkpoint
    for _ in range(events // BATCH):
        await publish_batch(batch)
        await checkpoint()


async def _scenario(
    name: str, fanout: int, events: int, producer: Callable[[Bus, int], Any]
) -> dict[str, Any]:
    samples: list[int] = []
    async with open_bus(clock=time.perf_counter_ns) as bus:
        _subscribe(bus, fanout, samples)
        await producer(bus, min(events, 10 * BATCH))  # warm-up: caches, code paths
        await bus.drain()
        samples.clear()
        gc.collect()
        gc.disable()  # collections during the timed loop would dominate p99
        try:
            start = time.perf_counter_ns()
            await producer(bus, events)
            await bus.drain()
            elapsed = time.perf_counter_ns() - start
        finally:
            gc.enable()
    published = len(samples) // fanout
    samples.sort()
    p50 = _percentile(samples, 0.50)
    p99 = _percentile(samples, 0.99)
    throughput = published / (elapsed / 1e9)
    return {
        "scenario": name,
        "subscribers": fanout,
        "events": published,
        "p50_ns": p50,
        "p99_ns": p99,
        "throughput_eps": round(throughput),
        "target_latency_ns": TARGET_LATENCY_NS,
        "target_throughput_eps": TARGET_THROUGHPUT_EPS,
        # > 1 means slower than the target for latency...
        "latency_vs_target": p50 / TARGET_LATENCY_NS,
        # ...and < 1 means below the target for throughput.
        "throughput_vs_target": throughput / TARGET_THROUGHPUT_EPS,
    }


def run(quick: bool) -> list[dict[str, Any]]:
    """Run every scenario; one dict of figures per scenario."""
    events = 20_000 if quick else 200_000
    events -= events % BATCH
    scenarios: list[tuple[str, int, Callable[[Bus, int], Any]]] = [
        ("1 sub, unbatched", 1, _unbatched),
        ("1 sub, batched", 1, _batched),
        ("10 subs, unbatched", 10, _unbatched),
        ("10 subs, batched", 10, _batched),
    ]
    results: list[dict[str, Any]] = []
    for name, fanout, producer in scenarios:

        async def one(name: str = name, fanout: int = fanout, producer: Any = producer) -> None:
            results.append(await _scenario(name, fanout, events, producer))

        trio.run(one)
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'scenario':<20} {'events':>8} {'p50 ns':>9} {'p99 ns':>10} "
        f"{'target':>7} {'p50/target':>11} {'events/s':>11} {'target':>10} {'ratio':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['scenario']:<20} {r['events']:>8} {r['p50_ns']:>9,} {r['p99_ns']:>10,} "
            f"{'<' + str(r['target_latency_ns']):>7} {r['latency_vs_target']:>10,.0f}x "
            f"{r['throughput_eps']:>11,} {'>' + format(r['target_throughput_eps'], ','):>10} "
            f"{r['throughput_vs_target']:>7.3f}"
        )
    lines.append(
        "targets were written for Rust; 'p50/target' is how many times slower than "
        "the latency target, 'ratio' the fraction of the throughput target reached."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few-second run")
    args = parser.parse_args()
    print(format_table(run(args.quick)))


if __name__ == "__main__":
    main()
