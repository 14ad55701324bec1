"""The mesh at scale: 10,000 simulated agents x 20 checks at 60 s into real collectors.

Everything but the probing is real: ``probemesh collector`` processes (one on
SQLite, or several sharing one PostgreSQL with ``--postgres``), remote write
into a real VictoriaMetrics, and agents that are gRPC streams with real tokens
created in the collectors' database. The agents run in ``--processes`` load
processes, many asyncio streams each over a few channels: each agent sends
Hello, takes the checks the collector pushes, and from then on produces one
result per check and interval (at a random phase), tagged with the pushed
revision, in batches as a real agent sends them (on the wall clock's
``--send-grid``, an agent's flush interval), honouring Acks (held back by
the collector for up to ``--ack-hold`` seconds, as agents allow). A result is
an HTTP, DNS, TCP or ICMP result with the samples blackbox_exporter's prober
emits; 1 % of them fail.

The first interval is warm-up (every pair gets its first result); the figures
are taken over the rest of the run. Per collector:

* CPU per 1,000 results applied (the process's CPU over results applied);
* RSS per check x agent pair, over the idle collector ((RSS - RSS before any
  agent) / pairs served, in kB = 1,000 bytes): the steady state (median of the
  readings every 2 s after warm-up), their peak, and the values at the end of
  the warm-up and of the run; --heap-report says where the memory is;
* /metrics: time of a full GET (median of 3) and body size, and those of the
  scrape of the collector's own health (``collect[]=collector``), which the
  periodic readings below use; taken once the results are delivered, since a
  full GET holds the collector's loop for seconds in a large mesh, and taken
  during the run it delayed the results whose lag is measured;
* the outage round (probemesh_outage_round_seconds, the last round's seconds per
  part, read every 15 s): the evaluator's evaluate over every pair of the
  mesh, and each collector's publish of its own agents' inputs;
* the garbage collector's pauses (probemesh_gc_pause_seconds): their time,
  as a share of the collector's CPU, and the longest;
* database writes per second (PostgreSQL: commits and rows written, from
  pg_stat_database, for the whole mesh; SQLite: bytes the collector wrote to disk);
* remote-write lag: probe time to queryable in VictoriaMetrics, for tracer
  pairs, p50 / p99 / max, split per hop (produced -> written by the agent ->
  posted by its collector -> accepted -> queryable) by an idle observer
  process (bench/rw_observer.py: a relay between the collectors and
  VictoriaMetrics, one query per poll, no flush forced, and a canary for
  VictoriaMetrics' own delay);
* the streams a collector ended during the run, with the status the agent
  got and the reason the collector logged;
* samples lost: results each agent produced, less those it still holds
  unacked when the run ends (a real agent keeps them on disk and sends them
  again), vs probe_success samples stored in VictoriaMetrics per agent x check,
  after the journals drained; duplicated: samples stored beyond those produced.

    .venv/bin/python bench/mesh_scale.py                             # the full run
    .venv/bin/python bench/mesh_scale.py --agents 300 --seconds 150   # a short one
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycountry
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import cpu_seconds
from probemesh.agent.link import ACK_HOLD, LinkSettings
from probemesh.agent.main import FLUSH_INTERVAL
from probemesh.checks import parse_checks
from probemesh.collector.database import open_database
from probemesh.collector.samples import SampleFilter
from probemesh.collector.tokens import TokenStore
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD, encode_batch, serialize
from tests.harness import Mesh, Proc, Samples, free_port, total, wait_for

COUNTRIES = 40
FAILURE_RATE = 0.01
KINDS = ("http", "http", "dns", "tcp", "http", "icmp", "http", "dns", "tcp", "http")
"""The prober of check i is KINDS[i % 10]: half HTTP, the rest DNS, TCP and ICMP."""
MODULES = {
    "http": ("http_2xx", "https://www.example.org/"),
    "dns": ("dns_a", "192.0.2.53"),
    "tcp": ("tcp_connect", "www.example.org:443"),
    "icmp": ("icmp", "www.example.org"),
}
_TIMESTAMP_TAG = b"\x19"  # Result.timestamp: field 3, wire type 1 (64-bit)
HEARTBEAT = 10.0  # seconds, an agent's default heartbeat interval
HEALTH = "?collect%5B%5D=collector"
"""The query of a scrape of the collector's own families: every reading here is one
of them, and a full body costs the collectors (and this process) the CPU they need."""
END_READING = 6.0
"""Seconds before the load stops that the end-of-run RSS and heap are read: the
agents disconnect as soon as it stops, and what their streams held is freed."""


def checks_yaml(count: int, interval: float) -> str:
    lines = [
        "modules:",
        "  http_2xx: {prober: http}",
        "  dns_a: {prober: dns, dns: {query_name: www.example.org, query_type: A}}",
        "  tcp_connect: {prober: tcp}",
        "  icmp: {prober: icmp}",
        "checks:",
    ]
    for i in range(count):
        module, target = MODULES[KINDS[i % len(KINDS)]]
        lines.append(
            f'  - {{name: c{i:02d}, target: "{target}", module: {module}, interval: {interval:g}s}}'
        )
    return "\n".join(lines) + "\n"


def samples_of(kind: str) -> list[pb.Sample]:
    """What blackbox_exporter's prober of that kind emits for one probe."""
    s = pb.Sample
    common = [
        s(name="probe_ip_protocol", value=4),
        s(name="probe_dns_lookup_time_seconds", value=0.002),
    ]
    if kind == "http":
        return [
            *(s(name="probe_http_duration_seconds", labels={"phase": p}, value=0.01)
              for p in ("resolve", "connect", "tls", "processing", "transfer")),
            s(name="probe_http_status_code", value=200), s(name="probe_http_content_length", value=5120),
            s(name="probe_http_uncompressed_body_length", value=5120), s(name="probe_http_redirects", value=0),
            s(name="probe_http_ssl", value=1), s(name="probe_http_version", value=1.1),
            s(name="probe_failed_due_to_regex", value=0), s(name="probe_ssl_earliest_cert_expiry", value=1.8e9),
            s(name="probe_tls_version_info", labels={"version": "TLS 1.3"}, value=1), *common,
        ]  # fmt: skip
    if kind == "dns":
        return [
            *(s(name="probe_dns_duration_seconds", labels={"phase": p}, value=0.003)
              for p in ("resolve", "connect", "request")),
            s(name="probe_dns_answer_rrs", value=1), s(name="probe_dns_authority_rrs", value=0),
            s(name="probe_dns_additional_rrs", value=0), s(name="probe_dns_query_succeeded", value=1), *common,
        ]  # fmt: skip
    if kind == "icmp":
        return [
            *(s(name="probe_icmp_duration_seconds", labels={"phase": p}, value=0.004)
              for p in ("resolve", "setup", "rtt")),
            s(name="probe_icmp_reply_hop_limit", value=56), *common,
        ]  # fmt: skip
    return common


# ---------------------------------------------------------------- load process


@dataclass
class AgentSpec:
    """One simulated agent: its identity, token and the collector it streams to."""

    agent_id: str
    country: str
    token: str
    address: str


@dataclass
class LoadSpec:
    """What one load process runs (written by the driver as JSON)."""

    agents: list[AgentSpec]
    go: str  # the driver writes [start, stop] wall times here once every process is connected
    interval: float
    drain: float  # seconds the agents may take to send what they hold after the run
    channels: int
    tracers: list[tuple[str, str]]  # (agent, check) pairs whose sending this process times
    out: str
    seed: int
    send_grid: float  # results are written on this wall-clock grid; 0: each at its own time
    country_offsets: bool  # each country writes at its own offset within the grid step
    ack_hold: float  # Hello.ack_hold_seconds: how long the collector may hold an Ack back


@dataclass
class AgentRun:
    """One agent's stream in a load process: its checks, sequence, buffer and counts."""

    spec: AgentSpec
    call: Any = None
    revision: int = 0
    checks: list[str] = field(default_factory=list)
    templates: list[tuple[bytes, bytes]] = field(default_factory=list)  # (ok, failed) per check
    seq: int = 0  # last sequence number sent
    pending: list[bytes] = field(default_factory=list)  # produced, not sent yet (the "disk")
    pending_checks: list[int] = field(default_factory=list)  # the check of each pending result
    sent: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    """(seq, check) of every result sent and not acked yet: the agent still holds it."""
    inflight: int = 0  # batches sent and not acked
    produced: list[int] = field(default_factory=list)  # results per check
    acked: int = 0
    last_sent: float = 0.0  # when the agent last wrote to its stream
    echo: tuple[float, float] | None = None  # a clock probe to answer: (its timestamp, arrival)
    pending_traced: list[tuple[str, int]] = field(default_factory=list)
    """(check, timestamp ms) of the tracer results among pending."""
    error: str = ""


class Templates:
    """Each check's result, encoded once without its timestamp; appending the
    timestamp field gives a result (protobuf: the last occurrence of a field wins)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str, int, str], tuple[bytes, bytes]] = {}
        self.filter = SampleFilter()

    def of(self, check: pb.Check, revision: int) -> tuple[bytes, bytes]:
        key = (check.name, check.target, revision, check.prober)
        cached = self.cache.get(key)
        if cached is None:
            samples = samples_of(check.prober)
            self.filter.keep(samples)
            assert not +self.filter.rejected, f"{check.prober}: samples the catalog refuses"
            ok = pb.Result(
                check=check.name, target=check.target, success=True, duration_seconds=0.05,
                samples=samples, revision=revision,
                http_phase_seconds=[0.01] * 5 if check.prober == "http" else [],
            )  # fmt: skip
            failed = pb.Result(
                check=check.name, target=check.target, success=False, duration_seconds=5.0,
                reason=pb.FAILURE_REASON_TIMEOUT, message="probe timed out", revision=revision,
            )  # fmt: skip
            cached = self.cache[key] = (ok.SerializeToString(), failed.SerializeToString())
        return cached


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    import grpc

    rng = random.Random(spec.seed)
    channels: dict[str, list[grpc.aio.Channel]] = {}
    for address in sorted({a.address for a in spec.agents}):
        channels[address] = [grpc.aio.insecure_channel(address) for _ in range(spec.channels)]
    templates = Templates()
    runs = [AgentRun(a) for a in spec.agents]
    tracer_set = set(spec.tracers)
    traced: list[tuple[str, str, int, float]] = []  # (agent, check, timestamp ms, written at)
    windows = LinkSettings.window

    async def connect(i: int, run: AgentRun) -> None:
        channel = channels[run.spec.address][i % spec.channels]
        call = channel.stream_stream(
            SERVICE_METHOD, request_serializer=serialize,
            response_deserializer=pb.CollectorMessage.FromString,
        )(metadata=(("authorization", f"Bearer {run.spec.token}"),))  # fmt: skip
        await call.write(
            pb.AgentMessage(
                hello=pb.Hello(
                    agent_id=run.spec.agent_id, country=run.spec.country, version="bench",
                    capabilities=["http", "dns", "tcp", "icmp"], allow_private_targets=True,
                    min_interval_seconds=1.0, features=["clock_echo"], ack_hold_seconds=spec.ack_hold,
                )
            )
        )  # fmt: skip
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                raise RuntimeError("stream ended before the checks came")
            kind = message.WhichOneof("payload")
            if kind == "welcome":
                run.seq = message.welcome.acked_seq
                if message.welcome.collector_time:  # the first clock probe
                    run.echo = (message.welcome.collector_time, time.monotonic())
            elif kind == "checks":
                run.revision = message.checks.revision
                run.checks = [c.name for c in message.checks.checks]
                run.templates = [templates.of(c, run.revision) for c in message.checks.checks]
                run.produced = [0] * len(run.checks)
                break
        run.last_sent = time.monotonic()
        run.call = call

    counting = False  # messages are counted after the warm-up interval, until the stop
    sent_kinds: collections.Counter[str] = collections.Counter()
    heard_kinds: collections.Counter[str] = collections.Counter()

    async def reader(run: AgentRun) -> None:
        while True:
            try:
                message = await run.call.read()
            except grpc.aio.AioRpcError as exc:  # the collector ended the stream: say why
                if not run.error:
                    run.error = f"ended by the collector: {exc.code().name}: {exc.details()}"
                return
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("payload")
            if counting:
                heard_kinds[kind] += 1
            if kind == "heartbeat" and message.heartbeat.timestamp:
                run.echo = (message.heartbeat.timestamp, time.monotonic())
            elif kind == "ack":
                ack = message.ack
                run.inflight -= 1 + len(ack.more)
                run.acked = max(run.acked, ack.seq)
                while run.sent and run.sent[0][0] <= run.acked:
                    run.sent.popleft()

    semaphore = asyncio.Semaphore(200)  # connections set up at once

    readers: list[asyncio.Task[None]] = []

    async def connect_one(i: int, run: AgentRun) -> None:
        async with semaphore:
            try:
                await connect(i, run)
            except Exception as exc:
                run.error = f"{type(exc).__name__}: {exc}"
                return
        readers.append(asyncio.create_task(reader(run)))

    async def write(run: AgentRun, message: Any) -> None:
        run.last_sent = time.monotonic()
        if counting:
            sent_kinds[_kind(message)] += 1
        try:
            await run.call.write(message)
        except Exception as exc:
            if not run.error:
                run.error = await ended_because(run.call, exc)

    async def ended_because(call: Any, exc: BaseException) -> str:
        """The status the collector ended a stream with, or the local error."""
        if call is not None and call.done():
            code, details = await call.code(), await call.details()
            return f"ended by the collector: {code.name}: {details}"
        return f"{type(exc).__name__}: {exc}"

    async def heartbeats(runs: list[AgentRun]) -> None:
        """As an agent's link does: answer the collector's clock probes, and send
        a Heartbeat after HEARTBEAT s without sending anything (while the others
        connect, or backpressured), or the collector presumes the agent dead and
        ends its stream."""
        now = time.monotonic()
        for run in runs:
            if run.echo is not None and run.call is not None and not run.error:
                probe, arrived = run.echo
                run.echo = None
                await write(run, pb.AgentMessage(heartbeat=pb.Heartbeat(
                    timestamp=time.time(), echo_timestamp=probe,
                    echo_held_seconds=time.monotonic() - arrived,
                )))  # fmt: skip
            if run.call is not None and not run.error and now - run.last_sent >= HEARTBEAT:
                await write(run, pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time())))

    waiting = True  # until production starts, the keepalive task alone writes

    async def keepalive() -> None:
        while waiting:
            await heartbeats(runs)
            await asyncio.sleep(1.0)

    keeper = asyncio.create_task(keepalive())
    started = time.time()
    await asyncio.gather(*(connect_one(i, r) for i, r in enumerate(runs)))
    live = [r for r in runs if r.call is not None]
    connected_at = time.time()
    # Each check x agent at its own phase within the interval, as an agent's scheduler spreads them.
    phases = sorted(
        ((rng.uniform(0, spec.interval), run, c) for run in live for c in range(len(run.checks))),
        key=lambda phase: phase[0],
    )
    start_at, stop_at = await asyncio.to_thread(_handshake, spec, len(live))
    await asyncio.sleep(max(0.0, start_at - time.time()))
    waiting = False
    await keeper

    async def flush(run: AgentRun) -> None:
        if not run.pending or run.inflight >= windows:
            return  # backpressure: the agent buffers, as on disk
        batch, run.pending = run.pending, []
        checks, run.pending_checks = run.pending_checks, []
        tracing, run.pending_traced = run.pending_traced, []
        first = run.seq + 1
        run.sent.extend(enumerate(checks, first))
        run.seq += len(batch)
        run.inflight += 1
        await write(run, encode_batch(first, 1, batch))
        written = time.time()
        traced.extend((run.spec.agent_id, check, ms, written) for check, ms in tracing)

    # Countries' network latencies spread the arrivals of one grid step at the
    # collector: with country_offsets, each country writes at its own offset.
    codes = sorted({run.spec.country for run in live})
    offsets = {
        code: i * spec.send_grid / len(codes) if spec.country_offsets else 0.0
        for i, code in enumerate(codes)
    }

    def by_offset(runs: Iterable[AgentRun]) -> dict[float, list[AgentRun]]:
        groups: dict[float, list[AgentRun]] = {}
        for run in runs:
            groups.setdefault(offsets[run.spec.country], []).append(run)
        return groups

    # Results are probed at their phases and written on the agents' send grid, as
    # an agent's flush does (at each multiple of the grid on the wall clock).
    next_chores = time.time()

    async def wait_until(moment: float) -> None:
        """Sleep until moment, doing the once-a-second chores on the way:
        heartbeats, clock echoes, and batches held back by their window."""
        nonlocal next_chores
        while (now := time.time()) < moment or now >= next_chores:
            if now >= next_chores:
                next_chores = now + 1.0
                for run in live:
                    if run.pending:
                        await flush(run)
                await heartbeats(live)
            else:
                await asyncio.sleep(min(moment, next_chores) - now)

    cycle, i = start_at, 0
    grid = spec.send_grid
    while phases:
        due = cycle + phases[i][0]
        # max(): due / grid rounds, and a due just past a tick could land just before it.
        send_at = max(due, math.ceil(due / grid) * grid) if grid else due
        if send_at >= stop_at:
            break
        await wait_until(send_at)
        counting = time.time() >= start_at + spec.interval
        touched: dict[int, AgentRun] = {}
        while due <= send_at:
            _, run, c = phases[i]
            ok, failed = run.templates[c]
            body = failed if rng.random() < FAILURE_RATE else ok
            run.pending.append(body + _TIMESTAMP_TAG + struct.pack("<d", due))
            run.pending_checks.append(c)
            run.produced[c] += 1
            if (run.spec.agent_id, run.checks[c]) in tracer_set:
                run.pending_traced.append((run.checks[c], int(due * 1000)))
            touched[id(run)] = run
            i += 1
            if i == len(phases):
                cycle, i = cycle + spec.interval, 0
            due = cycle + phases[i][0]
        for offset, country_runs in sorted(by_offset(touched.values()).items()):
            await wait_until(send_at + offset)
            for run in country_runs:
                await flush(run)
    await wait_until(stop_at)
    counting = False
    drain_until = time.time() + spec.drain
    while time.time() < drain_until and any(r.pending or r.inflight for r in live if not r.error):
        for run in live:
            await flush(run)
        await heartbeats(live)
        await asyncio.sleep(0.2)
    for task in readers:
        task.cancel()
    for run in live:
        run.call.cancel()
    for group in channels.values():
        for channel in group:
            await channel.close()
    held: dict[str, dict[str, int]] = {}
    for r in live:
        for c in [*r.pending_checks, *(c for _, c in r.sent)]:
            counts = held.setdefault(r.spec.agent_id, {})
            counts[r.checks[c]] = counts.get(r.checks[c], 0) + 1
    return {
        "produced": {r.spec.agent_id: dict(zip(r.checks, r.produced, strict=True)) for r in live},
        "held": held,
        "errors": [f"{r.spec.agent_id}: {r.error}" for r in runs if r.error][:20],
        "error_kinds": collections.Counter(r.error for r in runs if r.error),
        "error_count": sum(1 for r in runs if r.error),
        "connected": len(live),
        "connect_seconds": connected_at - started,
        "traced": traced,
        "messages_sent": sent_kinds,
        "messages_heard": heard_kinds,
    }


def _kind(message: Any) -> str:
    """What an agent message written to the stream is (batches go out as bytes)."""
    if isinstance(message, bytes):
        return "results"
    kind = str(message.WhichOneof("payload"))
    return "echo" if kind == "heartbeat" and message.heartbeat.echo_timestamp else kind


def _handshake(spec: LoadSpec, connected: int) -> tuple[float, float]:
    """Say this process is connected; wait for the driver's start and stop times."""
    Path(spec.out + ".ready").write_text(str(connected))
    go = Path(spec.go)
    while not go.exists():
        time.sleep(0.2)
    start_at, stop_at = json.loads(go.read_text())
    return float(start_at), float(stop_at)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def load_main(path: str) -> None:
    raw = json.loads(Path(path).read_text())
    raw["agents"] = [AgentSpec(**a) for a in raw["agents"]]
    raw["tracers"] = [tuple(t) for t in raw["tracers"]]
    spec = LoadSpec(**raw)
    started = time.process_time()
    report = asyncio.run(run_load(spec))
    report["cpu_seconds"] = time.process_time() - started
    Path(spec.out).write_text(json.dumps(report))


# ---------------------------------------------------------------- the driver


@dataclass
class Collector:
    name: str
    mesh: Mesh
    proc: Proc | None = None
    rss0: int = 0  # before any agent connects
    rss_warm: int = 0  # at the end of the warm-up interval
    rss_window: list[int] = field(default_factory=list)  # every 2 s after warm-up
    heap_prefix: str = ""  # --heap-report: where the collector writes its reports
    heaps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)


def heap_env(args: argparse.Namespace, collector: Collector) -> dict[str, str] | None:
    """With --heap-report, the collector loads bench/heap_probe (its sitecustomize)."""
    if not args.heap_report:
        return None
    collector.heap_prefix = str(collector.mesh.root / "heap")
    env = {
        "PYTHONPATH": str(Path(__file__).resolve().parent / "heap_probe"),
        "PROBEMESH_HEAP_REPORT": collector.heap_prefix,
    }
    if args.tracemalloc:
        env["PYTHONTRACEMALLOC"] = "1"
    return env


def heap_report(collector: Collector, moment: str) -> None:
    """Ask a collector started with --heap-report for its report (bench/heap_probe)."""
    assert collector.proc is not None
    path = Path(f"{collector.heap_prefix}.{len(collector.heaps) + 1}.json")
    os.kill(collector.proc.pid, signal.SIGUSR2)
    wait_for(path.exists, 120, f"{collector.name}'s heap report")
    collector.heaps.append((moment, json.loads(path.read_text())))


def print_heaps(collector: Collector, pairs: int) -> None:
    """Where the collector's memory is, at each moment reported, and its growth per pair."""
    mib = 2**20
    print("  heap (MiB; growth over idle per pair in kB = 1000 bytes):")
    idle: dict[str, float] = {}
    for moment, r in collector.heaps:
        py, c = r["pymalloc"], r["c_heap"]
        figures = {
            "rss": r["rss"], "pymalloc live": py.get("live_blocks", 0),
            "pymalloc free": py.get("free_blocks", 0) + py.get("unused_pools", 0),
            "C heap in use": c.get("in_use", 0), "C heap free": c.get("free", 0),
        }  # fmt: skip
        if "rss_after_trim" in r:
            figures["rss trimmed"] = r["rss_after_trim"]
        idle = idle or figures
        print(f"    {moment:<5} " + ", ".join(
            f"{name} {value / mib:,.0f} ({(value - idle[name]) / pairs / 1000:+.2f})"
            for name, value in figures.items()
        ) + f"; {r['gc_objects']:,} GC-tracked objects")  # fmt: skip
        for size, count, where in r.get("top", []):
            print(f"      {size / mib:8.1f} MiB {count:>9,} {where}")
        for label in ("types", "handles"):
            census = ", ".join(f"{name} {count:,}" for name, count in r.get(label, []))
            print(f"      {label}: {census or '-'}")
        for where, size, items, owners in r.get("containers", []):
            print(f"      {size / mib:8.2f} MiB {size / pairs:6.0f} B/pair {items:>9,} items "
                  f"in {owners:,} {where}")  # fmt: skip
        if moment == "conn" and collector.agents:
            streams = len(collector.agents)
            print(f"          streams alone: {(r['rss'] - idle['rss']) / streams / 1024:.1f} KiB RSS "
                  f"per connected agent ({streams:,} agents, checks pushed, no results yet)")  # fmt: skip


def end_readings(collectors: list[Collector]) -> dict[str, int]:
    """Each collector's RSS now, and its heap report with --heap-report."""
    for c in collectors:
        if c.heap_prefix:
            heap_report(c, "end")
    return {c.name: rss_bytes(c.proc.pid) for c in collectors if c.proc}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def disk_writes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def metrics(collector: Collector, names: tuple[str, ...]) -> Samples:
    """The samples of the families named (by prefix) among the collector's own
    (HEALTH) on its /metrics; only their lines are parsed."""
    with urllib.request.urlopen(collector.mesh.metrics_url + HEALTH, timeout=300) as response:
        body = response.read()
    prefixes = tuple(name.encode() for name in names)
    wanted = b"\n".join(line for line in body.split(b"\n") if line.startswith(prefixes))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(wanted.decode() + "\n")
        for sample in family.samples
    }


_MARKS = (
    "probemesh_ingest_results_total", "probemesh_event_loop_lag_max_seconds",
    "probemesh_ingest_queue_depth", "probemesh_remote_write_pending_requests",
    "probemesh_gc_pause_seconds",
)  # fmt: skip


def read_marks(collector: Collector) -> dict[str, Any]:
    assert collector.proc is not None
    samples = metrics(collector, _MARKS)
    pid = collector.proc.pid
    return {
        "at": time.time(),
        "cpu": cpu_seconds(pid),
        "results": total(samples, "probemesh_ingest_results_total"),
        "disk": disk_writes(pid),
        "lag_max": total(samples, "probemesh_event_loop_lag_max_seconds"),
        "queue": total(samples, "probemesh_ingest_queue_depth"),
        "rw_pending": total(samples, "probemesh_remote_write_pending_requests", stream="results"),
        "gc_seconds": total(samples, "probemesh_gc_pause_seconds_sum"),
        "gc_pauses": histogram_buckets(samples, "probemesh_gc_pause_seconds"),
    }


def histogram_buckets(samples: Samples, family: str) -> dict[float, float]:
    """A histogram's buckets summed over its label sets: upper bound -> cumulative count."""
    counts: dict[float, float] = {}
    for (name, labels), value in samples.items():
        if name == f"{family}_bucket":
            bound = float(dict(labels)["le"])
            counts[bound] = counts.get(bound, 0.0) + value
    return counts


def gc_figure(start: dict, end: dict, cpu: float) -> str:
    """The collector's garbage-collector pauses between two marks: their time,
    as a share of its CPU, how many, and the longest (its histogram bucket)."""
    seconds = end["gc_seconds"] - start["gc_seconds"]
    done = {bound: n - start["gc_pauses"].get(bound, 0.0) for bound, n in end["gc_pauses"].items()}
    if not done:
        return "not exported"
    count = done[math.inf]
    if not count:
        return "no collections"
    longest = min(bound for bound, n in done.items() if n == count)
    below = max((bound for bound in done if bound < longest), default=0.0)
    how_long = f"<= {longest * 1000:g} ms" if longest < math.inf else f"> {below * 1000:g} ms"
    return (f"{seconds:.2f} s in {count:,.0f} collections ({seconds / max(cpu, 1e-9):.1%} of its CPU), "
            f"the longest {how_long}")  # fmt: skip


_DISCONNECT = re.compile(
    r"^(\S+ \S+) INFO probemesh.collector.streams: agent \S+ \(\S+\) from \S+ "
    r"disconnected after [^:]+: (.*)$"
)


def disconnect_reasons(collector: Collector, before: float) -> collections.Counter[str]:
    """Why the collector ended streams before the agents stopped (from its log)."""
    reasons: collections.Counter[str] = collections.Counter()
    for line in (collector.mesh.root / "collector.log").read_text(errors="replace").splitlines():
        match = _DISCONNECT.match(line)
        if match is None:
            continue
        at = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at < before:
            reasons[match[2]] += 1
    return reasons


def round_parts(collector: Collector) -> dict[str, float]:
    """The last outage round's seconds per part (publish; evaluate on the evaluator),
    and where results wait: the ingest queue (batches) and the oldest journaled
    remote-write request (seconds)."""
    samples = metrics(collector, (
        "probemesh_outage_round_seconds", "probemesh_ingest_queue_depth",
        "probemesh_remote_write_lag_seconds",
    ))  # fmt: skip
    parts = {
        dict(labels)["part"]: value
        for (name, labels), value in samples.items()
        if name == "probemesh_outage_round_seconds"
    }
    parts["queue"] = total(samples, "probemesh_ingest_queue_depth")
    parts["journal"] = total(samples, "probemesh_remote_write_lag_seconds")
    return parts


def delay_buckets(collectors: list[Collector]) -> list[tuple[float, float]]:
    """The collectors' result-delay histograms added up: (upper bound, cumulative count)."""
    family = "probemesh_remote_write_result_delay_seconds"
    counts: dict[float, float] = {}
    for c in collectors:
        for bound, n in histogram_buckets(metrics(c, (f"{family}_bucket",)), family).items():
            counts[bound] = counts.get(bound, 0.0) + n
    return sorted(counts.items())


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> str:
    """The bucket a quantile falls in, as "<= 1 s" (histograms give no more)."""
    rank = q * buckets[-1][1]
    lower = 0.0
    for bound, count in buckets:
        if count >= rank:
            return f"{lower:g}-{bound:g} s"
        lower = bound
    return "?"


def round_figure(values: list[float]) -> str:
    if not values:
        return "none (not the evaluator)"
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms "
        f"({len(values)} samples)"
    )


def pg_stats(url: str | None) -> dict[str, float]:
    """The database's commits and rows written so far (pg_stat_database), or {} on SQLite."""
    if not url:
        return {}
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return {"commits": float(row[0]), "rows": float(row[1] + row[2] + row[3])}


def time_metrics(url: str) -> tuple[float, int, int, float, int]:
    """Median seconds of 3 full GETs, body bytes, probe_success lines; median
    seconds of 3 GETs of the collector's health (HEALTH) and their body bytes."""
    times, body = [], b""
    for _ in range(3):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=300) as response:
            body = response.read()
        times.append(time.perf_counter() - t0)
    health_times, health = [], b""
    for _ in range(3):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url + HEALTH, timeout=300) as response:
            health = response.read()
        health_times.append(time.perf_counter() - t0)
    return (
        statistics.median(times), len(body), body.count(b"\nprobe_success{"),
        statistics.median(health_times), len(health),
    )  # fmt: skip


def stored_counts(victoria_url: str, checks: list[str], seconds: int) -> dict[tuple[str, str], int]:
    out: dict[tuple[str, str], int] = {}
    for check in checks:
        query = f'count_over_time(probe_success{{check="{check}"}}[{seconds}s])'
        params = urllib.parse.urlencode({"query": query, "nocache": "1"})
        body = _get_json(f"{victoria_url}/api/v1/query?{params}")
        for row in body["data"]["result"]:
            out[(row["metric"]["agent"], check)] = int(float(row["value"][1]))
    return out


class Observing:
    """The observer process (bench/rw_observer.py): relay, tracer poller, canary."""

    def __init__(self, root: Path, victoria_url: str, tracers: list[tuple[str, str]]) -> None:
        self.port = free_port()
        self.spec = root / "observer.json"
        self.out = root / "observer.out.json"
        self.spec.write_text(json.dumps({
            "port": self.port, "victoria_url": victoria_url, "tracers": tracers,
            "out": str(self.out),
        }))  # fmt: skip

    @property
    def write_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/write"

    def start(self) -> None:
        script = Path(__file__).resolve().parent / "rw_observer.py"
        self.process = subprocess.Popen([sys.executable, str(script), str(self.spec)])
        wait_for(lambda: Path(f"{self.out}.ready").exists(), 30, "the remote-write observer")

    def finish(self) -> dict[str, Any]:
        self.process.terminate()
        self.process.wait(60)
        return dict(json.loads(self.out.read_text()))


def print_lag(
    written: dict[tuple[str, str, int], float],
    observed: dict[str, Any],
    since: float,
    until: float,
    direct: bool,
    load: str,
) -> None:
    """Remote-write lag of the tracer results produced after the warm-up, split per hop."""
    times = {
        name: {(a, c, ms): at for a, c, ms, at in observed[name]}
        for name in ("posted", "accepted", "seen")
    }
    keys = [k for k in written if since <= k[2] / 1000 < until]
    seen = [k for k in keys if k in times["seen"]]
    lags = [times["seen"][k] - k[2] / 1000 for k in seen]

    def figure(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 0.5):.2f} s, p99 {percentile(values, 0.99):.2f} s, "
            f"max {max(values, default=float('nan')):.2f} s"
        )

    print(f"remote-write lag, probe time -> queryable in VictoriaMetrics ({len(seen)} tracer "
          f"results after the warm-up, {len(keys) - len(seen)} never seen; {load}): "
          f"{figure(lags)}")  # fmt: skip
    hops: list[tuple[str, str | None, str]] = [
        ("produced -> written by the agent", None, "written")
    ]
    if not direct:
        hops += [
            ("written -> posted by its collector (applied, journaled, sent)", "written", "posted"),
            ("posted -> accepted by VictoriaMetrics", "posted", "accepted"),
            ("accepted -> queryable", "accepted", "seen"),
        ]
    else:
        hops.append(("written -> queryable", "written", "seen"))
    times["written"] = written
    for label, frm, to in hops:
        values = [
            times[to][k] - (k[2] / 1000 if frm is None else times[frm][k])
            for k in seen
            if k in times[to] and (frm is None or k in times[frm])
        ]
        print(f"  {label + ':':<66}{figure(values)}")
    canary = observed["canary_lags"]
    print(f"  VictoriaMetrics alone: a sample written straight to it, accepted -> queryable "
          f"({len(canary)} canaries, {observed['canaries_unseen']} unseen): {figure(canary)}")  # fmt: skip
    relay = observed["relay_seconds"]
    if relay:
        print(f"  remote-write requests relayed: {observed['requests']:,}, VictoriaMetrics "
              f"answered in {figure(relay)}")  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(n):
        yield items[i::n]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between results")
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="producing time, warm-up included"
    )
    parser.add_argument("--processes", type=int, default=4, help="load processes")
    parser.add_argument(
        "--channels", type=int, default=16, help="gRPC channels per process and collector"
    )
    parser.add_argument(
        "--tracers", type=int, default=40, help="pairs whose remote-write lag is polled"
    )
    parser.add_argument("--send-grid", type=float, default=FLUSH_INTERVAL,
                        help="agents write their results on this wall-clock grid, as an "
                             "agent flushes them (seconds); 0: each result at its own time")  # fmt: skip
    parser.add_argument("--country-offsets", action="store_true",
                        help="each country writes at its own offset within the grid step, as "
                             "countries' network latencies spread their arrivals")  # fmt: skip
    parser.add_argument("--ack-hold", type=float, default=ACK_HOLD,
                        help="seconds the collector may hold an Ack back, as the agents announce "
                             "(Hello.ack_hold_seconds); 0: an Ack for each batch at once")  # fmt: skip
    parser.add_argument("--collectors", type=int, default=1, help="more than one needs --postgres")
    parser.add_argument("--postgres", action="store_true",
                        help="collectors share a throwaway PostgreSQL (tests/postgres.py)")  # fmt: skip
    parser.add_argument("--connect-timeout", type=float, default=1800,
                        help="seconds the agents may take to connect")  # fmt: skip
    parser.add_argument("--drain", type=float, default=300,
                        help="seconds the agents may take to deliver what they hold at the end")  # fmt: skip
    parser.add_argument("--direct", action="store_true",
                        help="collectors write straight to VictoriaMetrics, not through the "
                             "observer's relay (the lag is then not split per hop)")  # fmt: skip
    parser.add_argument("--logs", type=Path,
                        help="copy the collectors' logs into this directory")  # fmt: skip
    parser.add_argument("--heap-report", action="store_true",
                        help="print where each collector's memory is (idle, end of warm-up, end): "
                             "pymalloc and C heap, live and free (bench/heap_probe)")  # fmt: skip
    parser.add_argument("--tracemalloc", action="store_true",
                        help="with --heap-report, also the lines holding the most memory (the "
                             "collectors run several times slower: other figures do not count)")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        load_main(args.worker)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up the servers on SIGTERM
    if args.collectors > 1 and not args.postgres:
        parser.error("--collectors above 1 share a database: add --postgres")
    if not 0 <= args.ack_hold < math.inf:
        parser.error("--ack-hold must be 0 or a positive number of seconds")
    if args.send_grid < 0:
        parser.error("--send-grid must be 0 (no grid) or a positive number of seconds")
    if args.country_offsets and not args.send_grid:
        parser.error("--country-offsets spreads the countries within a grid step: give --send-grid")
    if args.seconds < 2 * args.interval:
        parser.error("--seconds must cover at least two intervals (the first is warm-up)")
    from tests.prometheus.victoria import run_victoria_metrics

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mesh-scale-") as tmp:
        root = Path(tmp)
        yaml_text = checks_yaml(args.checks, args.interval)
        parse_checks(__import__("yaml").safe_load(yaml_text))  # fails early on a bad file
        check_names = [f"c{i:02d}" for i in range(args.checks)]
        with contextlib.ExitStack() as stack:
            vm = stack.enter_context(run_victoria_metrics(root / "vm"))
            database_url = None
            if args.postgres:
                from tests.postgres import PostgresCluster, unavailable

                problem = unavailable()
                if problem:
                    parser.error(f"--postgres: {problem}")
                cluster = PostgresCluster()
                stack.callback(cluster.stop)
                cluster.start()
                database_url = cluster.create_database()
            collectors = [
                Collector(f"c{n + 1}", Mesh(root / f"c{n + 1}", yaml_text))
                for n in range(args.collectors)
            ]
            for c in collectors:
                c.mesh.root.mkdir(parents=True)
                if database_url:
                    c.mesh.collector_args += ["--database", database_url]
            agent_ids = [f"a{i:05d}" for i in range(args.agents)]
            codes = sorted(c.alpha_2 for c in pycountry.countries)[:COUNTRIES]
            countries = {a: codes[i % len(codes)] for i, a in enumerate(agent_ids)}
            t0 = time.monotonic()
            db = open_database(database_url, collectors[0].mesh.data_dir).connect()
            store = TokenStore(db)
            tokens = {a: store.create(a, countries[a]) for a in agent_ids}
            db.close()
            print(f"{len(tokens):,} tokens created in {time.monotonic() - t0:.1f} s "
                  f"({'PostgreSQL' if database_url else 'SQLite'})", flush=True)  # fmt: skip
            rng = random.Random(7)
            tracers = [
                (rng.choice(agent_ids), rng.choice(check_names)) for _ in range(args.tracers)
            ]
            observer = Observing(root, vm.url, tracers)
            observer.start()
            stack.callback(observer.process.kill)  # a no-op once it has exited
            write_url = vm.write_url if args.direct else observer.write_url
            for c in collectors:
                c.proc = c.mesh.start_collector(
                    "--remote-write-url", write_url,
                    "--external-label", f"collector={c.name}",
                    "--rate-limit", "0", "--log-level", "info",
                    env=heap_env(args, c),
                )  # fmt: skip
                stack.callback(c.proc.stop)
            time.sleep(3)
            for c in collectors:
                assert c.proc is not None
                c.rss0 = rss_bytes(c.proc.pid)
                if c.heap_prefix:
                    heap_report(c, "idle")
            specs = []
            for i, agent in enumerate(agent_ids):
                c = collectors[i % len(collectors)]
                c.agents.append(agent)
                specs.append(AgentSpec(agent, countries[agent], tokens[agent],
                                       f"127.0.0.1:{c.mesh.grpc_port}"))  # fmt: skip
            go = root / "go.json"
            workers = []
            for n, part in enumerate(chunks(specs, args.processes)):
                mine = {s.agent_id for s in part}
                spec_path = root / f"load-{n}.json"
                spec_path.write_text(json.dumps({
                    "agents": [s.__dict__ for s in part], "go": str(go),
                    "interval": args.interval, "drain": args.drain, "channels": args.channels,
                    "tracers": [t for t in tracers if t[0] in mine],
                    "out": str(root / f"load-{n}.out.json"), "seed": n,
                    "send_grid": args.send_grid, "country_offsets": args.country_offsets,
                    "ack_hold": args.ack_hold,
                }))  # fmt: skip
                workers.append(
                    subprocess.Popen([sys.executable, __file__, "--worker", str(spec_path)])
                )
                stack.callback(workers[-1].kill)  # a no-op once it has exited
            print(f"{args.processes} load processes connecting {args.agents:,} agents", flush=True)
            t0 = time.monotonic()
            ready = [root / f"load-{n}.out.json.ready" for n in range(args.processes)]
            wait_for(lambda: all(r.exists() for r in ready), args.connect_timeout,
                     "every load process connected")  # fmt: skip
            connect_seconds = time.monotonic() - t0
            start_at = time.time() + 2
            stop_at = start_at + args.seconds
            go.write_text(json.dumps([start_at, stop_at]))
            for c in collectors:  # every stream up, (almost) no result applied yet
                if c.heap_prefix:
                    heap_report(c, "conn")
            how = f"on a {args.send_grid:g} s grid" if args.send_grid else "each at once"
            how += ", each country at its own offset" if args.country_offsets else ""
            how += (
                f"; Acks held up to {args.ack_hold:g} s" if args.ack_hold else "; an Ack per batch"
            )
            print(f"connected in {connect_seconds:.0f} s; producing "
                  f"{args.agents * args.checks / args.interval:,.0f} results/s for {args.seconds:g} s, "
                  f"written {how}", flush=True)  # fmt: skip
            time.sleep(max(0.0, start_at + args.interval - time.time()))  # warm-up: one interval
            for c in collectors:
                assert c.proc is not None
                c.marks = read_marks(c)
                c.rss_warm = rss_bytes(c.proc.pid)
                if c.heap_prefix:
                    heap_report(c, "warm")
            pg_start = (pg_stats(database_url), time.time())
            rounds: dict[tuple[str, str], list[float]] = {}
            metrics_figures: dict[str, tuple[float, int, int, float, int]] = {}
            next_scrape = 0.0
            rss_end: dict[str, int] = {}
            while True:  # RSS every 2 s; the round gauges every 15 s, as Prometheus would scrape
                for c in collectors:
                    assert c.proc is not None
                    c.rss_window.append(rss_bytes(c.proc.pid))
                if not rss_end and time.time() >= stop_at - END_READING:
                    rss_end = end_readings(collectors)
                if time.time() >= next_scrape:
                    next_scrape = time.time() + 15
                    for c in collectors:
                        for round_part, value in round_parts(c).items():
                            rounds.setdefault((c.name, round_part), []).append(value)
                if time.time() >= stop_at:
                    break
                time.sleep(2)
            rss_end = rss_end or end_readings(collectors)  # slow readings may skip the moment
            ends = {c.name: read_marks(c) for c in collectors}
            pg_window = (pg_stats(database_url), time.time())
            for w in workers:
                w.wait(300)
            reports = [json.loads((root / f"load-{n}.out.json").read_text())
                       for n in range(args.processes)]  # fmt: skip
            # Let every result journal drain before counting what VictoriaMetrics stored.
            wait_for(lambda: all(read_marks(c)["rw_pending"] == 0 for c in collectors), 300,
                     "remote-write journals drained")  # fmt: skip
            time.sleep(3)
            observed = observer.finish()
            for c in collectors:  # after the lag and CPU windows: it holds the loop for seconds
                metrics_figures[c.name] = time_metrics(c.mesh.metrics_url)
            delays = delay_buckets(collectors)
            with urllib.request.urlopen(f"{vm.url}/internal/force_flush", timeout=30):
                pass
            window = int(time.time() - start_at + 600)
            stored = stored_counts(vm.url, check_names, window)
            disconnects = {c.name: disconnect_reasons(c, stop_at) for c in collectors}
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for c in collectors:
                    shutil.copy(c.mesh.root / "collector.log", args.logs / f"{c.name}.log")
    load1 = os.getloadavg()
    produced: dict[tuple[str, str], int] = {}
    held: dict[tuple[str, str], int] = {}
    for report in reports:
        for agent, counts in report["produced"].items():
            for check, n in counts.items():
                produced[(agent, check)] = n
        for agent, counts in report["held"].items():
            for check, n in counts.items():
                held[(agent, check)] = n
    # A result the agent still holds (never acked) is not lost: a real agent keeps
    # it on disk and sends it again; lost is what was acked and is not stored.
    lost = sum(max(0, n - held.get(key, 0) - stored.get(key, 0)) for key, n in produced.items())
    duplicated = sum(max(0, stored.get(key, 0) - n) for key, n in produced.items())
    extra_pairs = len(set(stored) - set(produced))
    written = {(a, c, ms): at for r in reports for a, c, ms, at in r["traced"]}
    print()
    storage = "PostgreSQL" if args.postgres else "SQLite"
    print(f"agents={args.agents:,} checks={args.checks} interval={args.interval:g}s "
          f"pairs={args.agents * args.checks:,} collectors={len(collectors)} storage={storage} "
          f"seconds={args.seconds:g} (first {args.interval:g} s warm-up)")  # fmt: skip
    print(f"load processes: {args.processes}, connected {sum(r['connected'] for r in reports):,} "
          f"agents in {connect_seconds:.0f} s, stream errors "
          f"{sum(r['error_count'] for r in reports)}, CPU "
          f"{sum(r['cpu_seconds'] for r in reports):.0f} s; host load average "
          f"{load0[0]:.1f} before, {load1[0]:.1f} after (2 cores, shared)")  # fmt: skip
    kinds: collections.Counter[str] = collections.Counter()
    for r in reports:
        kinds.update(r["error_kinds"])
    for kind, n in kinds.most_common():
        print(f"  stream error x {n}: {kind}")
    span = args.seconds - args.interval
    for way, key in (
        ("agents -> collectors", "messages_sent"),
        ("collectors -> agents", "messages_heard"),
    ):
        counted: collections.Counter[str] = collections.Counter()
        for r in reports:
            counted.update(r[key])
        print(
            f"  messages/s {way}: {counted.total() / span:,.1f} ("
            + ", ".join(f"{k} {n / span:,.1f}" for k, n in sorted(counted.items()))
            + ")"
        )
    for name, reasons in disconnects.items():
        for reason, n in reasons.most_common():
            print(f"  collector {name} ended {n} streams during the run: {reason}")
    for c in collectors:
        start, end = c.marks, ends[c.name]
        elapsed = end["at"] - start["at"]
        results = end["results"] - start["results"]
        cpu = end["cpu"] - start["cpu"]
        seconds, body, series, health_seconds, health = metrics_figures[c.name]
        pairs = len(c.agents) * args.checks
        print(f"collector {c.name}: {len(c.agents):,} agents, {pairs:,} pairs, "
              f"{results / elapsed:,.0f} results/s applied")  # fmt: skip
        print(f"  CPU per 1,000 results:   {cpu / max(results, 1) * 1000:.3f} s "
              f"({cpu / elapsed:.2f} cores)")  # fmt: skip
        steady = statistics.median(c.rss_window)
        peak = max(c.rss_window)

        def per_pair(rss: float, c: Collector = c, pairs: int = pairs) -> str:
            return f"{(rss - c.rss0) / pairs / 1000:.2f} kB"

        print(f"  RSS per pair:            steady state {per_pair(steady)} over the idle collector "
              f"(median of {len(c.rss_window)} readings every 2 s after warm-up), peak "
              f"{per_pair(peak)}, end of warm-up {per_pair(c.rss_warm)}, end {per_pair(rss_end[c.name])}; "
              f"idle {c.rss0 / 2**20:,.0f} MiB, steady {steady / 2**20:,.0f} MiB, peak "
              f"{peak / 2**20:,.0f} MiB")  # fmt: skip
        if c.heaps:
            print_heaps(c, pairs)
        print(f"  /metrics:                {seconds:.2f} s, {body / 2**20:,.0f} MiB, "
              f"{series:,} probe_success series; health only (collect[]=collector) "
              f"{health_seconds * 1000:.1f} ms, {health / 1024:,.1f} KiB")  # fmt: skip
        evaluate = round_figure(rounds.get((c.name, "evaluate"), []))
        publish = round_figure(rounds.get((c.name, "publish"), []))
        print(f"  evaluate (all pairs):    {evaluate}")
        print(f"  publish (its pairs):     {publish}")
        print(f"  event loop:              lag max {end['lag_max'] * 1000:.0f} ms (last minute), "
              f"ingest queue {end['queue']:.0f} batches at the end")  # fmt: skip
        print(f"  garbage collector:       {gc_figure(start, end, cpu)}")
        queue = rounds.get((c.name, "queue"), [0.0])
        journal = rounds.get((c.name, "journal"), [0.0])
        print(f"  where results wait:      ingest queue median {statistics.median(queue):.0f}, "
              f"max {max(queue):.0f} batches; oldest remote-write request median "
              f"{statistics.median(journal):.1f} s, max {max(journal):.1f} s (every 15 s)")  # fmt: skip
        if not args.postgres:
            print(f"  database writes:         SQLite, {(end['disk'] - start['disk']) / elapsed / 2**20:.2f} "
                  f"MiB/s written to disk by the collector")  # fmt: skip
    if args.postgres:
        (a, at0), (b, at1) = pg_start, pg_window
        span = at1 - at0
        print(f"database writes (PostgreSQL, the whole mesh): {(b['commits'] - a['commits']) / span:,.0f} "
              f"commits/s, {(b['rows'] - a['rows']) / span:,.0f} rows written/s")  # fmt: skip
    load = f"host load {load0[0]:.1f} before, {load1[0]:.1f} after"
    print_lag(written, observed, start_at + args.interval, stop_at, args.direct, load)
    if delays:
        print(f"  collectors: journaled -> accepted by VictoriaMetrics, every result "
              f"(probemesh_remote_write_result_delay_seconds, {int(delays[-1][1]):,} journal "
              f"entries): p50 {bucket_quantile(delays, 0.5)}, "
              f"p99 {bucket_quantile(delays, 0.99)}")  # fmt: skip
    print(f"samples: produced {sum(produced.values()):,}, probe_success stored {sum(stored.values()):,}; "
          f"lost {lost:,} (acked, not stored), duplicated {duplicated:,}, pairs stored but never "
          f"produced {extra_pairs}; still held by the agents at the end (unacked, they resend) "
          f"{sum(held.values()):,}")  # fmt: skip


if __name__ == "__main__":
    main()
