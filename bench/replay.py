"""Replay speed after a partition: one agent's on-disk backlog into one collector.

Pre-generates --results results straight into a fresh agent state directory
(the agent's own DurableQueue, as if the agent had buffered them through a
partition), starts a real collector and then the real agent via the CLI, and
times the collector's probemesh_probe_results_total from the first result
applied to the last. The checks have a one-hour interval so the agent adds
(almost) no live results while it replays. The collector runs with
--rate-limit 0: the per-agent rate limit would otherwise cap any replay at its
refill rate (see docs/durability.md).

    .venv/bin/python bench/replay.py --results 300000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.agent.queue import DurableQueue
from probemesh.v1 import mesh_pb2 as pb
from tests.harness import Mesh, free_port, scrape, total, wait_for

CHECKS = 10


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def checks_yaml() -> str:
    lines = ["modules:", "  tcp_connect: {prober: tcp, timeout: 1s}", "checks:"]
    lines += [
        f'  - {{name: c{i:02d}, target: "127.0.0.1:9", module: tcp_connect, interval: 1h}}'
        for i in range(CHECKS)
    ]
    return "\n".join(lines) + "\n"


def fill(state_dir: Path, count: int) -> float:
    """Write count tcp-like results (one in 5 failed) into the agent's queue."""
    started = time.monotonic()
    queue = DurableQueue(state_dir / "results.sqlite3", max_results=count + 1)
    now = time.time() - 3600
    chunk = 10_000
    for base in range(0, count, chunk):
        rows = []
        for i in range(base, min(count, base + chunk)):
            ok = i % 5 != 0
            result = pb.Result(
                check=f"c{i % CHECKS:02d}",
                target="127.0.0.1:9",
                revision=1,  # a fresh collector's first checks revision
                timestamp=now + i * 0.01,
                success=ok,
                duration_seconds=0.0004,
                reason=pb.FAILURE_REASON_UNSPECIFIED if ok else pb.FAILURE_REASON_REFUSED,
                message="" if ok else "connection refused",
            )
            rows.append((result.timestamp, result.SerializeToString()))
        queue.append(rows)
    queue.close()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=int, default=300_000, help="backlog size [300000]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pm-replay-") as tmp:
        mesh = Mesh(Path(tmp), checks_yaml())
        try:
            agent_id = "replay-1"
            state_dir = mesh.root / f"agent-{agent_id}"
            fill_s = fill(state_dir, args.results)
            print(f"backlog of {args.results} results written in {fill_s:.1f}s")
            collector = mesh.start_collector("--rate-limit", "0")
            token = mesh.token(agent_id, "DE")
            metrics_port = free_port()
            agent = mesh.start_agent(agent_id, "DE", token=token, metrics_port=metrics_port)
            cpu_c0 = cpu_seconds(collector.pid)

            def applied() -> float:
                return total(mesh.metrics(), "probemesh_probe_results_total")

            wait_for(applied, 60, "the first replayed results")
            t0, n0 = time.monotonic(), applied()
            cpu_a0 = cpu_seconds(agent.pid)
            wait_for(lambda: applied() >= args.results, 600, "the whole backlog", interval=0.05)
            t1, n1 = time.monotonic(), applied()
            cpu_c, cpu_a = cpu_seconds(collector.pid) - cpu_c0, cpu_seconds(agent.pid) - cpu_a0
            depth = total(
                scrape(f"http://127.0.0.1:{metrics_port}/metrics"), "probemesh_agent_queue_depth"
            )
            samples = mesh.metrics()
            rate = (n1 - n0) / (t1 - t0)
            print(
                f"replayed {n1 - n0:.0f} results in {t1 - t0:.2f}s: "
                f"{rate:,.0f} results/s (target >= 50,000)"
            )
            print(
                f"collector CPU {cpu_c:.1f}s ({cpu_c / n1 * 1e6:.1f} us/result), "
                f"agent CPU {cpu_a:.1f}s"
            )
            print(
                f"collector total {n1:.0f}, "
                f"duplicates {total(samples, 'probemesh_duplicate_results_total'):.0f}, "
                f"rejected {total(samples, 'probemesh_ingest_rejected_total'):.0f}, "
                f"agent depth {depth:.0f}"
            )
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
