"""The loop of the soaks that repeat a scenario of tests/ha on one throwaway PostgreSQL.

Each repetition gets a fresh database and a drawn value (the moment of its
fault); a repetition whose assertions fail is counted and the soak goes on.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tests.postgres import PostgresCluster, unavailable

Scenario = Callable[[Path, str, float], float]  # (directory, database URL, draw) -> a figure


def run_soak(
    scenario: Scenario, draws: Iterable[float], label: Callable[[float, float], str]
) -> tuple[list[float], list[str]] | None:
    """Run scenario once per draw, printing label(draw, figure) or the failure of each
    repetition; (figures, failures), or None when PostgreSQL cannot run here."""
    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return None
    # SIGTERM unwinds like an error, so every process and the cluster are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cluster = PostgresCluster()
    cluster.start()
    figures: list[float] = []
    failures: list[str] = []
    try:
        for rep, draw in enumerate(draws):
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="probemesh-soak-") as root:
                try:
                    figure = scenario(Path(root), cluster.create_database(), draw)
                except AssertionError as exc:
                    failures.append(f"rep {rep}: {str(exc).splitlines()[0]}")
                    print(f"rep {rep:2d}: +{draw:.2f}s  FAILED  {failures[-1]}")
                    continue
            figures.append(figure)
            print(f"rep {rep:2d}: {label(draw, figure)}  ({time.monotonic() - started:.0f}s)")
    finally:
        cluster.stop()
    return figures, failures
