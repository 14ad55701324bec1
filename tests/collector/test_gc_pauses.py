"""The collector times each garbage collection per generation and tunes the collector's GC."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from probemesh.collector import gc_pauses
from probemesh.collector.gc_pauses import BUCKETS, GcPauses


@pytest.fixture
def no_automatic_collections() -> Iterator[None]:
    """Only the test's own gc.collect() calls run while it counts them."""
    gc.disable()
    yield
    gc.enable()


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_each_collection_is_counted_in_its_generation(no_automatic_collections: None) -> None:
    pauses = GcPauses()
    pauses.start()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.stop()
    gc.collect(2)  # after stop: not counted
    (family,) = pauses.metric_families()
    counts = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"0": 1, "1": 0, "2": 2}
    infinite = {
        s.labels["generation"]: s.value
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
    }
    assert infinite == counts
    assert len([s for s in family.samples if s.name.endswith("_bucket")]) == 3 * (len(BUCKETS) + 1)


def test_a_collection_whose_start_was_not_seen_is_not_counted() -> None:
    """Registered while another thread's collection ran (its finalizer let go of
    the GIL): only a stop arrives, and it must not count since the clock's epoch."""
    pauses = GcPauses()
    pauses._observe("stop", {"generation": 2})
    pauses._observe("start", {"generation": 0})
    pauses._observe("stop", {"generation": 0})
    (family,) = pauses.metric_families()
    sums = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_sum")}
    counts = {s.labels["generation"]: s.value for s in family.samples if s.name.endswith("_count")}
    assert counts == {"0": 1, "1": 0, "2": 0}
    assert sums["2"] == 0 and sums["0"] < 0.1


def test_a_long_pause_lands_in_its_bucket(no_automatic_collections: None) -> None:
    """A collection that holds the process 30 ms (a finalizer stands for a slow walk)."""
    pauses = GcPauses()

    class Slow:
        def __del__(self) -> None:
            time.sleep(0.03)

    slow = Slow()
    slow.cycle = slow  # type: ignore[attr-defined]
    del slow
    pauses.start()
    try:
        gc.collect()
    finally:
        pauses.stop()
    (family,) = pauses.metric_families()
    buckets = {
        s.labels["le"]: s.value
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["generation"] == "2"
    }
    assert buckets["0.025"] == 0 and buckets["+Inf"] == 1, "one collection, above 25 ms"
    total = next(
        s.value for s in family.samples if s.name.endswith("_sum") and s.labels["generation"] == "2"
    )
    assert total >= 0.03


def test_tune_freezes_the_start_up_heap_and_sets_the_thresholds(restored_gc: None) -> None:
    gc_pauses.tune()
    assert gc.get_threshold() == (
        gc_pauses.YOUNG_THRESHOLD,
        gc_pauses.MIDDLE_THRESHOLD,
        gc_pauses.OLD_THRESHOLD,
    )
    assert gc.get_freeze_count() > 0
