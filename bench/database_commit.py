"""The ingest commit on SQLite and on PostgreSQL, side by side.

Each round is what one ingest commit writes after applying results from
--agents agents that run --checks checks each: one mark per agent, and per
check x agent pair its results counter, a failure-reason counter and a
histogram state (the shape Store.commit_applied gets from MeshState). Rounds
run back to back for --seconds on each backend, through the real Store and
Database code. PostgreSQL is a throwaway local cluster (tests/postgres.py,
as root) with fsync and synchronous_commit on, as a production server runs;
SQLite is collector.sqlite3 in WAL mode (synchronous=NORMAL), as the
collector opens it.

Prints per backend: commits, commit latency p50/p99, rows written per second.

    .venv/bin/python bench/database_commit.py --agents 50 --checks 20 --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.collector.database import open_database
from probemesh.collector.store import Store
from tests.postgres import PostgresCluster, unavailable

HISTOGRAM = [0.0] * 12 + [0.0, 0.0]  # buckets, sum, count: the shape of a stored state


def run(store: Store, agents: int, checks: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    rows = 0
    round_ = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        round_ += 1
        marks = [(f"agent-{a}", round_ * 10, []) for a in range(agents)]
        counters = []
        histograms = []
        for a in range(agents):
            for c in range(checks):
                base = (f"check-{c}", f"agent-{a}", "DE")
                counters.append((("results", *base, "success"), round_ * 10))
                counters.append((("failures", *base, "timeout"), round_))
                histograms.append(((*base, "probe_duration_seconds"), [*HISTOGRAM[:-1], round_]))
        started = time.perf_counter()
        store.commit_applied(marks, counters, histograms)
        latencies.append(time.perf_counter() - started)
        rows += len(marks) + len(counters) + len(histograms)
    total = sum(latencies)
    latencies.sort()
    return {
        "commits": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "rows_per_s": rows / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(
        f"{args.agents} agents x {args.checks} checks per commit: {args.agents} marks, "
        f"{2 * args.agents * args.checks} counters, {args.agents * args.checks} histograms"
    )
    print(f"{'backend':<11} {'commits':>8} {'p50 ms':>8} {'p99 ms':>8} {'rows/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[tuple[str, str | None]] = [("sqlite", None)]
        cluster = None
        if unavailable() is None:
            cluster = PostgresCluster(durable=True)
            cluster.start()
            backends.append(("postgresql", cluster.create_database()))
        else:
            print(f"postgresql skipped: {unavailable()}")
        try:
            for name, url in backends:
                store = Store(open_database(url, Path(tmp) / name))
                figures = run(store, args.agents, args.checks, args.seconds)
                store.close()
                print(
                    f"{name:<11} {figures['commits']:>8.0f} {figures['p50_ms']:>8.1f} "
                    f"{figures['p99_ms']:>8.1f} {figures['rows_per_s']:>10.0f}"
                )
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
