"""Soak: the agent-lease takeover race, many times; print the counts.

Usage: .venv/bin/python bench/lease_soak.py [--runs 20] [--rounds 6] [--database URL]

--database names a PostgreSQL database the soak may wipe (its public schema is
dropped before each run).

Each run starts two real collectors on one database and one real agent that
lists both, then switches the agent between them --rounds times, at a random
phase of the result flow and in turn by a cut, a freeze (the old collector
keeps a half-open stream whose held bytes reach it after the takeover) and
held Acks (see tests/ha/race.py). After a quiesce it requires that the
highest count over the collectors, and the sum of the results each applied,
both equal what the agent produced. A run prints its figures; the summary
counts exact runs and how often each part of the race was exercised (fenced
batches, lost leases).

Without --database, a throwaway PostgreSQL cluster is started (as the tests
do; needs root and the postgresql package).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.durability.common import FAST_LINK_ENV  # noqa: E402
from tests.ha.race import RACE_ENV, run_race  # noqa: E402
from tests.postgres import PostgresCluster, unavailable  # noqa: E402


@contextlib.contextmanager
def databases(url: str | None) -> Iterator[Callable[[], str]]:
    """A source of empty databases: the --database URL's (emptied before each run)
    or fresh ones on a throwaway PostgreSQL cluster."""
    if url:
        import psycopg

        def emptied() -> str:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE")
                conn.execute("CREATE SCHEMA public")
            return url

        yield emptied
        return
    reason = unavailable()
    if reason:
        raise SystemExit(f"cannot start PostgreSQL: {reason}; give --database URL")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.create_database
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--database", default=None, help="postgresql:// URL of an empty database")
    args = parser.parse_args()
    os.environ.update({**FAST_LINK_ENV, **RACE_ENV})
    exact = 0
    fenced = lost = takeovers = 0.0
    started = time.monotonic()
    with databases(args.database) as fresh:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="lease-soak-") as tmp:
                try:
                    figures = run_race(Path(tmp), ["--database", fresh()], args.rounds, seed=run)
                except AssertionError as exc:
                    print(f"run {run:2d}: NOT EXACT: {exc}", flush=True)
                    continue
            exact += 1
            fenced += figures.fenced
            lost += figures.lost
            takeovers += figures.takeovers
            print(
                f"run {run:2d}: produced {figures.produced:5.0f} counted {figures.counted:5.0f} "
                f"applied {figures.applied:5.0f} takeovers {figures.takeovers:2.0f} "
                f"fenced batches {figures.fenced:2.0f} lost leases {figures.lost:2.0f} "
                f"switches {','.join(figures.switches)}",
                flush=True,
            )
    print(
        f"{exact}/{args.runs} runs exact; {takeovers:.0f} takeovers, {lost:.0f} leases lost, "
        f"{fenced:.0f} stale batches fenced; {time.monotonic() - started:.0f}s"
    )
    return 0 if exact == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
