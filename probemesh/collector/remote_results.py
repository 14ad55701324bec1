"""Every applied result's samples, at the probe's own time, for remote write.

A scrape (or a periodic snapshot) samples the latest value: a 5 s check seen
every 15 s loses two results of three, and a backlog replayed after a partition
never shows at all. Here each result becomes its own remote-write samples,
stamped with the time the agent probed, so the TSDB stores what every agent saw,
late results included. Receivers that accept older samples than they hold
(VictoriaMetrics always; Prometheus with ``out_of_order_time_window``) store a
replayed backlog where it belongs.

Encoded requests wait in :class:`Journal`, a capped SQLite file in the data dir,
until the receiver takes them. Ingest appends to it *before* it commits the
results' sequence marks, so a crash can only cause a result to be journaled
twice (re-applied after the agent resends it), never to be missing: delivery is
at least once, as Prometheus's own remote write is. A receiver that takes a
sample it already holds at that timestamp stores it once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cramjam

from probemesh.catalog import PROBE_METRICS
from probemesh.collector import remote_wire
from probemesh.collector.runnable import NOT_RUNNABLE, rule_and_detail
from probemesh.collector.samples import KeptSamples
from probemesh.errors import StateError
from probemesh.v1 import mesh_pb2 as pb

RESULT_FAMILIES = frozenset(
    {"probe_success", "probe_duration_seconds", NOT_RUNNABLE, *PROBE_METRICS}
)
"""Families written per result; the periodic snapshot leaves them out."""


@dataclass(frozen=True)
class Applied:
    """Results of one agent applied by one ingest round, with the labels they carry."""

    agent: str
    country: str
    region: str
    results: Sequence[pb.Result]
    # The target each result ran against, as the collector assigned it: a late
    # result of a re-targeted check keeps its old target.
    targets: Sequence[str]
    # Each result's samples as ingest's SampleFilter kept them: the catalog, the
    # per-result cap and duplicates are judged once, there, for every reader.
    samples: Sequence[KeptSamples]


def encode_results(
    applied: Iterable[Applied], external_labels: Mapping[str, str], max_samples: int
) -> list[tuple[bytes, int]]:
    """The series of each result as (snappy-compressed WriteRequest, samples)
    requests of at most max_samples samples: probe_success,
    probe_duration_seconds and the samples the catalog admits, labelled as on
    /metrics, at the result's time; a check the agent refused by policy is
    probemesh_check_not_runnable instead."""
    label = remote_wire.label
    parts: list[bytes] = []
    requests: list[tuple[bytes, int]] = []
    # The labels of a result's samples in sorted order, per shape of its kept
    # samples and set of base label names: worked out once per call, not per sample.
    plans: dict[tuple[object, ...], list[list[tuple[tuple[str, ...], bytes]]]] = {}
    for group in applied:
        common = {**external_labels, "agent": group.agent, "country": group.country}
        if group.region:
            common["region"] = group.region
        # "__name__" sorts before every lower-case name: a sample without labels
        # of its own is then its name followed by the sorted base labels.
        name_first = all(k > "__name__" for k in common)
        names = tuple(sorted({*common, "check", "target"}))
        for result, target, kept in zip(group.results, group.targets, group.samples, strict=True):
            base = {**common, "check": result.check, "target": target}
            stamp = remote_wire.stamp(int(result.timestamp * 1000))
            encoded = {k: label(k, base[k]) for k in names if base[k]}
            plain = b"".join(encoded.values())
            if result.reason == pb.FAILURE_REASON_POLICY:  # no probe ran: no probe_success of 0
                rule = rule_and_detail(result.message)[0]
                parts.append(_series(NOT_RUNNABLE, base, (("rule", rule),), 1.0, stamp))
                continue
            success = 1.0 if result.success else 0.0
            duration = result.duration_seconds
            if name_first:
                parts.append(remote_wire.timeseries(_SUCCESS + plain, success, stamp))
                parts.append(remote_wire.timeseries(_DURATION + plain, duration, stamp))
            else:
                parts.append(_series("probe_success", base, (), success, stamp))
                parts.append(_series("probe_duration_seconds", base, (), duration, stamp))
            keys, values = kept
            shape = (keys, *names)
            plan = plans.get(shape)
            if plan is None:
                plan = plans[shape] = [_plan(name, own, names) for name, own in keys]
            runs = {names: plain}  # each run of base labels, encoded once per result
            for sample_plan, value in zip(plan, memoryview(values).cast("d"), strict=True):
                pieces = []
                for run, constant in sample_plan:
                    if not run:
                        pieces.append(constant)
                        continue
                    joined = runs.get(run)
                    if joined is None:
                        joined = runs[run] = b"".join([encoded.get(k, b"") for k in run])
                    pieces.append(joined)
                parts.append(remote_wire.timeseries(b"".join(pieces), value, stamp))
            if len(parts) >= max_samples:
                requests += _requests(parts, max_samples)
                parts = parts[len(parts) - len(parts) % max_samples :]
    if parts:
        requests += _requests(parts, max_samples)
    return requests


def _plan(
    name: str, labels: Iterable[tuple[str, str]], base: Iterable[str]
) -> list[tuple[tuple[str, ...], bytes]]:
    """A sample's labels in sorted order, as pieces: (names, b"") for a run of
    base labels, taken from each result, or ((), encoded) for its name or one
    of its own labels, which win over the base ones (an empty value is no label)."""
    own = dict(labels)
    merged = {**dict.fromkeys(base, ""), **own, "__name__": name}
    own["__name__"] = name
    plan: list[tuple[tuple[str, ...], bytes]] = []
    run: list[str] = []
    for k in sorted(merged):
        if k not in own:
            run.append(k)
            continue
        if run:
            plan.append((tuple(run), b""))
            run = []
        plan.append(((), remote_wire.label(k, own[k]) if own[k] else b""))
    if run:
        plan.append((tuple(run), b""))
    return plan


def _requests(parts: list[bytes], max_samples: int) -> list[tuple[bytes, int]]:
    """Requests of max_samples series each, and the rest when it is all there is."""
    whole = len(parts) - len(parts) % max_samples if len(parts) >= max_samples else len(parts)
    return [
        (remote_wire.request(parts[i : i + max_samples]), len(parts[i : i + max_samples]))
        for i in range(0, whole, max_samples)
    ]


def _series(
    name: str,
    base: Mapping[str, str],
    extra: Iterable[tuple[str, str]],
    value: float,
    stamp: bytes,
) -> bytes:
    labels = {**base, **dict(extra), "__name__": name}
    encoded = b"".join([remote_wire.label(k, labels[k]) for k in sorted(labels) if labels[k]])
    return remote_wire.timeseries(encoded, value, stamp)


_SUCCESS = remote_wire.label("__name__", "probe_success")
_DURATION = remote_wire.label("__name__", "probe_duration_seconds")


def merge(bodies: Sequence[bytes]) -> bytes:
    """One snappy-compressed WriteRequest holding the series of every body.

    WriteRequests without metadata concatenate: a repeated field's occurrences
    add up when protobuf parses them, so the decompressed bodies side by side
    are one request with all their series.
    """
    if len(bodies) == 1:
        return bodies[0]
    joined = b"".join(bytes(cramjam.snappy.decompress_raw(body)) for body in bodies)
    return bytes(cramjam.snappy.compress_raw(joined))


@dataclass(frozen=True)
class Entry:
    """One journaled request."""

    id: int
    body: bytes
    samples: int
    queued_at: float  # when it was journaled: remote-write lag is measured from it


class Journal:
    """A capped FIFO of encoded requests on disk; the oldest go first when full.

    Methods block on SQLite: call them from a worker thread (asyncio.to_thread);
    a lock serialises them. Each call is its own short transaction, so the file
    stays consistent across a crash at any point. ``requests``, ``bytes`` and
    ``head_queued_at`` are kept in memory for the metrics.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.head_queued_at: float | None = None
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " body BLOB NOT NULL, samples INTEGER NOT NULL, queued_at REAL NOT NULL)"
            )
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM requests"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{path}: cannot open the remote-write journal: {exc}") from None
        self.requests, self.bytes = int(row[0]), int(row[1])
        self._refresh_head()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the journal (the caller holds the lock); the
        head's time is read again after it, committed or not."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            self._refresh_head()

    def _refresh_head(self) -> None:
        row = self._db.execute("SELECT queued_at FROM requests ORDER BY id LIMIT 1").fetchone()
        self.head_queued_at = None if row is None else float(row[0])

    def append(self, items: Iterable[tuple[bytes, int]], now: float) -> list[int]:
        """Journal (body, samples) items; return the sample counts of the requests
        dropped from the head to stay under max_bytes."""
        with self._lock:
            return self._append(items, now)

    def _append(self, items: Iterable[tuple[bytes, int]], now: float) -> list[int]:
        dropped: list[int] = []
        with self._transaction() as db:
            for body, samples in items:
                db.execute(
                    "INSERT INTO requests (body, samples, queued_at) VALUES (?, ?, ?)",
                    (body, samples, now),
                )
                self.requests += 1
                self.bytes += len(body)
            while self.bytes > self.max_bytes and self.requests > 1:
                row = db.execute(
                    "SELECT id, LENGTH(body), samples FROM requests ORDER BY id LIMIT 1"
                ).fetchone()
                db.execute("DELETE FROM requests WHERE id = ?", (row[0],))
                self.requests -= 1
                self.bytes -= int(row[1])
                dropped.append(int(row[2]))
        return dropped

    def head(self, count: int) -> list[Entry]:
        """The oldest ``count`` entries, without removing them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, samples, queued_at FROM requests ORDER BY id LIMIT ?", (count,)
            ).fetchall()
        return [Entry(int(r[0]), bytes(r[1]), int(r[2]), float(r[3])) for r in rows]

    def remove(self, entries: Sequence[Entry]) -> None:
        """Forget delivered (or given up) entries, in one transaction."""
        with self._lock, self._transaction() as db:
            for entry in entries:
                cursor = db.execute("DELETE FROM requests WHERE id = ?", (entry.id,))
                if cursor.rowcount:
                    self.requests -= 1
                    self.bytes -= len(entry.body)

    def close(self) -> None:
        with self._lock:
            self._db.close()
