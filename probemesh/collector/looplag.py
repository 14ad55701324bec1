"""How long the collector's event loop was held up: its own lag, measured and exported.

Every task of the collector (gRPC streams, ingest, /metrics, the API) shares
one event loop, so anything that blocks it delays them all. A task sleeps
``interval`` seconds again and again; how much later than asked it wakes up is
the time the loop was busy with something else. The lags go into a histogram
(``probemesh_event_loop_lag_seconds``) and the largest of the last minute into
a gauge, so a dashboard or bench/loop_lag.py can read its p99 and its maximum.

On a shared host a lag is partly the loop's own work and partly time the
process waited for a CPU (or for the GIL, held by one of its threads). The
loop thread's CPU time over the same wait tells them apart: the part of each
lag it spent on a CPU goes into ``probemesh_event_loop_busy_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WINDOW = 60  # seconds covered by the max gauge


class LoopLag:
    """Samples the running loop's lag; export with metric_families."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.busy_counts = [0] * (len(BUCKETS) + 1)
        self.busy_total = 0.0
        # (second, largest lag in it), newest last; at most WINDOW entries
        self._maxima: collections.deque[tuple[int, float]] = collections.deque()

    def observe(self, lag: float, busy: float) -> None:
        """One wake-up lag, and the part of it the loop thread spent running."""
        self.counts[bisect_left(BUCKETS, lag)] += 1
        self.total += lag
        self.busy_counts[bisect_left(BUCKETS, busy)] += 1
        self.busy_total += busy
        second = int(time.monotonic())
        maxima = self._maxima
        if maxima and maxima[-1][0] == second:
            if lag > maxima[-1][1]:
                maxima[-1] = (second, lag)
        else:
            maxima.append((second, lag))
        while maxima and maxima[0][0] <= second - WINDOW:
            maxima.popleft()

    @property
    def recent_max(self) -> float:
        """The largest lag of the last WINDOW seconds."""
        horizon = int(time.monotonic()) - WINDOW
        return max((lag for second, lag in self._maxima if second > horizon), default=0.0)

    async def run(self) -> None:
        """Measure until cancelled.

        Each sample is a bare timer callback that arms the next one: a sleeping
        task would add a future and a task step to every one of the hundred
        wake-ups a second."""
        loop = asyncio.get_running_loop()
        self._arm(loop)
        try:
            await loop.create_future()  # until cancelled
        finally:
            self._timer.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        asked = loop.time() + self.interval
        self._timer = loop.call_at(asked, self._woke, loop, asked, time.thread_time())

    def _woke(self, loop: asyncio.AbstractEventLoop, asked: float, cpu_before: float) -> None:
        lag = max(0.0, loop.time() - asked)
        self.observe(lag, min(lag, time.thread_time() - cpu_before))
        self._arm(loop)

    def metric_families(self) -> Iterator[Metric]:
        yield histogram_family(
            "probemesh_event_loop_lag_seconds",
            "How much later than asked the collector's event loop ran a timer "
            "(sampled every 10 ms): the time it was busy with something else",
            BUCKETS,
            [([], self.counts, self.total)],
        )
        yield histogram_family(
            "probemesh_event_loop_busy_lag_seconds",
            "The part of each event-loop lag that the loop thread spent on a CPU; "
            "the rest it waited for a CPU or for the GIL",
            BUCKETS,
            [([], self.busy_counts, self.busy_total)],
        )
        yield GaugeMetricFamily(
            "probemesh_event_loop_lag_max_seconds",
            "Largest event-loop lag of the last minute",
            value=self.recent_max,
        )


def histogram_family(
    name: str,
    help_text: str,
    buckets: Sequence[float],
    series: Iterable[tuple[list[str], list[int], float]],
    labels: Sequence[str] = (),
) -> Metric:
    """A histogram family from per-bucket counts (len(buckets) + 1 each, the
    last one above every bound) and their sum, one entry of series per label set."""
    histogram = HistogramMetricFamily(name, help_text, labels=labels)
    bounds = [*(f"{bound:g}" for bound in buckets), "+Inf"]
    for values, counts, total in series:
        cumulative, running = [], 0
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        histogram.add_metric(values, cumulative, total)
    return histogram
