"""Soak of the evaluator failover: N repetitions of tests/ha/evaluator_scenario.py.

Each repetition starts a fresh database on one throwaway PostgreSQL, three
collectors and five agents, opens a real incident (the target answers HTTP
500 to Brazil's agents), SIGKILLs the evaluator at a random moment within
--max-delay seconds after every collector shows the incident, and requires:
a new evaluator within 10 s, the same incident id throughout, the incident
closed once the target recovers, and every collector serving the same view.

Prints one line per repetition, the counts and the takeover times; exits 1
if any repetition failed. Needs root (PostgreSQL runs as the postgres user).

    .venv/bin/python bench/evaluator_failover_soak.py --reps 20
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ha.evaluator_scenario import run_failover
from tests.postgres import PostgresCluster, unavailable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--max-delay", type=float, default=3.0, help="seconds [default: 3]")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    # SIGTERM unwinds like an error, so every process and the cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rng = random.Random(args.seed)
    cluster = PostgresCluster()
    cluster.start()
    takeovers: list[float] = []
    failures: list[str] = []
    try:
        for rep in range(args.reps):
            delay = rng.uniform(0.0, args.max_delay)
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="probemesh-evsoak-") as root:
                try:
                    takeover = run_failover(Path(root), cluster.create_database(), delay)
                except AssertionError as exc:
                    failures.append(f"rep {rep}: {str(exc).splitlines()[0]}")
                    print(f"rep {rep:2d}: kill +{delay:.2f}s  FAILED  {failures[-1]}")
                    continue
            takeovers.append(takeover)
            print(
                f"rep {rep:2d}: kill +{delay:.2f}s  takeover {takeover:.2f}s  "
                f"same id, closed, same view  ({time.monotonic() - started:.0f}s)"
            )
    finally:
        cluster.stop()
    print(
        f"\n{len(takeovers)} of {args.reps} repetitions kept the incident id; {len(failures)} failed"
    )
    if takeovers:
        print(
            f"takeover seconds: min {min(takeovers):.2f}  median "
            f"{statistics.median(takeovers):.2f}  max {max(takeovers):.2f}"
        )
    for line in failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
