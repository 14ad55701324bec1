"""The collector's loop-lag monitor sees a blocked loop, in its histogram and its max gauge."""

from __future__ import annotations

import asyncio
import time

from probemesh.collector.looplag import BUCKETS, LoopLag


async def test_a_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag(interval=0.01)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.1)
    time.sleep(0.3)  # noqa: ASYNC251 - the loop is held up, as by a blocking disk write
    await asyncio.sleep(0.1)
    task.cancel()
    histogram, gauge = list(lag.metric_families())
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert buckets["+Inf"] >= 5
    assert buckets["+Inf"] - buckets["0.25"] >= 1, "one wake-up came >= 0.25 s late"
    assert 0.25 <= gauge.samples[0].value < 1.0
    assert len(buckets) == len(BUCKETS) + 1
