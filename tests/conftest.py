"""Shared fixtures: repository root on sys.path so tests import tests.harness; the
throwaway PostgreSQL (tests/postgres.py) and the database of the shared storage suite;
bytecode for the processes the tests start."""

from __future__ import annotations

import compileall
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

import probemesh  # noqa: E402
from probemesh.collector.database import Database, open_database  # noqa: E402
from tests.postgres import postgres_cluster, postgres_url  # noqa: E402, F401


def pytest_sessionstart(session: pytest.Session) -> None:
    """Write the bytecode of probemesh and of the test helpers before any test runs.

    The suite starts many Python processes (collectors, agents, CLI commands).
    Where PYTHONDONTWRITEBYTECODE is set, as in many container images, none of
    them writes a cache, so each would compile the probemesh modules it imports
    from source: 0.02-0.05 s of CPU per start (bench/process_start.py). A tree
    that cannot be written only loses that time.
    """
    for package in (Path(probemesh.__file__).parent, ROOT / "tests"):
        compileall.compile_dir(package, quiet=2)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The shared storage suite's database: each test runs on SQLite and on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return open_database(url, tmp_path / "data")
