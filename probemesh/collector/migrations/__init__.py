"""Versioned schema migrations of the collector database, one directory per dialect.

A step is ``NNNN_name.sql`` in ``sqlite/`` and in ``postgresql/`` (the same
number and name in both): plain DDL whose statements end with ``;``, with no
other semicolon outside ``--`` comment lines. ``schema_migrations`` records
each step applied. ``migrate`` applies the missing steps in order, in one
transaction; on PostgreSQL it first takes an advisory lock, so collectors that
start together apply each step once. A database holding a step this code does
not know was written by a newer probemesh and is refused: running old code on
a newer schema could lose what the newer code stores.

Steps are never edited once released; a change is a new step.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from importlib import resources

from probemesh.collector.database import Connection, DatabaseError

log = logging.getLogger(__name__)

# The advisory lock key that serializes migrations ("probemes" read as a 64-bit integer).
MIGRATION_LOCK = 0x70726F62656D6573
_STEP = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LEDGER = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True)
class Step:
    """One numbered migration of one dialect."""

    version: int
    name: str
    statements: tuple[str, ...]


def steps(dialect: str) -> list[Step]:
    """The dialect's steps, in order."""
    found = []
    for entry in (resources.files(__package__) / dialect).iterdir():
        match = _STEP.match(entry.name)
        if match is None:
            continue
        found.append(Step(int(match[1]), match[2], _statements(entry.read_text(encoding="utf-8"))))
    return sorted(found, key=lambda step: step.version)


def _statements(text: str) -> tuple[str, ...]:
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return tuple(chunk.strip() for chunk in code.split(";") if chunk.strip())


def migrate(conn: Connection) -> list[Step]:
    """Bring the schema up to date in one transaction; return the steps applied now."""
    known = steps(conn.dialect)
    newest = max((step.version for step in known), default=0)
    with conn.transaction():
        conn.advisory_xact_lock(MIGRATION_LOCK)
        conn.execute(_LEDGER)
        done = {
            int(row[0]) for row in conn.execute("SELECT version FROM schema_migrations").fetchall()
        }
        unknown = sorted(done - {step.version for step in known})
        if unknown:
            raise DatabaseError(
                f"{conn.database.display}: schema version {unknown[-1]:04d} was applied by a "
                f"newer probemesh; this one knows versions up to {newest:04d}. "
                "Upgrade probemesh before running it on this database."
            )
        applied = []
        for step in known:
            if step.version in done:
                continue
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations(version, name, applied_at) VALUES(?, ?, ?)",
                (step.version, step.name, time.time()),
            )
            applied.append(step)
    for step in applied:
        log.info(
            "%s: applied schema migration %04d_%s", conn.database.display, step.version, step.name
        )
    return applied
