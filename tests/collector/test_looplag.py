"""The collector's loop-lag monitor sees a blocked loop, in its histograms and its max gauge."""

from __future__ import annotations

import asyncio
import time

from prometheus_client.core import Metric

from probemesh.collector.looplag import BUCKETS, LoopLag


async def test_a_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag(interval=0.01)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # noqa: ASYNC251 - the loop is held up, as by a blocking disk write
    await asyncio.sleep(0.1)
    task.cancel()
    histogram, busy, gauge = list(lag.metric_families())
    buckets = _buckets(histogram)
    assert buckets["+Inf"] >= 5
    assert buckets["+Inf"] - buckets["0.25"] >= 1, "one wake-up came >= 0.25 s late"
    assert 0.25 <= gauge.samples[0].value < 1.0
    assert len(buckets) == len(BUCKETS) + 1
    busy_buckets = _buckets(busy)
    assert busy_buckets["+Inf"] == buckets["+Inf"]
    assert busy_buckets["+Inf"] - busy_buckets["0.25"] == 0, "a sleeping thread is not busy"


async def test_busy_lag_is_the_loops_own_work() -> None:
    lag = LoopLag(interval=0.01)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.1)
    spent = time.thread_time()
    while time.thread_time() - spent < 0.3:  # the loop thread computes for 0.3 s of CPU
        pass
    await asyncio.sleep(0.1)
    task.cancel()
    _, busy, _ = list(lag.metric_families())
    busy_buckets = _buckets(busy)
    assert busy_buckets["+Inf"] - busy_buckets["0.25"] >= 1, "0.3 s of the loop's own work"


def _buckets(histogram: Metric) -> dict[str, float]:
    return {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
