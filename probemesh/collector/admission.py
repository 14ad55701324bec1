"""Admission of new agent streams: a few set-ups at a time, the others wait their turn.

Setting a stream up once its token and Hello are checked (the agent's check
assignment, Welcome and Checks) costs a few milliseconds of event-loop time. When a fleet
reconnects at once (a collector restart, a network blip), hundreds of
set-ups would become ready in the same loop iteration, and every stream,
ingest, /metrics and the API would wait for all of them. A bounded number of
slots spreads a wave over many short iterations instead. A stream waiting for
a slot is not refused: it waits in arrival order, and its agent sees a slower
Welcome, well within its own handshake timeout. The queue is visible on
/metrics (``probemesh_stream_admission_waiting`` and the wait histogram).
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

DEFAULT_SLOTS = 8
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)


class Slot:
    """A stream's claim on a set-up slot. release() is idempotent and does
    nothing before acquire(), so a handler releases early (once the set-up is
    done) and again, whatever happened, in its finally clause."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = False

    async def acquire(self) -> None:
        """Wait for a slot, first come first served."""
        await self._admission._acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()


class Admission:
    """At most ``slots`` stream set-ups at once, first come first served."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        self.slots = slots
        self._semaphore = asyncio.Semaphore(slots)
        self.waiting = 0
        self._wait_counts = [0] * (len(WAIT_BUCKETS) + 1)
        self._wait_sum = 0.0

    def slot(self) -> Slot:
        """A claim to acquire() once the set-up needs it."""
        return Slot(self)

    async def _acquire(self) -> None:
        started = time.monotonic()
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        waited = time.monotonic() - started
        self._wait_counts[bisect_left(WAIT_BUCKETS, waited)] += 1
        self._wait_sum += waited

    def _release(self) -> None:
        self._semaphore.release()

    def metric_families(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "probemesh_stream_admission_waiting",
            "New agent streams waiting for a set-up slot (assignment, Welcome, Checks)",
            value=self.waiting,
        )
        yield GaugeMetricFamily(
            "probemesh_stream_admission_slots",
            "Stream set-ups that may run at once",
            value=self.slots,
        )
        histogram = HistogramMetricFamily(
            "probemesh_stream_admission_wait_seconds",
            "How long a new agent stream waited for a set-up slot",
        )
        cumulative, running = [], 0
        bounds = [*(f"{b:g}" for b in WAIT_BUCKETS), "+Inf"]
        for bound, count in zip(bounds, self._wait_counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        histogram.add_metric([], cumulative, self._wait_sum)
        yield histogram
