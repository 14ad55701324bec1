"""Shared fixtures: repository root on sys.path so tests import tests.harness; the
throwaway PostgreSQL (tests/postgres.py) and the database of the shared storage suite."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from probemesh.collector.database import Database, open_database  # noqa: E402
from tests.postgres import postgres_cluster, postgres_url  # noqa: E402, F401


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The shared storage suite's database: each test runs on SQLite and on PostgreSQL."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return open_database(url, tmp_path / "data")
