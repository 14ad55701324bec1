"""SampleFilter: the catalog's verdict per sample, counted by reason, in a GC-cheap shape."""

from __future__ import annotations

import gc

from probemesh.collector.samples import SampleFilter, sample_items
from probemesh.v1 import mesh_pb2 as pb


def http_samples() -> list[pb.Sample]:
    return [
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": "connect"}, value=0.01),
        pb.Sample(name="probe_http_status_code", value=200),
    ]


def test_keeps_admitted_samples_in_order() -> None:
    kept = SampleFilter().keep(http_samples())
    assert list(sample_items(kept)) == [
        ("probe_http_duration_seconds", (("phase", "connect"),), 0.01),
        ("probe_http_status_code", (), 200.0),
    ]


def test_refusals_are_counted_by_reason_every_time() -> None:
    samples = SampleFilter(max_samples=2)
    bad = [
        pb.Sample(name="probe_unknown", value=1),
        pb.Sample(name="probe_http_status_code", value=float("nan")),
        pb.Sample(name="probe_http_status_code", labels={"phase": "connect"}, value=1),
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": "bogus"}, value=1),
        pb.Sample(name="probe_http_duration_seconds", labels={"stage": "connect"}, value=1),
        pb.Sample(name="probe_http_duration_seconds", value=1),
    ]
    for _ in range(2):  # the second time every verdict comes from the cache
        kept = samples.keep([*http_samples(), http_samples()[1], *bad, http_samples()[0]])
        assert [name for name, _, _ in sample_items(kept)] == [
            "probe_http_duration_seconds",
            "probe_http_status_code",
        ]
    assert samples.rejected == {
        "invalid_sample": 2 * len(bad),
        "duplicate_sample": 2 * 2,
        "too_many_samples": 0,
    }


def test_the_cap_counts_what_it_cuts() -> None:
    samples = SampleFilter(max_samples=1)
    assert len(samples.keep(http_samples())[0]) == 1
    assert samples.rejected["too_many_samples"] == 1


def test_kept_samples_leave_the_garbage_collectors_books() -> None:
    """A full collection walks every tracked container; ingest holds a group of
    64,000 results' samples at a time, so they must not stay tracked."""
    samples = SampleFilter()
    kept = [samples.keep(http_samples()) for _ in range(100)]
    for _ in range(4):  # CPython untracks one level of nesting per pass: 4 levels here
        gc.collect()
    assert not any(gc.is_tracked(k) for k in kept)
    assert kept[0][0] is kept[99][0], "a shape's series keys are one shared tuple"
    assert len(kept[0][1]) == 8 * 2, "values are packed doubles, not float objects"


def test_a_known_shape_still_has_its_values_and_the_cap_checked() -> None:
    samples = SampleFilter()
    assert len(samples.keep(http_samples())[0]) == 2  # the shape is now known
    again = http_samples()
    again[0].value = float("inf")
    assert list(sample_items(samples.keep(again))) == [("probe_http_status_code", (), 200.0)]
    assert samples.rejected["invalid_sample"] == 1
    samples.max_samples = 1
    assert len(samples.keep(http_samples())[0]) == 1
    assert samples.rejected["too_many_samples"] == 1
    samples.max_samples = 64
    other = http_samples()
    other[0].labels["phase"] = "tls"  # another label value: another shape, judged anew
    assert samples.keep(other)[0][0][1] == (("phase", "tls"),)
