"""Cost of rendering /metrics for a large mesh (default 1,000 agents x 100 checks).

Builds the collector's real state and exporter in-process with HTTP-like
results (the samples an HTTP probe really emits), then times the text
exposition: a cold render (every result new since the last scrape), the
background pre-render after half the results changed (checks every 30 s,
Prometheus scraping every 15 s), and the steady-state /metrics response body
exactly as the HTTP handler builds it, several times (best and median).
It also prints the process's resident memory per check x agent pair: once the
state and the rendered text are built (between scrapes), and at its peak
(while a response body is built).

    .venv/bin/python bench/scrape.py --agents 1000 --checks 100
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.checks import parse_checks
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.ingest import Ingest
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

PHASES = ("resolve", "connect", "tls", "processing", "transfer")


def http_result(check: str, ts: float) -> pb.Result:
    samples = [
        pb.Sample(name="probe_http_duration_seconds", labels={"phase": p}, value=0.01)
        for p in PHASES
    ]
    for name, value in (
        ("probe_http_status_code", 200), ("probe_http_content_length", 5120),
        ("probe_http_uncompressed_body_length", 5120), ("probe_http_redirects", 0), ("probe_http_ssl", 1),
        ("probe_http_version", 1.1), ("probe_dns_lookup_time_seconds", 0.002), ("probe_ip_protocol", 4),
        ("probe_failed_due_to_regex", 0), ("probe_ssl_earliest_cert_expiry", 1.8e9),
    ):  # fmt: skip
        samples.append(pb.Sample(name=name, value=value))
    samples.append(pb.Sample(name="probe_tls_version_info", labels={"version": "TLS 1.3"}, value=1))
    return pb.Result(check=check, target="https://example.org/", timestamp=ts, success=True,
                     duration_seconds=0.05, samples=samples, http_phase_seconds=[0.01] * 5)  # fmt: skip


def rss() -> int:
    """Resident bytes of this process now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The most resident bytes this process had (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="steady-state scrapes to time")
    args = parser.parse_args()
    checks = parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {"name": f"check-{i:03d}", "target": "https://example.org/", "module": "http_2xx"}
                for i in range(args.checks)
            ],
        }
    )
    import tempfile

    idle = rss()
    state = MeshState()
    store = Store(open_database(None, Path(tempfile.mkdtemp())))
    ingest = Ingest(state, store, AssignmentHistory(store, checks.digest))
    exporter = MeshExporter(state, ingest, lambda: checks, lambda: args.agents)
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    now = time.time()
    agents = [
        AgentInfo(f"agent-{i:04d}", "DE", region="eu", version="0.1.0") for i in range(args.agents)
    ]
    for agent in agents:
        state.agents[agent.agent_id] = agent
        for c in range(args.checks):
            result = http_result(f"check-{c:03d}", now)
            state.apply(agent, result, ingest.samples.keep(result.samples))
    t0 = time.perf_counter()
    body = exporter.render_bulk()
    cold = time.perf_counter() - t0
    response_lines, response_bytes = body.count(b"\n"), len(body)
    for agent in agents:  # half the results are newer at the next scrape
        for c in range(0, args.checks, 2):
            result = http_result(f"check-{c:03d}", now + 30)
            state.apply(agent, result, ingest.samples.keep(result.samples))
    t0 = time.perf_counter()
    exporter.prerender()
    prerender = time.perf_counter() - t0
    del body
    gc.collect()
    held = rss() - idle
    scrapes = []
    for _ in range(args.repeat):  # what the /metrics handler does
        t0 = time.perf_counter()
        response = exporter.render_bulk(generate_latest(rest))
        scrapes.append(time.perf_counter() - t0)
        del response
    peak = peak_rss() - idle
    typical = sorted(scrapes)[len(scrapes) // 2]
    lines = response_lines
    print(f"agents={args.agents} checks={args.checks} series={args.agents * args.checks:,} lines={lines:,} "
          f"bytes={response_bytes:,}")  # fmt: skip
    print(f"cold render (every result new): {cold:.2f} s")
    print(f"half the results changed: background pre-render {prerender:.2f} s")
    print(
        f"steady-state /metrics response: best {min(scrapes):.3f} s, "
        f"median {typical:.3f} s of {len(scrapes)}"
    )
    pairs = args.agents * args.checks
    print(
        f"RSS per check x agent pair: {held / pairs / 1024:.2f} KiB between scrapes "
        f"(state and rendered text), {peak / pairs / 1024:.2f} KiB at the peak of a scrape"
    )


if __name__ == "__main__":
    main()
