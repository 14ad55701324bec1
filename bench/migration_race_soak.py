"""Soak: collectors starting together on an empty database apply each migration once.

Each run creates a fresh database on a throwaway PostgreSQL cluster
(tests/postgres.py, as root), then --openers threads open it at the same
instant (a barrier), each through open_database as a starting collector
does, with the thread start staggered by up to --jitter-ms so the phases vary
from run to run. A run is right when every opener succeeds and
schema_migrations holds each step exactly once. The same race on SQLite runs
after it (one file per run).

Prints the counts per backend.

    .venv/bin/python bench/migration_race_soak.py --runs 20 --openers 8
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.collector.database import open_database
from probemesh.collector.migrations import steps
from tests.postgres import PostgresCluster, unavailable


def race(url: str | None, data_dir: Path, openers: int, jitter: float) -> str:
    """One run: 'right', or what went wrong."""
    errors: list[str] = []
    start = threading.Barrier(openers)

    def open_one() -> None:
        try:
            start.wait()
            time.sleep(random.uniform(0, jitter))
            open_database(url, data_dir)
        except Exception as exc:
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        return f"opener failed ({', '.join(sorted(set(errors)))})"
    database = open_database(url, data_dir)
    conn = database.connect()
    rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
    conn.close()
    applied = sorted(int(v) for (v,) in rows)
    return "right" if applied == [s.version for s in steps(database.dialect)] else "wrong ledger"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--openers", type=int, default=8)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    args = parser.parse_args()
    jitter = args.jitter_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        backends: list[str] = ["sqlite"]
        cluster = None
        if unavailable() is None:
            cluster = PostgresCluster()
            cluster.start()
            backends.insert(0, "postgresql")
        else:
            print(f"postgresql skipped: {unavailable()}")
        try:
            for backend in backends:
                outcomes: Counter[str] = Counter()
                for run in range(args.runs):
                    url = cluster.create_database() if backend == "postgresql" and cluster else None
                    outcomes[race(url, Path(tmp) / f"{backend}-{run}", args.openers, jitter)] += 1
                print(
                    f"{backend}: {args.runs} runs x {args.openers} openers: "
                    + ", ".join(f"{n} {what}" for what, n in outcomes.most_common())
                )
        finally:
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
