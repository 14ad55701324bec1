"""Cost of rendering /metrics for a large mesh (default 1,000 agents x 100 checks).

Builds the collector's real state and exporter in-process with HTTP-like
results (the samples an HTTP probe really emits), then times the text
exposition: a cold render (every result new since the last scrape), the
background pre-render after half the results changed (checks every 30 s,
Prometheus scraping every 15 s), and the steady-state /metrics response,
several times (best and median): streamed a piece at a time as the HTTP
handler does, and (for comparison) joined into one body. Last, it serves
/metrics through the collector's real aiohttp handler on a loopback port and
fetches it with curl (gzip accepted, as Prometheus asks), whole and with
``collect[]=collector`` (the collector's own health; a tree without groups
answers that with the whole body). The pre-render is timed twice: with the
histograms' text, as while scrapes read them, and without (none did lately):
once after half the results changed, and every second of results at a 60 s
interval (the collector's pre-render runs every second; --countries spreads
the agents over that many countries, so over as many histograms per check).

It prints the process's resident memory per check x agent pair: once the
state and the rendered text are built (between scrapes), and at its peak
during each kind of scrape (the high-water mark is reset before each).

    .venv/bin/python bench/scrape.py --agents 1000 --checks 100
    .venv/bin/python bench/scrape.py --agents 1000 --checks 100 --baseline /tmp/main-tree

--baseline runs the same measurement on another source tree (say an export
of main) first, in its own process, and prints both side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from trees import TREE, measure_trees

from probemesh.checks import parse_checks
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.http import collector_metrics
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


def reset_peak() -> None:
    """Start a new high-water mark (Linux: clear_refs 5 resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def timed_scrapes(scrape: Any, repeat: int, idle: int) -> tuple[list[float], int]:
    """Seconds of each scrape, and the peak RSS over idle while they ran."""
    gc.collect()
    reset_peak()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        scrape()
        times.append(time.perf_counter() - t0)
    return times, peak_rss() - idle


async def http_scrapes(
    exporter: MeshExporter, rest: CollectorRegistry, repeat: int, query: str = ""
) -> tuple[list[str], float]:
    """/metrics through the collector's aiohttp handler, fetched by curl: curl's figures,
    and the longest the event loop was held meanwhile (a 1 ms ticker's largest gap)."""
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    app = web.Application()
    app.router.add_get("/metrics", collector_metrics(exporter, rest))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out = []
    tick = asyncio.create_task(ticker())
    try:
        for _ in range(repeat):
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sS", "-o", "/dev/null", "-H", "Accept-Encoding: gzip",
                "-w", "%{time_total} %{size_download}", f"http://127.0.0.1:{port}/metrics{query}",
                stdout=subprocess.PIPE,
            )  # fmt: skip
            stdout, _ = await curl.communicate()
            out.append(stdout.decode())
    finally:
        tick.cancel()
        await runner.cleanup()
    return out, longest


def per_second(
    exporter: MeshExporter, agents: list[AgentInfo], checks_n: int, now: float
) -> dict[str, float]:
    """Seconds of pre-render per second of results at a 60 s interval, with the
    histograms' text and (where the tree can) without, alternated, 20 seconds in all."""
    state, ingest = exporter.state, exporter.ingest
    rng = random.Random(1)
    lazy = "histograms" in inspect.signature(exporter.prerender).parameters
    spent: dict[str, list[float]] = {"second_prerender": [], "second_admission": []}
    for second in range(20):
        for _ in range(len(agents) * checks_n // 60):
            result = http_result(f"check-{rng.randrange(checks_n):03d}", now + 60 + second)
            state.apply(rng.choice(agents), result, ingest.samples.keep(result.samples))
        text = second % 2 == 0 or not lazy
        t0 = time.perf_counter()
        if text:
            exporter.prerender()
        else:
            exporter.prerender(histograms=False)
        spent["second_prerender" if text else "second_admission"].append(time.perf_counter() - t0)
    return {k: sum(v) / len(v) for k, v in spent.items() if v}


def measure(agents_n: int, checks_n: int, repeat: int, countries: int) -> dict[str, Any]:
    checks = parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {"name": f"check-{i:03d}", "target": "https://example.org/", "module": "http_2xx"}
                for i in range(checks_n)
            ],
        }
    )
    idle = rss()
    state = MeshState()
    store = Store(open_database(None, Path(tempfile.mkdtemp())))
    ingest = Ingest(state, store, AssignmentHistory(store, checks.digest))
    exporter = MeshExporter(state, ingest, lambda: checks, lambda: agents_n)
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    now = time.time()
    agents = [
        AgentInfo(
            f"agent-{i:04d}",
            f"{chr(65 + i % countries // 26)}{chr(65 + i % countries % 26)}",
            region="eu",
            version="0.1.0",
        )
        for i in range(agents_n)
    ]
    for agent in agents:
        state.agents[agent.agent_id] = agent
        for c in range(checks_n):
            result = http_result(f"check-{c:03d}", now)
            state.apply(agent, result, ingest.samples.keep(result.samples))
    t0 = time.perf_counter()
    body = exporter.render_bulk()
    cold = time.perf_counter() - t0
    lines, size = body.count(b"\n"), len(body)
    del body
    for agent in agents:  # half the results are newer at the next scrape
        for c in range(0, checks_n, 2):
            result = http_result(f"check-{c:03d}", now + 30)
            state.apply(agent, result, ingest.samples.keep(result.samples))
    figures: dict[str, Any] = {"tree": str(TREE), "lines": lines, "bytes": size, "cold": cold}
    if "histograms" in inspect.signature(exporter.prerender).parameters:
        t0 = time.perf_counter()
        exporter.prerender(histograms=False)  # admission only: no scrape read the histograms
        figures["admission"] = time.perf_counter() - t0
        for agent in agents:  # the same change again, for the pre-render with the text
            for c in range(0, checks_n, 2):
                result = http_result(f"check-{c:03d}", now + 31)
                state.apply(agent, result, ingest.samples.keep(result.samples))
    t0 = time.perf_counter()
    exporter.prerender()
    figures["prerender"] = time.perf_counter() - t0
    figures.update(per_second(exporter, agents, checks_n, now))
    gc.collect()
    figures["held"] = rss() - idle
    if hasattr(exporter, "render_batches"):  # the handler's way: a piece at a time

        def streamed() -> None:
            for piece in exporter.render_batches(generate_latest(rest)):
                del piece

        figures["streamed"] = timed_scrapes(streamed, repeat, idle)
    gc.collect()
    reset_peak()
    figures["http"], figures["loop_held"] = asyncio.run(
        http_scrapes(exporter, rest, max(repeat // 2, 1))
    )
    figures["http_peak"] = peak_rss() - idle
    figures["health"], _ = asyncio.run(
        http_scrapes(exporter, rest, repeat, query="?collect%5B%5D=collector")
    )
    # Last: memory freed after a whole body may stay resident and raise later peaks.
    figures["whole"] = timed_scrapes(  # one body, as a handler holding it whole does
        lambda: exporter.render_bulk(generate_latest(rest)), repeat, idle
    )
    return figures


def report(label: str, f: dict[str, Any], pairs: int) -> list[str]:
    def per_pair(value: int) -> str:
        return f"{value / pairs / 1024:.2f} KiB ({value / pairs / 1000:.2f} kB)"

    def times(values: list[float]) -> str:
        return f"best {min(values):.3f} s, median {sorted(values)[len(values) // 2]:.3f} s"

    out = [f"[{label}] {f['tree']}", f"  cold render (every result new): {f['cold']:.2f} s",
           f"  half the results changed: background pre-render {f['prerender']:.2f} s"
           + (f" (without the histograms' text {f['admission']:.2f} s)" if "admission" in f else ""),
           f"  a second of results at a 60 s interval: pre-render {f['second_prerender'] * 1000:.1f} ms"
           + (f" (without the histograms' text {f['second_admission'] * 1000:.1f} ms)"
              if "second_admission" in f else ""),
           f"  RSS per pair between scrapes (state and rendered text): {per_pair(f['held'])}"]  # fmt: skip
    if "streamed" in f:
        t, peak = f["streamed"]
        out.append(
            f"  /metrics streamed in pieces (the handler): {times(t)}; peak RSS per pair {per_pair(peak)}"
        )
    if "streamed" in f:  # every pair changes once per check interval; a scrape every 15 s
        scrape = sorted(f["streamed"][0])[len(f["streamed"][0]) // 2]
        for interval in (60, 30):
            cpu = 2 * f["prerender"] * 60 / interval + 4 * scrape
            out.append(
                f"  rendering CPU a minute, checks every {interval} s and a scrape every 15 s: "
                f"{cpu:.2f} s (pre-render of every changed pair + 4 streamed scrapes)"
            )
    t, peak = f["whole"]
    out.append(f"  /metrics joined into one body: {times(t)}; peak RSS per pair {per_pair(peak)}")
    http = [line.split() for line in f["http"]]
    seconds = [float(s) for s, _ in http]
    out.append(
        f"  /metrics over HTTP (curl, gzip accepted): {times(seconds)}, {int(http[0][1]):,} bytes "
        f"received; server peak RSS per pair {per_pair(f['http_peak'])}; event loop held "
        f"at most {f['loop_held'] * 1000:.0f} ms"
    )
    health = [line.split() for line in f["health"]]
    seconds = [float(s) for s, _ in health]
    out.append(
        f"  /metrics?collect[]=collector over HTTP (curl): {times(seconds)}, "
        f"{int(health[0][1]):,} bytes received"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="steady-state scrapes to time")
    parser.add_argument("--countries", type=int, default=1, help="countries of the agents")
    parser.add_argument("--baseline", type=Path, help="another source tree, measured first")
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)  # child: print JSON
    args = parser.parse_args()
    if args.tree:
        print(json.dumps(measure(args.agents, args.checks, args.repeat, args.countries)))
        return
    runs = measure_trees(__file__, args.baseline, [
        "--agents", str(args.agents), "--checks", str(args.checks), "--repeat", str(args.repeat),
        "--countries", str(args.countries),
    ])  # fmt: skip
    pairs = args.agents * args.checks
    first = runs[0][1]
    print(f"agents={args.agents} checks={args.checks} pairs={pairs:,} lines={first['lines']:,} "
          f"bytes={first['bytes']:,}")  # fmt: skip
    for label, figures, before, after in runs:
        print("\n".join(report(label, figures, pairs)))
        print(f"  load average {before:.2f} before, {after:.2f} after")


if __name__ == "__main__":
    main()
