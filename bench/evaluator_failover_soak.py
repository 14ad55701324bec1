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
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pg_soak import run_soak
from tests.ha.evaluator_scenario import run_failover


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--max-delay", type=float, default=3.0, help="seconds [default: 3]")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcome = run_soak(
        run_failover,
        [rng.uniform(0.0, args.max_delay) for _ in range(args.reps)],
        lambda delay, takeover: (
            f"kill +{delay:.2f}s  takeover {takeover:.2f}s  same id, closed, same view"
        ),
    )
    if outcome is None:
        return 2
    takeovers, failures = outcome
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
