"""The garbage collector's pauses: fewer of them, measured and exported.

CPython's cyclic collector stops every thread while it runs, the event loop's
included. A young collection walks few objects, but their references point
into a heap of hundreds of megabytes (every check x agent pair's state), and
following them misses the CPU cache. At CPython's thresholds a collector
applying 650 results a second spent 7-13 % of its CPU collecting, more than a
thousand times a minute; what ingest allocates dies young, and with a young
threshold of 50,000 reference counting frees it before any collection has to
walk it: at that rate, a collection every few minutes (docs/benchmarks.md,
"The garbage collector's pauses").

``tune`` freezes the start-up heap and sets the thresholds; ``GcPauses`` times
every collection from ``gc.callbacks`` into
``probemesh_gc_pause_seconds{generation}``, so an operator who sees the event
loop lag (probemesh_event_loop_lag_seconds) sees how much of it is the
garbage collector's.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import Metric

from probemesh.collector.looplag import histogram_family

YOUNG_THRESHOLD = 50_000
"""Allocations less deallocations of tracked objects between two young
collections (CPython: 700); cyclic garbage waits for that many."""
MIDDLE_THRESHOLD = 20
"""Young collections between two middle ones (CPython: 10)."""
OLD_THRESHOLD = 100
"""Middle collections between two full ones, at most (CPython: 10). A full
collection walks the whole heap: about 300 ms at 40,000 pairs."""
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def tune() -> None:
    """Freeze what is loaded so far and set the collector's thresholds.

    Everything loaded before serving (modules, descriptors, checks, the state
    read back from disk) lives as long as the process: frozen, no collection
    walks it again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


class GcPauses:
    """Times every collection, per generation, from ``start`` to ``stop``."""

    def __init__(self) -> None:
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(3)]
        self.totals = [0.0, 0.0, 0.0]
        self._started: float | None = None  # the running collection's start

    def start(self) -> None:
        gc.callbacks.append(self._observe)

    def stop(self) -> None:
        gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
            return
        started, self._started = self._started, None
        if started is None:  # registered while a collection ran: its start was not seen
            return
        pause, generation = now - started, info["generation"]
        self.counts[generation][bisect_left(BUCKETS, pause)] += 1
        self.totals[generation] += pause

    def metric_families(self) -> Iterator[Metric]:
        yield histogram_family(
            "probemesh_gc_pause_seconds",
            "Collections of Python's cyclic garbage collector, by generation, and "
            "how long each held every thread of the collector, its event loop's included",
            BUCKETS,
            [([str(gen)], self.counts[gen], self.totals[gen]) for gen in range(3)],
            labels=["generation"],
        )
