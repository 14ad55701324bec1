"""CPU of remote write's encoding (default 1,000 agents x 20 checks).

* A whole snapshot of the aggregates: builds the collector's real state,
  exporter and remote writer in-process (HTTP results, 1 % failing, 40
  countries), then takes snapshots as the snapshot loop does every fourth
  interval: the per-pair counters and histograms (BulkView) and the aggregates
  (AggregateView), encoded into requests and compared with the previous
  snapshot for stale series. Nothing is sent. It prints the CPU time per
  snapshot (median of --repeat) and per series, and the part of it spent
  building the families (the exporter's collect) rather than encoding them.
* The journal entries of 1,000 results (HTTP, DNS, TCP and ICMP with the
  samples blackbox_exporter emits, ten per agent, as ingest hands them over):
  the CPU of encode_results, best of --repeat.

The per-pair counters and histograms come as row families (numbers, no
Sample objects); their "building" is building the rows.

    .venv/bin/python bench/rw_encode.py
    .venv/bin/python bench/rw_encode.py --baseline /tmp/main-tree

--baseline runs the same measurement on another source tree (say an export
of main) first, in its own process, and prints both side by side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from trees import TREE, measure_trees

from probemesh.checks import parse_checks
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.exporter import AggregateView, BulkView, MeshExporter
from probemesh.collector.ingest import Ingest
from probemesh.collector.remote_results import Applied, encode_results
from probemesh.collector.remote_write import RemoteWriter
from probemesh.collector.samples import SampleFilter
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

COUNTRIES = 40


def result(check: str, ts: float, failed: bool) -> pb.Result:
    if failed:
        return pb.Result(check=check, target="https://example.org/", timestamp=ts, success=False,
                         duration_seconds=5.0, reason=pb.FAILURE_REASON_TIMEOUT)  # fmt: skip
    samples = [
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": p}, value=0.01)
        for p in ("resolve", "connect", "tls", "processing", "transfer")
    ]
    samples.append(pb.Sample(name="probe_http_status_code", value=200))
    return pb.Result(check=check, target="https://example.org/", timestamp=ts, success=True,
                     duration_seconds=0.05, samples=samples, http_phase_seconds=[0.01] * 5)  # fmt: skip


def measure(agents_n: int, checks_n: int, repeat: int) -> dict[str, Any]:
    checks = parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {"name": f"c{i:02d}", "target": "https://example.org/", "module": "http_2xx"}
                for i in range(checks_n)
            ],
        }
    )
    state = MeshState()
    store = Store(open_database(None, Path(tempfile.mkdtemp())))
    ingest = Ingest(state, store, AssignmentHistory(store, checks.digest))
    exporter = MeshExporter(state, ingest, lambda: checks, lambda: agents_n)
    registry, bulk = CollectorRegistry(), CollectorRegistry()
    registry.register(AggregateView(exporter))
    bulk.register(BulkView(exporter))
    writer = RemoteWriter(
        registry, "http://127.0.0.1:9/api/v1/write", bulk_registry=bulk,
        external_labels={"collector": "c1"},
    )  # fmt: skip
    now = time.time()
    n = 0
    for i in range(agents_n):
        agent = state.agents[f"a{i:05d}"] = AgentInfo(
            f"a{i:05d}", f"C{i % COUNTRIES:02d}", version="bench", connected=True, last_seen=now
        )
        # a clock estimate, as every agent that answers the collector's clock probes has
        agent.clock.offset, agent.clock.rtt = 0.001 * (i % 7), 0.002
        for c in range(checks_n):
            r = result(f"c{c:02d}", now, failed=n % 100 == 0)
            n += 1
            state.apply(agent, r, ingest.samples.keep(r.samples))
    exporter.prerender()
    collect = []
    for _ in range(repeat):
        started = time.thread_time()
        for source in (bulk, registry):
            for family in source.collect():
                if getattr(family, "rows", None) is None:  # a row family's rows are built
                    for _sample in family.samples:
                        pass
        collect.append(time.thread_time() - started)
    seconds, samples = [], 0
    writer.snapshot(every_source=True)  # the first one has no previous series to compare
    for _ in range(repeat):
        started = time.thread_time()
        samples = writer.snapshot(every_source=True)
        seconds.append(time.thread_time() - started)
    store.close()
    journal, journal_samples = journal_encoding(repeat)
    return {
        "tree": str(TREE), "samples": samples, "snapshot": statistics.median(seconds),
        "best": min(seconds), "collect": statistics.median(collect), "journal": journal,
        "journal_samples": journal_samples,
    }  # fmt: skip


def journal_encoding(repeat: int) -> tuple[float, int]:
    """The best CPU time of encode_results over 1,000 results, and their samples."""
    from bench.mesh_scale import KINDS, samples_of

    keep = SampleFilter().keep
    results, kept = [], []
    for i in range(1000):
        r = pb.Result(check=f"c{i % 20:02d}", target="https://example.org/", timestamp=1.7e9 + i,
                      success=True, duration_seconds=0.05, samples=samples_of(KINDS[i % 10]))  # fmt: skip
        results.append(r)
        kept.append(keep(r.samples))
    targets = ["https://example.org/"] * 10
    groups = [
        Applied(
            f"a{g:05d}",
            "DE",
            "",
            results[g * 10 : g * 10 + 10],
            targets,
            kept[g * 10 : g * 10 + 10],
        )
        for g in range(100)
    ]
    best, samples = math.inf, 0
    for _ in range(max(repeat, 5)):
        started = time.thread_time()
        requests = encode_results(groups, {"collector": "c1"}, 5000)
        best = min(best, time.thread_time() - started)
        samples = sum(n for _, n in requests)
    return best, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="snapshots to time")
    parser.add_argument("--baseline", type=Path, help="another source tree, measured first")
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # child: print JSON
    args = parser.parse_args()
    if args.tree:
        print(json.dumps(measure(args.agents, args.checks, args.repeat)))
        return
    print(f"agents={args.agents} checks={args.checks} pairs={args.agents * args.checks:,}")
    argv = [
        "--agents",
        str(args.agents),
        "--checks",
        str(args.checks),
        "--repeat",
        str(args.repeat),
    ]
    for label, f, before, after in measure_trees(__file__, args.baseline, argv):
        print(f"{label} ({f['tree']}): {f['samples']:,} samples; snapshot CPU median "
              f"{f['snapshot'] * 1000:,.0f} ms (best {f['best'] * 1000:,.0f} ms), "
              f"{f['snapshot'] / f['samples'] * 1e6:.2f} µs a sample, of which building the "
              f"families {f['collect'] * 1000:,.0f} ms; journal entries of 1,000 results "
              f"({f['journal_samples']:,} samples): {f['journal'] * 1000:.1f} ms; load average "
              f"{before:.2f} before, {after:.2f} after")  # fmt: skip


if __name__ == "__main__":
    main()
