"""Push the collector's metrics to a Prometheus remote-write endpoint.

Two streams share one sender, both remote-write 1.0 ``WriteRequest`` messages
(probemesh/remotewrite/remote_pb2.py), snappy-compressed and POSTed; Prometheus
(``--web.enable-remote-write-receiver``), Mimir, Thanos Receive and
VictoriaMetrics accept them.

* **Results** (``probe_success`` and every other per-result probe family) are
  written once per result, stamped with the probe's own time, from a journal on
  disk (probemesh/collector/remote_results.py). Nothing is sampled away, and a
  backlog replayed after a partition lands at the times the agents probed.
* **Aggregates** (result counters, histograms, outage and agent gauges, the
  collector's own metrics) are snapshotted every ``interval`` seconds, like a
  scrape with ``honor_timestamps: false``:

  * snapshot times strictly increase, so a receiver never sees an out-of-order
    or duplicate sample from a snapshot;
  * a series present in the previous snapshot and gone from this one gets a
    staleness marker, so it ends at once in the receiver instead of lingering
    for the 5 minute lookback (as it would after a scrape);
  * ``*_created`` samples are not sent (nobody queries them; they double the
    series count of every counter and histogram);
  * a snapshot supersedes what is still unsent of the previous one (reason
    ``superseded``): its values are newer, so a slow receiver gets the latest
    state of every series rather than the head of an old snapshot.

``external_labels`` (e.g. ``collector="eu-1"``) are added to every series unless
the series already has that label, as Prometheus does.

Delivery: each stream has its own sender, one request in flight each, so a
result never waits behind a snapshot (hundreds of thousands of counter series
every few intervals in a large mesh). 5xx, 429 and
connection errors are retried with exponential backoff (``Retry-After`` is
honoured); a snapshot request is given up once older than ``max_age``, a journal
request only when the journal outgrows its cap (``journal_full``, oldest first).
Other 4xx answers mean the receiver will never take it, so it is dropped
(``rejected``). Every drop is counted by reason in
``probemesh_remote_write_dropped_requests_total`` and
``probemesh_remote_write_dropped_samples_total``; loss is visible, never silent.
``probemesh_remote_write_result_delay_seconds`` is how long journaled results
waited for the receiver to accept them: the collector's part of the lag from
probe to queryable (the agent's buffer before, the receiver's own flush after).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import random
import re
import struct
import time
import zlib
from bisect import bisect_left
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import cramjam
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from probemesh import __version__
from probemesh.collector import remote_wire
from probemesh.collector.outbound import parse_retry_after
from probemesh.collector.remote_results import (
    RESULT_FAMILIES,
    Applied,
    Entry,
    Journal,
    encode_results,
    merge,
)
from probemesh.collector.row_families import RowFamily
from probemesh.errors import ConfigError
from probemesh.remotewrite import remote_pb2

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
    "User-Agent": f"probemesh/{__version__}",
}
"""The headers of every remote-write 1.0 request."""

STALE_NAN: float = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
"""Prometheus' staleness marker: a NaN with a specific bit pattern."""

DROP_REASONS = ("superseded", "journal_full", "rejected", "expired", "shutdown")
"""Why a request can be dropped: a newer snapshot replaced it, the result journal
hit its cap, a 4xx answer, retried for longer than max_age, or a snapshot still
pending when stop() gave up (journaled results stay on disk for the next start)."""

_TYPES: dict[str, int] = {
    "counter": remote_pb2.MetricMetadata.COUNTER,
    "gauge": remote_pb2.MetricMetadata.GAUGE,
    "histogram": remote_pb2.MetricMetadata.HISTOGRAM,
    "gaugehistogram": remote_pb2.MetricMetadata.GAUGEHISTOGRAM,
    "summary": remote_pb2.MetricMetadata.SUMMARY,
    "info": remote_pb2.MetricMetadata.INFO,
    "stateset": remote_pb2.MetricMetadata.STATESET,
}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_CREATED_TYPES = frozenset({"counter", "histogram", "gaugehistogram", "summary"})

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class _Source:
    """A registry the snapshots read, every ``every``-th snapshot."""

    registry: CollectorRegistry
    every: int
    exclude: frozenset[str]
    previous: SeriesRecord = field(default_factory=lambda: SeriesRecord(b"", 0))


@dataclass(frozen=True)
class SeriesRecord:
    """The series of a source's last snapshot, to mark those that are gone stale.

    Kept as their encoded label sets, length-prefixed and zlib-compressed: the
    per-pair counters are ten series per check x agent pair, and a set of their
    label tuples cost about 500 bytes a series (5 KB a pair) for as long as the
    collector ran. The label sets of a mesh's series repeat their names and
    values, so the record is a few bytes a series; reading it back once a
    snapshot costs tens of milliseconds for 200,000 series.

    digest is the sum of the series' hashes: a snapshot of as many series with
    the same digest has the same series (a series is known by its hash), so
    none is stale and the record need not be read back, which cost more than
    building the snapshot's counters in a steady mesh.
    """

    packed: bytes
    count: int
    digest: int = 0

    def label_sets(self) -> Iterator[bytes]:
        """The encoded label sets, in the order they were recorded."""
        data = zlib.decompress(self.packed) if self.packed else b""
        at = 0
        while at < len(data):
            (size,) = _LENGTH.unpack_from(data, at)
            at += _LENGTH.size
            yield data[at : at + size]
            at += size


_LENGTH = struct.Struct("<I")


SLICE_SAMPLES = 5000
"""Snapshot samples handled between two yields to the event loop (a few ms)."""
READ_AHEAD = 256
"""Journal entries read at a time; those that fit in one request are sent as one."""
DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Buckets of probemesh_remote_write_result_delay_seconds."""


@dataclass
class _Pending:
    """One encoded, compressed request waiting to be sent."""

    body: bytes
    samples: int
    created: float
    source: int = 0  # index of the _Source it snapshots


@dataclass
class _Stats:
    """Counters of the writer itself, exported by RemoteWriteMetrics."""

    sent_requests: int = 0
    sent_samples: int = 0
    failed_samples: int = 0
    retries: int = 0
    last_success: float = 0.0

    def __post_init__(self) -> None:
        self.dropped_requests: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.dropped_samples: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.delay_counts = [0] * (len(DELAY_BUCKETS) + 1)
        self.delay_sum = 0.0

    def delayed(self, seconds: float) -> None:
        """One journaled entry accepted by the receiver this long after it was journaled."""
        self.delay_counts[bisect_left(DELAY_BUCKETS, seconds)] += 1
        self.delay_sum += seconds


def series_from_registry(
    registry: CollectorRegistry,
    external_labels: Mapping[str, str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> tuple[dict[LabelSet, float], list[remote_pb2.MetricMetadata]]:
    """Snapshot registry: {sorted label set incl. __name__: value} and metadata.

    Families named in ``exclude`` are left out. External labels are added where
    the series does not have them already; empty label values are dropped (they
    mean "no label" in Prometheus). The label sets are read back from the
    encoding a snapshot sends.
    """
    series: dict[LabelSet, float] = {}
    metadata: list[remote_pb2.MetricMetadata] = []
    for chunk in _samples(registry, external_labels, exclude, metadata):
        for encoded, value in chunk:
            labels = remote_pb2.TimeSeries.FromString(encoded).labels
            series[tuple((label.name, label.value) for label in labels)] = value
    return series, metadata


def _samples(
    registry: CollectorRegistry,
    external_labels: Mapping[str, str] | None,
    exclude: frozenset[str],
    metadata: list[remote_pb2.MetricMetadata],
) -> Iterator[list[tuple[bytes, float]]]:
    """The registry's series in slices of at most SLICE_SAMPLES, each series as
    (its label set incl. __name__, sorted and encoded as a TimeSeries' labels,
    value), appending each family's metadata as it comes. A slice never spans
    two families: between two slices a caller on the event loop can let it run.

    The series of a family come in a few shapes (name and label names); each
    shape's sorted order and its constant labels (the name, external labels)
    are worked out once, so a series costs a lookup per label of its own.
    """
    extra = dict(external_labels or {})
    shapes: dict[tuple[str, ...], list[tuple[str, bytes]]] = {}
    described: set[str] = set()
    for family in registry.collect():
        if family.name in exclude:
            continue
        if family.name not in described:  # a collector may yield a family in parts
            described.add(family.name)
            metadata.append(_metadata(family))
        if isinstance(family, RowFamily):
            yield from _row_series(family, extra)
            continue
        created = family.type in _CREATED_TYPES
        out: list[tuple[bytes, float]] = []
        for sample in family.samples:
            name, labels = sample.name, sample.labels
            if created and name.endswith("_created"):
                continue
            shape = (name, *labels)
            plan = shapes.get(shape)
            if plan is None:
                plan = shapes[shape] = _plan(name, labels, extra)
            out.append(
                (b"".join([c or _label(k, labels[k]) for k, c in plan]), float(sample.value))
            )
            if len(out) >= SLICE_SAMPLES:
                yield out
                out = []
        if out:
            yield out


def _row_series(family: RowFamily, extra: Mapping[str, str]) -> Iterator[list[tuple[bytes, float]]]:
    """A row family's series as _samples gives them (in slices of about
    SLICE_SAMPLES, whole rows each), without a Sample each.

    Columns whose sorted label order is the same (a counter's outcomes, a
    histogram's buckets) share a skeleton: the row's labels before and after
    the column's own label are joined once per row, and each series is those
    two around the column's encoded label. A skeleton part is (the index of
    one of the row's labels, or -1 for a constant; the constant's encoding).
    """
    names = family.labels
    slots = {name: index for index, name in enumerate(names)}
    skeletons: dict[tuple[object, ...], _Skeleton] = {}
    for index, column in enumerate(family.columns):
        own = {column.label: column.value} if column.label is not None else {}
        merged = {**extra, **own, "__name__": column.sample}
        parts: list[tuple[int, bytes]] = []
        mark = -1
        for k in sorted(merged.keys() | slots.keys()):
            if k in slots:
                parts.append((slots[k], b""))
            elif k == column.label:
                mark = len(parts)
            else:
                parts.append((-1, _label(k, merged[k])))
        key = (mark, *parts)
        skeleton = skeletons.get(key)
        if skeleton is None:
            cut = len(parts) if mark < 0 else mark
            skeleton = skeletons[key] = _Skeleton(parts[:cut], parts[cut:], [])
        skeleton.columns.append((index, _label(column.label, column.value) if own else b""))
    shapes = list(skeletons.values())
    out: list[tuple[bytes, float]] = []
    for values, numbers in family.rows:
        encoded = [_label(k, v) for k, v in zip(names, values, strict=True)]
        for shape in shapes:
            head = b"".join([encoded[i] if i >= 0 else c for i, c in shape.before])
            tail = b"".join([encoded[i] if i >= 0 else c for i, c in shape.after])
            out += [(head + own + tail, float(numbers[index])) for index, own in shape.columns]
        if len(out) >= SLICE_SAMPLES:
            yield out
            out = []
    if out:
        yield out


def _first_seen(
    chunk: list[tuple[bytes, float]], seen: set[int]
) -> tuple[list[tuple[bytes, float]], int]:
    """The series of chunk not in seen, which they join, and the sum of their
    hashes. The same series twice: the first one counts (a series is known by
    the hash of its label set). Without repeats, the usual case, it is a few
    set operations on the whole slice rather than a few steps per series."""
    hashes = [hash(labels) for labels, _ in chunk]
    distinct = set(hashes)
    if len(distinct) == len(hashes) and seen.isdisjoint(distinct):
        seen |= distinct
        return chunk, sum(hashes)
    fresh, total = [], 0
    for series, token in zip(chunk, hashes, strict=True):
        if token not in seen:
            seen.add(token)
            fresh.append(series)
            total += token
    return fresh, total


@dataclass
class _Skeleton:
    """Columns of a row family sharing one sorted label order (see _row_series)."""

    before: list[tuple[int, bytes]]
    after: list[tuple[int, bytes]]
    columns: list[tuple[int, bytes]]  # (number's index in a row, the column's own label)


def _plan(
    name: str, labels: Mapping[str, str], extra: Mapping[str, str]
) -> list[tuple[str, bytes]]:
    """A shape's labels in sorted order, as (name, encoded): the constant ones
    (the name, external labels) encoded, the sample's own ones (which win over
    external labels) with nothing, to be encoded from each sample."""
    merged = {**extra, **labels, "__name__": name}
    plan = []
    for k in sorted(merged):
        if k in labels and k != "__name__":
            plan.append((k, b""))
        elif merged[k]:
            plan.append((k, _label(k, merged[k])))
    return plan


@functools.lru_cache(maxsize=1 << 16)
def _label(name: str, value: str) -> bytes:
    """An encoded label, or nothing for an empty value (no label in Prometheus)."""
    return remote_wire.label(name, value) if value else b""


def _metadata(family: Metric) -> remote_pb2.MetricMetadata:
    name = family.name + "_total" if family.type == "counter" else family.name
    return remote_pb2.MetricMetadata(
        type=_TYPES.get(family.type, remote_pb2.MetricMetadata.UNKNOWN),  # type: ignore[arg-type]
        metric_family_name=name,
        help=family.documentation,
        unit=family.unit,
    )


def encode_requests(
    series: Mapping[LabelSet, float],
    timestamp_ms: int,
    metadata: Iterable[remote_pb2.MetricMetadata] = (),
    max_samples: int = 5000,
) -> Iterator[tuple[bytes, int]]:
    """Yield (snappy-compressed WriteRequest, sample count) chunks of series.

    Metadata rides along with the first chunk only.
    """
    stamp = remote_wire.stamp(timestamp_ms)
    label = remote_wire.label
    items = list(series.items())
    meta = b"".join(remote_wire.field(3, m.SerializeToString()) for m in metadata)
    for start in range(0, max(len(items), 1), max_samples):
        chunk = items[start : start + max_samples]
        if not chunk and not meta:
            return
        parts = [
            remote_wire.timeseries(b"".join([label(k, v) for k, v in key]), value, stamp)
            for key, value in chunk
        ]
        parts.append(meta)
        meta = b""
        yield remote_wire.request(parts), len(chunk)


def decode_request(body: bytes) -> remote_pb2.WriteRequest:
    """Inverse of one encode_requests chunk; used by tests and debugging."""
    request = remote_pb2.WriteRequest()
    request.ParseFromString(bytes(cramjam.snappy.decompress_raw(body)))
    return request


class RemoteWriteMetrics(Collector):
    """Exports a RemoteWriter's own counters (register it on /metrics' registry)."""

    def __init__(self, writer: RemoteWriter) -> None:
        self._writer = writer

    def collect(self) -> Iterable[Metric]:
        writer = self._writer
        stats = writer.stats
        sent = CounterMetricFamily(
            "probemesh_remote_write_requests",
            "Remote-write requests accepted by the receiver (2xx).",
        )
        sent.add_metric([], stats.sent_requests)
        samples = CounterMetricFamily(
            "probemesh_remote_write_samples",
            "Samples in remote-write requests accepted by the receiver.",
        )
        samples.add_metric([], stats.sent_samples)
        failed = CounterMetricFamily(
            "probemesh_remote_write_failed_samples",
            "Samples in remote-write attempts that failed (5xx, 429, 4xx or a connection "
            "error); a retried request counts at every failed attempt.",
        )
        failed.add_metric([], stats.failed_samples)
        retries = CounterMetricFamily(
            "probemesh_remote_write_retries",
            "Remote-write attempts that failed with 5xx, 429 or a connection error "
            "and were retried.",
        )
        retries.add_metric([], stats.retries)
        dropped = CounterMetricFamily(
            "probemesh_remote_write_dropped_requests",
            "Remote-write requests given up, by reason (superseded = replaced by a newer "
            "snapshot, journal_full, rejected = 4xx, expired = retried past max_age, shutdown).",
            labels=["reason"],
        )
        dropped_samples = CounterMetricFamily(
            "probemesh_remote_write_dropped_samples",
            "Samples in dropped remote-write requests, by reason.",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], stats.dropped_requests[reason])
            dropped_samples.add_metric([reason], stats.dropped_samples[reason])
        pending = GaugeMetricFamily(
            "probemesh_remote_write_pending_requests",
            "Remote-write requests waiting or in flight, by stream (results = the journal "
            "on disk, snapshot = the latest aggregates).",
            labels=["stream"],
        )
        pending.add_metric(["results"], writer.pending_results)
        pending.add_metric(["snapshot"], writer.pending_snapshot)
        lag = GaugeMetricFamily(
            "probemesh_remote_write_lag_seconds",
            "How long the oldest journaled result request has waited (0 when none waits).",
        )
        lag.add_metric([], writer.lag())
        last = GaugeMetricFamily(
            "probemesh_remote_write_last_success_timestamp_seconds",
            "Unix time of the last request the receiver accepted (0 = never).",
        )
        last.add_metric([], stats.last_success)
        delay = HistogramMetricFamily(
            "probemesh_remote_write_result_delay_seconds",
            "Seconds from results being applied and journaled to the receiver accepting "
            "them, per journal entry (one ingest commit's results).",
        )
        cumulative, running = [], 0
        for bound, count in zip(
            [*(f"{b:g}" for b in DELAY_BUCKETS), "+Inf"], stats.delay_counts, strict=True
        ):
            running += count
            cumulative.append((bound, float(running)))
        delay.add_metric([], cumulative, stats.delay_sum)
        yield from (sent, samples, failed, retries, dropped, dropped_samples, pending, lag, last)
        yield delay


class RemoteWriter:
    """Remote-writes every result and periodic aggregate snapshots; see the module docstring.

    With a ``journal``, results handed to :meth:`write_results` are written one
    sample per result and left out of the snapshots; without one, snapshots carry
    every family (the latest value of each, as a scrape would).

    Use ``await start()`` once and ``await stop()`` in a ``finally`` block.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        url: str,
        *,
        interval: float = 15.0,
        external_labels: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_samples_per_request: int = 5000,
        min_backoff: float = 0.1,
        max_backoff: float = 10.0,
        max_age: float = 600.0,
        stop_timeout: float = 5.0,
        metrics_registry: CollectorRegistry | None = None,
        journal: Journal | None = None,
        clock: _Clock | None = None,
        bulk_registry: CollectorRegistry | None = None,
        bulk_every: int = 4,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"remote write url {url!r}: must start with http:// or https://")
        if interval <= 0 or timeout <= 0 or max_samples_per_request < 1 or bulk_every < 1:
            raise ConfigError(
                "remote write: interval and timeout must be > 0, max_samples_per_request "
                "and bulk_every >= 1"
            )
        for name in external_labels or {}:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ConfigError(f"remote write external label {name!r}: not a valid label name")
        self.registry = registry
        self.url = url
        self.interval = interval
        self.external_labels = dict(external_labels or {})
        self.timeout = timeout
        self.max_samples_per_request = max_samples_per_request
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_age = max_age
        self.stop_timeout = stop_timeout
        self.journal = journal
        self.stats = _Stats()
        self._clock = clock or _Clock()
        exclude = RESULT_FAMILIES if journal is not None else frozenset()
        self._sources = [_Source(registry, 1, exclude)]
        if bulk_registry is not None:
            self._sources.append(_Source(bulk_registry, bulk_every, exclude))
        self._snapshot_count = 0
        self._snapshots: collections.deque[_Pending] = collections.deque()
        self._journaled: collections.deque[Entry] = collections.deque()  # read ahead
        self._in_flight = 0  # snapshot requests in flight
        # Each sender sleeps on its own event; "idle" = nothing waits or is in flight.
        self._results_ready = asyncio.Event()
        self._snapshot_ready = asyncio.Event()
        self._results_idle = asyncio.Event()
        if not self.pending_results:  # a journal left by the last run is sent first
            self._results_idle.set()
        self._snapshot_idle = asyncio.Event()
        self._snapshot_idle.set()
        self._last_ts_ms = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        if metrics_registry is not None:
            metrics_registry.register(RemoteWriteMetrics(self))

    @property
    def pending(self) -> int:
        """Requests waiting or in flight (journal and snapshot)."""
        return self.pending_results + len(self._snapshots) + self._in_flight

    @property
    def pending_results(self) -> int:
        """Journaled result requests not yet delivered (the one in flight included)."""
        return self.journal.requests if self.journal is not None else 0

    @property
    def pending_snapshot(self) -> int:
        return len(self._snapshots)

    def lag(self) -> float:
        """Seconds the oldest journaled request has waited; 0 when none waits."""
        queued_at = self.journal.head_queued_at if self.journal is not None else None
        return 0.0 if queued_at is None else max(0.0, self._clock.time() - queued_at)

    async def start(self) -> None:
        """Take the first snapshot, open the HTTP session, start the snapshot and send loops."""
        if self._tasks:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), headers=HEADERS
        )
        if not self.external_labels:
            log.warning(
                "remote write to %s without external labels: give each collector a distinct "
                "one (e.g. collector=NAME) or their series collide in the receiver",
                self.url,
            )
        self.snapshot(every_source=True)  # the first snapshot at once, then one per interval
        self._tasks = [
            asyncio.create_task(self._snapshot_loop(), name="remote-write-snapshot"),
            asyncio.create_task(self._send_results_loop(), name="remote-write-send-results"),
            asyncio.create_task(self._send_snapshot_loop(), name="remote-write-send-snapshot"),
        ]

    async def stop(self) -> None:
        """Take a last snapshot, try to deliver what is waiting, then close.

        Waits at most ``stop_timeout`` seconds. Snapshot requests still pending
        then are dropped with reason ``shutdown``; journaled results stay on disk
        and are sent after the next start.
        """
        if not self._tasks:
            return
        snapshot_task, *senders = self._tasks
        snapshot_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await snapshot_task
        self.snapshot(every_source=True)
        if self.pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_idle(), self.stop_timeout)
        for task in senders:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._snapshots:
            self._drop(self._snapshots.popleft(), "shutdown")
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.journal is not None:
            self.journal.close()

    async def write_results(self, applied: Sequence[Applied]) -> None:
        """Journal the samples of newly applied results (in a worker thread).

        Ingest awaits this before it commits the results' marks: once it
        returns, the samples are on disk and will be delivered.
        """
        if self.journal is None or not applied:
            return
        bodies = await asyncio.to_thread(self._journal_results, applied)
        if bodies:
            self._results_idle.clear()
            self._results_ready.set()

    def _journal_results(self, applied: Sequence[Applied]) -> int:
        assert self.journal is not None
        requests = encode_results(applied, self.external_labels, self.max_samples_per_request)
        dropped = self.journal.append(requests, self._clock.time())
        for samples in dropped:
            self._count_drop(samples, "journal_full")
        return len(requests)

    def snapshot(self, every_source: bool = False) -> int:
        """Snapshot the aggregates now, superseding what is unsent of the previous one;
        return the number of samples. every_source: the pair registry too, due or not."""
        steps = self._snapshot_steps(every_source)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return int(done.value)

    def _snapshot_steps(self, every_source: bool = False) -> Generator[None, None, int]:
        """The snapshot's work, yielding between slices of SLICE_SAMPLES samples
        (the snapshot loop lets the event loop run there); returns the samples.

        The registry is read every time, the bulk registry (ten counter series
        per check x agent pair, hundreds of thousands in a large mesh, and the
        histograms) every bulk_every-th time: what a scrape of those families
        at a longer interval would give, for a fraction of the cost.
        """
        count = self._snapshot_count
        self._snapshot_count += 1
        now_ms = max(int(self._clock.time() * 1000), self._last_ts_ms + 1)
        self._last_ts_ms = now_ms
        total = 0
        for index, source in enumerate(self._sources):
            if not every_source and count % source.every:
                continue
            encoded = yield from self._source_requests(source, index, now_ms)
            total += sum(item.samples for item in encoded)
            for item in [p for p in self._snapshots if p.source == index]:
                self._snapshots.remove(item)
                self._drop(item, "superseded")
            self._snapshots.extend(encoded)
        if self._snapshots:
            self._snapshot_idle.clear()
            self._snapshot_ready.set()
        return total

    def _source_requests(
        self, source: _Source, index: int, now_ms: int
    ) -> Generator[None, None, list[_Pending]]:
        """One source's snapshot as requests, encoded as its samples come (the
        snapshot is never held as a whole), then stale markers for the series
        of its previous snapshot that are gone; metadata rides with the last
        request. A series is known by the hash of its encoded label set."""
        stamp = remote_wire.stamp(now_ms)
        limit = self.max_samples_per_request
        metadata: list[remote_pb2.MetricMetadata] = []
        seen: set[int] = set()
        digest = 0
        packer = zlib.compressobj(1)
        packed: list[bytes] = []
        parts: list[bytes] = []
        encoded: list[_Pending] = []

        def add(series: list[bytes]) -> None:
            at = 0
            while at < len(series):
                if len(parts) >= limit:
                    flush()
                room = limit - len(parts)
                parts.extend(series[at : at + room])
                at += room

        def flush(meta: bytes = b"") -> None:
            samples = len(parts)
            if meta:
                parts.append(meta)
            if samples or meta:
                body = remote_wire.request(parts)
                encoded.append(_Pending(body, samples, self._clock.monotonic(), index))
            parts.clear()

        timeseries_at, pack = remote_wire.timeseries_at, _LENGTH.pack
        for chunk in _samples(source.registry, self.external_labels, source.exclude, metadata):
            fresh, hashes = _first_seen(chunk, seen)
            digest += hashes
            packed.append(packer.compress(b"".join([pack(len(s)) + s for s, _ in fresh])))
            add(timeseries_at(fresh, stamp))
            yield
        previous = source.previous
        if previous.count != len(seen) or previous.digest != digest:
            gone: list[tuple[bytes, float]] = []
            for done, labels in enumerate(previous.label_sets(), 1):
                if hash(labels) not in seen:
                    gone.append((labels, STALE_NAN))
                if not done % SLICE_SAMPLES:
                    add(timeseries_at(gone, stamp))
                    gone = []
                    yield
            add(timeseries_at(gone, stamp))
        packed.append(packer.flush())
        source.previous = SeriesRecord(b"".join(packed), len(seen), digest)
        flush(b"".join(remote_wire.field(3, m.SerializeToString()) for m in metadata))
        return encoded

    def _drop(self, item: _Pending, reason: str) -> None:
        self._count_drop(item.samples, reason)

    def _count_drop(self, samples: int, reason: str) -> None:
        self.stats.dropped_requests[reason] += 1
        self.stats.dropped_samples[reason] += samples
        log.warning(
            "remote write to %s: dropped a request of %d samples (%s)", self.url, samples, reason
        )

    async def _snapshot_loop(self) -> None:
        next_at = self._clock.monotonic()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - self._clock.monotonic()))
            try:
                for _ in self._snapshot_steps():
                    await asyncio.sleep(0)  # a slice at a time: the loop serves streams between
            except Exception:  # a broken collector must not stop remote write
                log.exception("remote write: snapshot of the registry failed")

    def _take_results(self, delivered: Sequence[Entry]) -> tuple[list[Entry], bytes]:
        """In a worker thread: forget the entries just delivered, then return the
        oldest journaled entries that fit in one request (at least one) and that
        request's body.

        Ingest journals one entry per commit, a few results each when agents
        send one result at a time: sent one by one, each would wait a round
        trip of its own and the journal would outgrow what one sender delivers.
        One thread hop per request: on a busy event loop every hop waits for
        the loop's turn, and the sender's pace with it.
        """
        journal = self.journal
        assert journal is not None
        pending = self._journaled
        if delivered:
            journal.remove(delivered)
            for _ in delivered:
                pending.popleft()
        if journal.requests > len(pending) and sum(e.samples for e in pending) < (
            self.max_samples_per_request
        ):
            pending.clear()
            pending.extend(journal.head(READ_AHEAD))
        taken: list[Entry] = []
        samples = 0
        for entry in pending:
            if taken and samples + entry.samples > self.max_samples_per_request:
                break
            taken.append(entry)
            samples += entry.samples
        return taken, merge([e.body for e in taken]) if taken else b""

    async def _all_idle(self) -> None:
        await self._results_idle.wait()
        await self._snapshot_idle.wait()

    async def _send_results_loop(self) -> None:
        if self.journal is None:
            return
        delivered: list[Entry] = []
        while True:
            self._results_ready.clear()  # before looking: a wake-up after it is kept
            entries, body = await asyncio.to_thread(self._take_results, delivered)
            delivered = entries
            if not entries:
                # Results journaled since the look set ready: not idle, look again.
                if not self._results_ready.is_set():
                    self._results_idle.set()
                await self._results_ready.wait()
                continue
            await self._send_results(entries, body)

    async def _send_snapshot_loop(self) -> None:
        while True:
            self._snapshot_ready.clear()
            if not self._snapshots:
                self._snapshot_idle.set()
                await self._snapshot_ready.wait()
                continue
            await self._send_snapshot(self._snapshots.popleft())

    async def _send_snapshot(self, item: _Pending) -> None:
        self._in_flight = 1
        try:
            outcome = await self._deliver(item.body, item.samples, item.created)
        except asyncio.CancelledError:
            self._drop(item, "shutdown")
            raise
        finally:
            self._in_flight = 0
        if outcome != "sent":
            self._drop(item, outcome)

    async def _send_results(self, entries: list[Entry], body: bytes) -> None:
        """Deliver one request of journaled entries; the next _take_results forgets them."""
        samples = sum(e.samples for e in entries)
        outcome = await self._deliver(body, samples, None)
        if outcome == "sent":
            now = self._clock.time()
            for entry in entries:
                self.stats.delayed(max(0.0, now - entry.queued_at))
        else:
            self._count_drop(samples, outcome)

    async def _deliver(self, body: bytes, samples: int, created: float | None) -> str:
        """Send one request, retrying recoverable failures with backoff.

        Returns "sent", "rejected" (a 4xx other than 429) or "expired" (older than
        max_age; only when ``created`` is given).
        """
        backoff = self.min_backoff
        while True:
            retry_after: float | None = None
            try:
                assert self._session is not None
                async with self._session.post(self.url, data=body) as response:
                    status = response.status
                    if 200 <= status < 300:
                        self.stats.sent_requests += 1
                        self.stats.sent_samples += samples
                        self.stats.last_success = self._clock.time()
                        return "sent"
                    self.stats.failed_samples += samples
                    detail = (await response.text())[:200].strip()
                    if status == 429:
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    elif status < 500:
                        log.error(
                            "remote write to %s rejected with %d: %s", self.url, status, detail
                        )
                        return "rejected"
                    problem = f"HTTP {status}: {detail}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.stats.failed_samples += samples
                problem = f"{type(exc).__name__}: {exc}"
            if created is not None and self._clock.monotonic() - created >= self.max_age:
                return "expired"
            self.stats.retries += 1
            delay = retry_after if retry_after is not None else backoff
            delay = min(delay, self.max_backoff) * random.uniform(0.8, 1.0)
            log.info("remote write to %s failed (%s); retry in %.2fs", self.url, problem, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)


class _Clock:
    """Wall and monotonic time; tests may substitute their own."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()
