"""probemesh.collector.remote_write: encoding, delivery, and real Prometheus receivers.

The unit tests post to a real aiohttp receiver on loopback. The end-to-end tests
start Prometheus with --web.enable-remote-write-receiver and the shipped rules,
and two real collectors (CLI processes, --remote-write-url) with disjoint agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from probemesh.collector.remote_results import Applied, Entry, Journal, encode_results
from probemesh.collector.remote_write import (
    HEADERS,
    SLICE_SAMPLES,
    STALE_NAN,
    RemoteWriter,
    decode_request,
    encode_requests,
    series_from_registry,
)
from probemesh.collector.runnable import NOT_RUNNABLE, rule_and_detail
from probemesh.collector.samples import SampleFilter
from probemesh.errors import ConfigError
from probemesh.remotewrite import remote_pb2
from probemesh.v1 import mesh_pb2 as pb
from tests.harness import eventually
from tests.prometheus.mesh import Collector as MeshCollector
from tests.prometheus.mesh import Mesh, Targets
from tests.prometheus.promserver import (
    MISSING_REASON,
    PROMETHEUS,
    ROOT,
    RULE_FILES,
    Prometheus,
    free_port,
    run_prometheus,
)


def applied(
    agent: str, country: str, region: str, results: list[pb.Result], targets: list[str]
) -> Applied:
    """What ingest hands the remote writer: the results with their filtered samples."""
    keep = SampleFilter().keep
    return Applied(agent, country, region, results, targets, [keep(r.samples) for r in results])


def labels_of(ts: object) -> dict[str, str]:
    return {label.name: label.value for label in ts.labels}  # type: ignore[attr-defined]


class Receiver:
    """A remote-write receiver on loopback that answers with scripted statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.port = 0
        self.gate: Callable[[bytes], Awaitable[None]] | None = None  # awaited before answering

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.gate is not None:
            await self.gate(body)
        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status, text="" if status < 300 else "nope")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    app = web.Application()
    app.router.add_post("/api/v1/write", rx.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rx.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield rx
    finally:
        await runner.cleanup()


def sample_registry() -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    results = Counter(
        "probemesh_probe_results",
        "results",
        ["check", "agent", "country", "result"],
        registry=registry,
    )
    results.labels("web", "de-1", "DE", "success").inc(3)
    gauge = Gauge("probe_success", "ok", ["check", "agent", "country", "region"], registry=registry)
    gauge.labels("web", "de-1", "DE", "").set(1)
    gauge.labels("web", "us-1", "US", "us-east").set(0)
    hist = Histogram(
        "probemesh_probe_duration_seconds", "d", ["check"], buckets=[0.1, 1], registry=registry
    )
    hist.labels("web").observe(0.05)
    return registry, gauge


def test_snapshot_labels_names_and_external_labels() -> None:
    registry, _ = sample_registry()
    series, metadata = series_from_registry(registry, {"collector": "eu-1", "country": "XX"})
    by_name: dict[str, list[dict[str, str]]] = {}
    for key in series:
        assert list(key) == sorted(key), "labels must be sorted by name"
        labels = dict(key)
        by_name.setdefault(labels["__name__"], []).append(labels)
    assert not [n for n in by_name if n.endswith("_created")]
    assert by_name["probemesh_probe_results_total"] == [
        {
            "__name__": "probemesh_probe_results_total",
            "check": "web",
            "agent": "de-1",
            "country": "DE",  # the series' own label wins over the external one
            "result": "success",
            "collector": "eu-1",
        }
    ]
    # An empty label value means "no label".
    de = next(s for s in by_name["probe_success"] if s["agent"] == "de-1")
    assert "region" not in de
    assert {s["le"] for s in by_name["probemesh_probe_duration_seconds_bucket"]} == {
        "0.1",
        "1.0",
        "+Inf",
    }
    types = {m.metric_family_name: m.type for m in metadata}
    assert types["probemesh_probe_results_total"] == 1  # COUNTER
    assert types["probe_success"] == 2  # GAUGE
    assert types["probemesh_probe_duration_seconds"] == 3  # HISTOGRAM


async def test_posts_snappy_protobuf_with_standard_headers(receiver: Receiver) -> None:
    registry, _ = sample_registry()
    writer = RemoteWriter(registry, receiver.url, interval=0.05, external_labels={"collector": "a"})
    await writer.start()
    try:
        for _ in range(100):
            if writer.stats.sent_requests >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await writer.stop()
    assert writer.stats.sent_requests >= 2
    headers, body = receiver.requests[0]
    for name, value in HEADERS.items():
        assert headers[name] == value
    request = decode_request(body)
    names = {labels_of(ts)["__name__"] for ts in request.timeseries}
    assert {"probe_success", "probemesh_probe_results_total"} <= names
    assert all(labels_of(ts)["collector"] == "a" for ts in request.timeseries)
    stamps = [decode_request(b).timeseries[0].samples[0].timestamp for _, b in receiver.requests]
    assert stamps == sorted(set(stamps)), "snapshot timestamps must strictly increase"


async def test_vanished_series_get_a_stale_marker(receiver: Receiver) -> None:
    registry, gauge = sample_registry()
    writer = RemoteWriter(registry, receiver.url, interval=3600)
    await writer.start()  # first snapshot at once
    gauge.remove("web", "us-1", "US", "us-east")
    await writer.stop()  # last snapshot on stop
    last = decode_request(receiver.requests[-1][1])
    stale = [ts for ts in last.timeseries if labels_of(ts).get("agent") == "us-1"]
    assert len(stale) == 1
    value = stale[0].samples[0].value
    assert math.isnan(value)
    assert struct.pack("<d", value) == struct.pack("<Q", 0x7FF0000000000002)


def test_stale_markers_follow_many_series_from_a_compact_record() -> None:
    """Of 30,000 series over three snapshots, exactly those gone since the
    previous snapshot get one stale marker each, wherever they were, and every
    other series its value; the record of a snapshot's series is a few bytes
    a series, not their label tuples; a series a registry yields twice is sent
    once (the first)."""
    registry = CollectorRegistry()
    gauge = Gauge("pair", "p", ["check", "agent"], registry=registry)
    pairs = [(f"c{i % 20:02d}", f"a{i // 20:05d}") for i in range(30_000)]
    for i, pair in enumerate(pairs):
        gauge.labels(*pair).set(i)
    writer = RemoteWriter(registry, "http://127.0.0.1:9/api/v1/write", interval=3600)

    def sent() -> dict[tuple[str, str], list[float]]:
        out: dict[tuple[str, str], list[float]] = {}
        for pending in writer._snapshots:
            for ts in decode_request(pending.body).timeseries:
                labels = labels_of(ts)
                if labels["__name__"] == "pair":
                    out.setdefault((labels["check"], labels["agent"]), []).append(
                        ts.samples[0].value
                    )
        return out

    assert writer.snapshot() == 30_000
    first = sent()
    assert {k: v[0] for k, v in first.items()} == {p: float(i) for i, p in enumerate(pairs)}
    record = writer._sources[0].previous
    assert record.count == 30_000 and len(record.packed) < 30_000 * 8
    gone = set(pairs[::7]) | set(pairs[-3:])
    for pair in gone:
        gauge.remove(*pair)
    writer.snapshot()
    second = sent()
    assert second.keys() == set(pairs)
    for i, pair in enumerate(pairs):
        if pair in gone:
            assert len(second[pair]) == 1 and struct.pack("<d", second[pair][0]) == struct.pack(
                "<d", STALE_NAN
            )
        else:
            assert second[pair] == [float(i)]
    gauge.labels(*pairs[0]).set(-1.0)  # back again
    writer.snapshot()
    third = sent()
    assert third.keys() == set(pairs) - gone | {pairs[0]}  # the gone are marked once only
    assert third[pairs[0]] == [-1.0]


def test_a_series_replaced_by_another_is_marked_stale() -> None:
    """As many series as before, one of them new: the one gone still gets its
    stale marker (a snapshot skips reading its record only when the series
    are the same), and a snapshot of the same series marks none."""
    registry, gauge = sample_registry()
    writer = RemoteWriter(registry, "http://127.0.0.1:9/api/v1/write", interval=3600)

    def stale_agents() -> list[str]:
        writer.snapshot()
        requests = [decode_request(p.body) for p in writer._snapshots]
        return [labels_of(ts)["agent"] for r in requests for ts in r.timeseries
                if math.isnan(ts.samples[0].value)]  # fmt: skip

    assert stale_agents() == []
    gauge.remove("web", "us-1", "US", "us-east")
    gauge.labels("web", "us-2", "US", "us-east").set(1)
    assert stale_agents() == ["us-1"]
    assert stale_agents() == []


def test_a_series_yielded_twice_is_sent_once() -> None:
    registry = CollectorRegistry()

    class Twice(Collector):
        def collect(self) -> Iterator[Metric]:
            for value in (1.0, 2.0):
                family = GaugeMetricFamily("twice", "t", labels=["agent"])
                family.add_metric(["de-1"], value)
                yield family

    registry.register(Twice())
    writer = RemoteWriter(registry, "http://127.0.0.1:9/api/v1/write", interval=3600)
    assert writer.snapshot() == 1
    (request,) = [decode_request(p.body) for p in writer._snapshots]
    assert [ts.samples[0].value for ts in request.timeseries] == [1.0]


async def test_retries_5xx_and_429_then_delivers(receiver: Receiver) -> None:
    receiver.statuses = [500, 503, 429]
    registry, _ = sample_registry()
    writer = RemoteWriter(registry, receiver.url, interval=3600, min_backoff=0.01)
    await writer.start()
    await writer.stop()
    assert writer.stats.retries == 3
    assert writer.stats.sent_requests == 2  # the start and stop snapshots
    assert sum(writer.stats.dropped_requests.values()) == 0
    assert len(receiver.requests) == 5


async def test_drops_4xx_with_a_counter(receiver: Receiver) -> None:
    receiver.statuses = [400]
    registry, _ = sample_registry()
    metrics = CollectorRegistry()
    writer = RemoteWriter(registry, receiver.url, interval=3600, metrics_registry=metrics)
    await writer.start()
    await writer.stop()
    assert writer.stats.dropped_requests["rejected"] == 1
    assert writer.stats.sent_requests == 1
    dropped = metrics.get_sample_value(
        "probemesh_remote_write_dropped_requests_total", {"reason": "rejected"}
    )
    assert dropped == 1
    assert metrics.get_sample_value(
        "probemesh_remote_write_dropped_samples_total", {"reason": "rejected"}
    )


async def test_a_newer_snapshot_supersedes_the_unsent_one_whole() -> None:
    """A snapshot is never cut: a slow receiver gets the newest snapshot entire.

    Each snapshot is 4 requests (8 samples, 2 per request). While nothing
    listens, every new snapshot replaces what is unsent of the previous one.
    """
    registry, _ = sample_registry()
    url = f"http://127.0.0.1:{free_port()}/api/v1/write"  # nothing listens there
    writer = RemoteWriter(
        registry,
        url,
        interval=3600,
        max_samples_per_request=2,
        min_backoff=0.01,
        max_backoff=0.02,
        stop_timeout=0.2,
    )
    await writer.start()
    for _ in range(10):
        writer.snapshot()
    assert writer.pending_snapshot in (3, 4)  # one request may be in flight
    await asyncio.sleep(0.1)
    assert writer.stats.retries > 0
    await writer.stop()
    dropped = writer.stats.dropped_requests
    # 12 snapshots (start, 10, stop) of 4 requests: every one is accounted for. The
    # last is dropped whole at shutdown, with the older request still in flight then.
    assert dropped["superseded"] + dropped["shutdown"] == 12 * 4
    assert dropped["shutdown"] == 5 and writer.pending == 0
    assert writer.stats.sent_requests == 0


WEB = "https://example.org/"


def _result(check: str, ts: float, success: bool, status: float = 200.0) -> pb.Result:
    return pb.Result(
        check=check,
        target="https://example.org/",
        timestamp=ts,
        success=success,
        duration_seconds=0.25,
        reason=pb.FAILURE_REASON_UNSPECIFIED if success else pb.FAILURE_REASON_HTTP_STATUS,
        samples=[
            pb.Sample(name="probe_http_status_code", value=status),
            pb.Sample(name="probe_http_duration_seconds", labels={"phase": "connect"}, value=0.1),
            pb.Sample(name="not_in_the_catalog", value=1.0),
        ],
    )


def _decoded_samples(receiver: Receiver, name: str) -> list[tuple[dict[str, str], int, float]]:
    found = []
    for _, body in receiver.requests:
        for ts in decode_request(body).timeseries:
            labels = labels_of(ts)
            if labels["__name__"] == name:
                found += [(labels, s.timestamp, s.value) for s in ts.samples]
    return found


async def test_every_result_is_written_at_the_probe_time(
    receiver: Receiver, tmp_path: Path
) -> None:
    registry, _ = sample_registry()
    writer = RemoteWriter(
        registry,
        receiver.url,
        interval=3600,
        external_labels={"collector": "c1"},
        journal=Journal(tmp_path / "rw.sqlite3", 1 << 20),
        stop_timeout=30,
    )
    await writer.start()
    results = [
        _result("web", 1000.0 + i, success=i != 1, status=500 if i == 1 else 200) for i in range(3)
    ]
    late = _result("gone", 900.0, success=True)  # a removed check's late result keeps its target
    await writer.write_results(
        [applied("de-1", "DE", "eu", [*results, late], ["https://example.org/"] * 4)]
    )
    await writer.stop()
    success = _decoded_samples(receiver, "probe_success")
    assert sorted((s[1], s[2]) for s in success) == [
        (900_000, 1.0),
        (1_000_000, 1.0),
        (1_001_000, 0.0),
        (1_002_000, 1.0),
    ]
    labels = success[0][0]
    assert labels == {
        "__name__": "probe_success", "agent": "de-1", "check": labels["check"], "collector": "c1",
        "country": "DE", "region": "eu", "target": "https://example.org/",
    }  # fmt: skip
    assert [s[2] for s in _decoded_samples(receiver, "probe_http_status_code")] == [
        200.0, 500.0, 200.0, 200.0
    ]  # fmt: skip
    phases = _decoded_samples(receiver, "probe_http_duration_seconds")
    assert {s[0]["phase"] for s in phases} == {"connect"} and len(phases) == 4
    assert _decoded_samples(receiver, "not_in_the_catalog") == []
    # The snapshots carry the aggregates only: probe_success came from the results.
    assert len(success) == 4
    assert _decoded_samples(receiver, "probemesh_probe_results_total")


async def test_results_journaled_as_the_sender_finds_none_are_delivered_on_stop(
    receiver: Receiver, tmp_path: Path
) -> None:
    """The sender finds the journal empty; results are journaled before it goes
    back to sleep. It must not call itself idle then: stop() would return once
    its last snapshot is delivered and leave the results unsent.

    The sender's reads of the journal are held (in their worker thread) to
    force that order: the empty one until the results are journaled, the one
    that finds them until the last snapshot is delivered."""
    registry, _ = sample_registry()
    writer = RemoteWriter(
        registry, receiver.url, interval=3600, journal=Journal(tmp_path / "rw.sqlite3", 1 << 20),
        stop_timeout=30,
    )  # fmt: skip
    looked, journaled = threading.Event(), threading.Event()
    take = writer._take_results

    def held_take(delivered: Sequence[Entry]) -> tuple[list[Entry], bytes]:
        found = take(delivered)
        if not looked.is_set():
            looked.set()
            journaled.wait(30)
        elif found[0]:
            deadline = time.monotonic() + 30  # the start and the stop snapshots
            while writer.stats.sent_requests < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return found

    writer._take_results = held_take  # type: ignore[method-assign]
    await writer.start()
    assert await asyncio.to_thread(looked.wait, 30)
    await writer.write_results([applied("de-1", "DE", "", [_result("web", 1000.0, True)], [WEB])])
    journaled.set()
    await writer.stop()
    assert [s[1] for s in _decoded_samples(receiver, "probe_success")] == [1_000_000]
    assert writer.stats.sent_requests == 3


async def test_journaled_results_outlive_a_receiver_outage_and_a_restart(
    receiver: Receiver, tmp_path: Path
) -> None:
    registry, _ = sample_registry()
    journal_path = tmp_path / "rw.sqlite3"
    down = f"http://127.0.0.1:{free_port()}/api/v1/write"  # nothing listens there
    first = RemoteWriter(
        registry, down, interval=3600, journal=Journal(journal_path, 1 << 20),
        min_backoff=0.01, max_backoff=0.02, stop_timeout=0.2, max_samples_per_request=3,
    )  # fmt: skip
    await first.start()
    await first.write_results(
        [applied("de-1", "DE", "", [_result("web", 1000.0 + i, True) for i in range(5)], [WEB] * 5)]
    )
    await asyncio.sleep(0.1)
    assert first.stats.retries > 0 and first.lag() > 0
    await first.stop()
    # Only the last snapshot (8 samples, 3 requests) is dropped; results stay on disk.
    assert first.stats.dropped_requests["shutdown"] == 3
    second = RemoteWriter(
        registry, receiver.url, interval=3600, journal=Journal(journal_path, 1 << 20),
        stop_timeout=30, max_samples_per_request=3,
    )  # fmt: skip
    assert second.pending_results == 7  # 5 results x 4 series, in requests of 3 samples
    await second.start()
    await second.stop()
    assert len(_decoded_samples(receiver, "probe_success")) == 5
    assert second.pending_results == 0 and second.lag() == 0


async def test_a_full_journal_drops_its_oldest_requests_and_counts_them(tmp_path: Path) -> None:
    registry, _ = sample_registry()
    writer = RemoteWriter(
        registry,
        f"http://127.0.0.1:{free_port()}/api/v1/write",
        journal=Journal(tmp_path / "rw.sqlite3", 2000),
        max_samples_per_request=4,
    )
    for i in range(50):
        await writer.write_results(
            [applied("de-1", "DE", "", [_result("web", 1000.0 + i, True)], [WEB])]
        )
    assert writer.journal is not None and writer.journal.bytes <= 2000
    dropped = writer.stats.dropped_requests["journal_full"]
    assert dropped > 0 and dropped + writer.pending_results == 50
    assert writer.stats.dropped_samples["journal_full"] == dropped * 4


async def test_small_journal_entries_go_out_merged_into_few_requests(
    receiver: Receiver, tmp_path: Path
) -> None:
    """Ingest journals one entry per commit, often one result: the sender packs
    the oldest entries into requests of up to max_samples_per_request samples,
    in order, and forgets every entry it delivered."""
    registry, _ = sample_registry()
    writer = RemoteWriter(
        registry, receiver.url, interval=3600, journal=Journal(tmp_path / "rw.sqlite3", 1 << 20),
        stop_timeout=30, max_samples_per_request=100,
    )  # fmt: skip
    for i in range(60):  # 60 entries of 4 samples: 240 samples, 3 requests of <= 100
        await writer.write_results(
            [applied("de-1", "DE", "", [_result("web", 1000.0 + i, True)], [WEB])]
        )
    assert writer.pending_results == 60
    await writer.start()
    await writer.stop()
    success = _decoded_samples(receiver, "probe_success")
    assert [s[1] for s in success] == [1_000_000 + 1000 * i for i in range(60)]
    result_requests = [
        body for _, body in receiver.requests
        if any(labels_of(ts)["__name__"] == "probe_success" for ts in decode_request(body).timeseries)
    ]  # fmt: skip
    assert [len(decode_request(b).timeseries) for b in result_requests] == [100, 100, 40]
    assert writer.pending_results == 0 and writer.stats.dropped_requests["rejected"] == 0


async def test_results_never_wait_behind_a_snapshot_request(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A snapshot request the receiver is slow to answer (hundreds of thousands
    of counter series in a large mesh) does not hold up the results journaled
    meanwhile: they go out at once, and their wait is in the delay histogram."""
    stalled = asyncio.Event()
    release = asyncio.Event()

    async def gate(body: bytes) -> None:
        names = {labels_of(ts)["__name__"] for ts in decode_request(body).timeseries}
        if "probe_success" not in names:  # a snapshot: hang until released
            stalled.set()
            await release.wait()

    receiver.gate = gate
    registry, _ = sample_registry()
    metrics = CollectorRegistry()
    writer = RemoteWriter(
        registry, receiver.url, interval=3600, timeout=60, stop_timeout=30,
        journal=Journal(tmp_path / "rw.sqlite3", 1 << 20), metrics_registry=metrics,
    )  # fmt: skip
    await writer.start()
    try:
        await asyncio.wait_for(stalled.wait(), 5)
        await writer.write_results(
            [applied("de-1", "DE", "", [_result("web", 1000.0, True)], [WEB])]
        )
        # The receiver holds the results before their answer reaches the writer, and
        # the writer forgets them after that: wait for both, the snapshot still hanging.
        await eventually(
            lambda: _decoded_samples(receiver, "probe_success") and not writer.pending_results,
            "the results delivered while the snapshot waits",
            seconds=30,
        )
        assert writer.pending_snapshot == 0 and writer.pending == 1  # the snapshot, in flight
    finally:
        release.set()
        await writer.stop()
    assert metrics.get_sample_value("probemesh_remote_write_result_delay_seconds_count") == 1
    assert (
        metrics.get_sample_value("probemesh_remote_write_result_delay_seconds_bucket", {"le": "1"})
        == 1
    )
    assert writer.stats.sent_requests == 3 and writer.pending == 0


@pytest.mark.parametrize("external", [{"collector": "c1"}, {"Zone": "eu", "collector": "c1"}])
def test_journaled_requests_hold_each_result_sorted_and_chunked(external: dict[str, str]) -> None:
    """Every result's series, labels sorted by name as remote write requires
    (an upper-case external label sorts before __name__), in requests of at
    most max_samples samples; a check refused by policy is not_runnable only."""
    refused = pb.Result(
        check="web", timestamp=1003.0, success=False, reason=pb.FAILURE_REASON_POLICY,
        message="rule private_target: 10.0.0.1 is private",
    )  # fmt: skip
    results = [_result("web", 1000.0 + i, success=i != 1) for i in range(3)] + [refused]
    group = applied("de-1", "DE", "eu", results, [WEB] * 4)
    requests = encode_results([group, group], external, max_samples=5)
    series = [ts for body, _ in requests for ts in decode_request(body).timeseries]
    assert [n for _, n in requests] == [5] * 5 + [1]
    assert sum(len(decode_request(body).timeseries) for body, _ in requests) == 26
    for ts in series:
        names = [label.name for label in ts.labels]
        assert names == sorted(names)
    assert labels_of(series[0]) == {
        "__name__": "probe_success", "agent": "de-1", "check": "web", "country": "DE",
        "region": "eu", "target": WEB, **external,
    }  # fmt: skip
    assert series[0].samples[0].timestamp == 1_000_000
    phases = [
        labels_of(ts) for ts in series if labels_of(ts)["__name__"] == "probe_http_duration_seconds"
    ]
    assert phases and all(p["phase"] == "connect" and p["agent"] == "de-1" for p in phases)
    not_runnable = [labels_of(ts) for ts in series if labels_of(ts)["__name__"] == NOT_RUNNABLE]
    assert len(not_runnable) == 2 and not_runnable[0]["rule"] == rule_and_detail(refused.message)[0]
    assert sum(labels_of(ts)["__name__"] == "probe_success" for ts in series) == 6


def test_encoded_snapshot_requests_match_protobuf() -> None:
    """The snapshot's hand-encoded WriteRequests parse back to the series, values,
    timestamp and metadata given (metadata in the first request only)."""
    series = {
        (("__name__", "up"), ("agent", "de-1"), ("city", "São Paulo")): 1.0,
        (("__name__", "up"), ("agent", "us-1")): STALE_NAN,
        (("__name__", "probemesh_x_total"), ("agent", "de-1")): 12345.5,
    }
    metadata = [remote_pb2.MetricMetadata(metric_family_name="up", help="h", type=3)]
    encoded = list(encode_requests(series, 1_700_000_000_123, metadata, 2))
    assert [n for _, n in encoded] == [2, 1]
    decoded = [decode_request(body) for body, _ in encoded]
    assert [m.metric_family_name for m in decoded[0].metadata] == ["up"]
    assert not decoded[1].metadata
    got = {
        tuple((label.name, label.value) for label in ts.labels): (s.value, s.timestamp)
        for request in decoded
        for ts in request.timeseries
        for s in ts.samples
    }
    assert got.keys() == series.keys()
    for key, value in series.items():
        assert struct.pack("<d", got[key][0]) == struct.pack("<d", value)
        assert got[key][1] == 1_700_000_000_123


async def test_the_bulk_registry_is_snapshotted_every_nth_time_and_never_superseded_by_the_rest(
    receiver: Receiver,
) -> None:
    """Every snapshot reads the registry; every bulk_every-th also the pair
    registry. A snapshot that does not read it neither supersedes its unsent
    requests nor marks its series stale."""
    registry, _ = sample_registry()
    pairs = CollectorRegistry()
    counter = Counter("probemesh_probe_failures", "f", ["agent"], registry=pairs)
    counter.labels("de-1").inc()
    writer = RemoteWriter(registry, receiver.url, bulk_registry=pairs, bulk_every=3)
    sizes = [writer.snapshot() for _ in range(6)]
    small, both = sizes[1], sizes[0]
    assert both == small + 1 and sizes == [both, small, small, both, small, small]
    pending = [decode_request(p.body) for p in writer._snapshots]
    names = [labels_of(ts)["__name__"] for r in pending for ts in r.timeseries]
    assert names.count("probemesh_probe_failures_total") == 1  # the 4th snapshot's, unsent
    assert writer.stats.dropped_requests["superseded"] == 5 + 1  # each registry's own
    for request in pending:
        for ts in request.timeseries:
            assert not math.isnan(ts.samples[0].value), "no stale marker for a series still there"


def test_a_large_snapshot_lets_the_event_loop_run_between_slices() -> None:
    """The snapshot loop runs the snapshot a slice at a time (it awaits between
    the steps); one snapshot of 3.5 slices' worth of samples takes several."""
    registry = CollectorRegistry()
    gauge = Gauge("many", "m", ["i"], registry=registry)
    for i in range(SLICE_SAMPLES * 3 + SLICE_SAMPLES // 2):
        gauge.labels(str(i)).set(i)
    writer = RemoteWriter(registry, "http://127.0.0.1:9/api/v1/write")
    steps = writer._snapshot_steps()
    slices = 0
    with contextlib.suppress(StopIteration):
        while True:
            next(steps)
            slices += 1
    assert slices >= 4
    assert sum(p.samples for p in writer._snapshots) == SLICE_SAMPLES * 3 + SLICE_SAMPLES // 2


def test_bad_settings_are_config_errors() -> None:
    registry = CollectorRegistry()
    with pytest.raises(ConfigError, match="http"):
        RemoteWriter(registry, "ftp://x")
    with pytest.raises(ConfigError, match="label"):
        RemoteWriter(registry, "http://127.0.0.1:1/", external_labels={"bad-name": "x"})


# --- end to end: two collectors remote-writing into one Prometheus -----------------------

CHECKS = """
modules:
  http_2xx: {{prober: http, timeout: 1s}}
checks:
  - {{name: site-up, target: "{http}/ok", module: http_2xx, interval: 1s}}
  - {{name: site-down, target: "{http}/fail", module: http_2xx, interval: 1s}}
  - {{name: mixed, target: "{http}/mixed", module: http_2xx, interval: 1s}}
"""


HEALTH_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus-remote-write.yml"


def shipped_health_job(targets: list[str]) -> dict[str, Any]:
    """The collector job of deploy/prometheus/prometheus-remote-write.yml, on targets."""
    config = yaml.safe_load(HEALTH_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": targets}]
    return dict(job)


@pytest.fixture(scope="module")
def remote_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, Mesh]]:
    """Two collectors remote-writing into Prometheus, which scrapes them with the
    shipped job for collectors that remote-write (their health alone)."""
    if PROMETHEUS is None:
        pytest.skip(MISSING_REASON)
    root = tmp_path_factory.mktemp("remote-write")
    # de-2 (source 127.0.0.3, on collector c2) fails "mixed"; everyone else succeeds.
    targets = Targets(root, failing_sources={"127.0.0.3"})
    mesh = Mesh(root)
    checks = CHECKS.format(http=targets.http_url)
    collectors = [MeshCollector(root, name, checks) for name in ("c1", "c2")]
    job = shipped_health_job([c.http_address for c in collectors])
    try:
        with run_prometheus(
            root / "prometheus",
            rule_files=RULE_FILES,
            remote_write_receiver=True,
            scrape_configs=[job],
        ) as prom:
            write = f"{prom.url}/api/v1/write"
            for collector, agents in zip(collectors, (
                [("de-1", "DE", "127.0.0.2"), ("us-1", "US", "127.0.0.4")],
                [("de-2", "DE", "127.0.0.3"), ("us-2", "US", "127.0.0.5")],
            ), strict=True):  # fmt: skip
                collector.extra = [
                    "--remote-write-url", write,
                    "--remote-write-interval", "1s",
                    "--external-label", f"collector={collector.name}",
                ]  # fmt: skip
                mesh.collectors.append(collector.start())
                for agent_id, country, source in agents:
                    mesh.agent(collector, agent_id, country, "--source-address", source)
            try:
                yield prom, mesh
            finally:
                mesh.close()  # while Prometheus is up: a stopping collector drains to it
    finally:
        mesh.close()
        targets.close()


def test_collector_remote_writes_probe_series(remote_mesh: tuple[Prometheus, Mesh]) -> None:
    prom, mesh = remote_mesh
    try:
        got = prom.wait_for('probe_success{check="site-up",agent="de-1"}', timeout=45)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{mesh.logs()}") from None
    labels = got[0]["metric"]
    assert labels["collector"] == "c1"
    assert labels["country"] == "DE"
    assert labels["target"].endswith("/ok")
    assert "instance" not in labels and "job" not in labels
    assert got[0]["value"][1] == "1"
    down = prom.wait_for('probe_success{check="site-down",agent="us-2"}')
    assert down[0]["metric"]["collector"] == "c2"
    assert down[0]["value"][1] == "0"
    prom.wait_for('probemesh_probe_results_total{check="site-down",result="failure"}', count=4)
    prom.wait_for('probemesh_agent_connected{collector="c2"} == 1', count=2)
    prom.wait_for("probemesh_remote_write_samples_total > 0", count=2)


def test_the_shipped_health_job_scrapes_no_probe_series(
    remote_mesh: tuple[Prometheus, Mesh],
) -> None:
    """collect[]=collector: the collectors' health is scraped, none of the probe
    series they remote-write (nor any other per-pair, per-country or per-agent one)."""
    prom, mesh = remote_mesh
    prom.wait_for('probemesh_remote_write_samples_total{job="probemesh-collector"} > 0', count=2)
    prom.wait_for('probe_success{check="site-up"}', timeout=45)  # written, not scraped
    full = urllib.request.urlopen(f"http://{mesh.collectors[0].http_address}/metrics", timeout=10)
    assert b"\nprobe_success{" in full.read(), "the collector has probe series to leave out"
    scraped = prom.query('count by (__name__) ({job="probemesh-collector"})')
    names = {s["metric"]["__name__"] for s in scraped}
    assert {"probemesh_ingest_results_total", "probemesh_outage_round_seconds"} <= names
    assert "probemesh_event_loop_lag_max_seconds" in names
    assert not {n for n in names if n.startswith(("probe_", "probemesh_probe_"))}
    assert not names & {
        "probemesh_agent_connected", "probemesh_agent_info", "probemesh_agent_local_problem",
        "probemesh_outage", "probemesh_country_reachability_ratio",
    }  # fmt: skip


def test_two_collectors_give_per_country_verdicts(remote_mesh: tuple[Prometheus, Mesh]) -> None:
    """DE has one failing agent on c2 and one healthy on c1: degraded, ratio ~0.5.

    Each collector alone would say DE is fully up (c1) or fully down (c2); only
    the rules' aggregation across both gives the right answer. The values are
    polled until they settle (rates need a few samples after start-up).
    """
    prom, mesh = remote_mesh

    def settles(expr: str, count: int = 1) -> None:
        try:
            prom.wait_for(expr, timeout=60, count=count)
        except AssertionError as exc:
            name = expr.split("{")[0]
            raise AssertionError(f"{exc}\nnow: {prom.query(name)}\n{mesh.logs()}") from None

    settles('check_country:probemesh_agents_reporting:count{check="mixed"} == 2', count=2)
    mixed = 'check="mixed"'
    settles(
        f'check_country:probemesh_probe_success:ratio_rate5m{{{mixed},country="DE"}} > 0.3 < 0.7'
    )
    settles(f'check_country:probemesh_probe_success:ratio_rate5m{{{mixed},country="US"}} == 1')
    settles(f'check_country:probemesh_country_state:level{{{mixed},country="DE"}} == 1')
    settles(f'check_country:probemesh_country_state:level{{{mixed},country="US"}} == 0')
    settles(f"check:probemesh_outage_scope:level{{{mixed}}} == 0")
    # Failing everywhere, from both collectors: a global outage.
    settles('check:probemesh_countries_down:count{check="site-down"} == 2')
    settles('check:probemesh_outage_scope:level{check="site-down"} == 2')
    settles('check:probemesh_probe_success:ratio_rate5m{check="site-up"} == 1')
    # Nobody is flagged: de-2 fails one check of three.
    assert prom.query("probemesh_agent_local_problem == 1") == []
