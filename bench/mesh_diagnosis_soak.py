"""Soak of the mesh diagnosis: N repetitions of tests/ha/mesh_diagnosis_scenario.py.

Each repetition starts a fresh database on one throwaway PostgreSQL, two
collectors (the evaluator serves no agent) and two agents on the other
collector, makes the target answer HTTP 500 to Brazil's agent at a random
moment within --max-phase seconds after both countries are up, and requires
the evaluator to diagnose Brazil ``http_diff`` with the other collector's
evidence (the other collector serving the same), with an incident of cause
``blocking``.

Prints one line per repetition, the counts and the seconds from the failure
to the diagnosis; exits 1 if any repetition failed. Needs root (PostgreSQL
runs as the postgres user). --on-evaluator connects the agents to the
evaluator instead: the same diagnosis with no relay, for comparison.

    .venv/bin/python bench/mesh_diagnosis_soak.py --reps 20
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pg_soak import run_soak
from tests.ha.mesh_diagnosis_scenario import run_mesh_diagnosis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--max-phase", type=float, default=5.0, help="seconds [default: 5]")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--on-evaluator",
        action="store_true",
        help="the agents connect to the evaluator: the same diagnosis without the relay",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    outcome = run_soak(
        lambda root, url, phase: run_mesh_diagnosis(root, url, phase, args.on_evaluator),
        [rng.uniform(0.0, args.max_phase) for _ in range(args.reps)],
        lambda phase, took: f"fail +{phase:.2f}s  http_diff after {took:.2f}s",
    )
    if outcome is None:
        return 2
    took, failures = outcome
    print(
        f"\n{len(took)} of {args.reps} repetitions diagnosed http_diff "
        f"{'on the evaluator' if args.on_evaluator else 'through the other collector'}; "
        f"{len(failures)} failed"
    )
    if took:
        print(
            f"seconds to the diagnosis: min {min(took):.2f}  median "
            f"{statistics.median(took):.2f}  max {max(took):.2f}"
        )
    for line in failures:
        print(line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
