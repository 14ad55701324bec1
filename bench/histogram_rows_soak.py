"""Soak: collectors committing to the same new histogram rows never deadlock.

Each run, --collectors Stores on one throwaway PostgreSQL (tests/postgres.py,
as root) commit at the same instant (a barrier, then a start staggered by up
to --jitter-ms) deltas to --rows histogram rows that do not exist yet, each
in its own shuffled order, as collectors' first results do. A run is right
when every commit succeeds and every row holds the sum of all the deltas;
otherwise it counts what failed (a deadlock PostgreSQL broke, a wrong sum).

Prints the counts.

    .venv/bin/python bench/histogram_rows_soak.py --runs 20 --collectors 3 --rows 40
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

from probemesh.collector.database import Database, open_database
from probemesh.collector.store import Store
from tests.postgres import PostgresCluster, unavailable


def race(database: Database, run: int, collectors: int, rows: int, jitter: float) -> str:
    """One run: 'right', or what went wrong."""
    keys = [("duration", f"check-{run}", f"C{i:03d}") for i in range(rows)]
    stores = [Store(database) for _ in range(collectors)]
    errors: list[str] = []
    start = threading.Barrier(collectors)

    def commit(store: Store, order: list[tuple[str, ...]]) -> None:
        try:
            start.wait()
            time.sleep(random.uniform(0, jitter))
            store.begin_fence([])
            store.commit_fenced([], [], [(key, [1.0, 0.5]) for key in order])
        except Exception as exc:
            errors.append("deadlock" if "deadlock" in str(exc) else type(exc).__name__)

    threads = []
    for store in stores:
        order = keys[:]
        random.shuffle(order)
        threads.append(threading.Thread(target=commit, args=(store, order)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stored = stores[0].load_histograms()
    for store in stores:
        store.close()
    if errors:
        return f"commit failed ({', '.join(sorted(set(errors)))})"
    want = [float(collectors), 0.5 * collectors]
    return "right" if all(stored.get(key) == want for key in keys) else "wrong sums"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--collectors", type=int, default=3)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--jitter-ms", type=float, default=2.0)
    args = parser.parse_args()
    problem = unavailable()
    if problem:
        sys.exit(f"needs PostgreSQL: {problem}")
    cluster = PostgresCluster()
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            database = open_database(cluster.create_database(), Path(tmp))
            outcomes: Counter[str] = Counter()
            for run in range(args.runs):
                outcomes[
                    race(database, run, args.collectors, args.rows, args.jitter_ms / 1000)
                ] += 1
    finally:
        cluster.stop()
    print(f"{args.runs} runs, {args.collectors} collectors, {args.rows} new rows each, "
          f"start jitter ≤ {args.jitter_ms:g} ms:")  # fmt: skip
    for outcome, count in outcomes.most_common():
        print(f"  {outcome}: {count}")


if __name__ == "__main__":
    main()
