"""The collector's SQLite database in --data-dir.

It holds what must survive a restart: agent tokens (hashed), each agent's
applied-sequence mark (for dedupe) and the result counters and histograms,
which are written in the same transaction as the mark so that accounting stays
exact across crashes: a batch is either applied, counted and marked, or not.
It also holds the checks revision and the assignment history (see
assignments.py), which say which buffered results are still valid.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from probemesh.collector.assignments import Span
from probemesh.errors import StateError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS marks (
    agent_id TEXT PRIMARY KEY,
    mark INTEGER NOT NULL,
    ranges TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS histograms (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    revision INTEGER PRIMARY KEY,
    digest TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS assignments (
    agent_id TEXT NOT NULL,
    check_name TEXT NOT NULL,
    first_rev INTEGER NOT NULL,
    last_rev INTEGER NOT NULL,
    target TEXT NOT NULL,
    module TEXT NOT NULL,
    closed_at REAL,
    expires_at REAL,
    PRIMARY KEY (agent_id, check_name, first_rev)
);
"""


def open_db(data_dir: Path, name: str = "collector.sqlite3") -> sqlite3.Connection:
    """Open (creating) a WAL-mode database in data_dir; StateError if unusable."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(data_dir / name, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise StateError(f"{data_dir}: cannot open collector database: {exc}") from None
    return db


class Store:
    """Typed access to the collector database."""

    def __init__(self, data_dir: Path) -> None:
        self.db = open_db(data_dir)
        # The ingest commits run in a worker thread on a connection of their own:
        # sharing one would let an event-loop statement (a token's last use)
        # land inside, and roll back with, the worker's transaction.
        self._ingest_db = open_db(data_dir)
        # The one thread that runs statements on self.db while the collector
        # serves (tokens, assignment history): the event loop never waits on
        # the disk, and the statements keep their order.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector-db")

    def load_marks(self) -> dict[str, tuple[int, list[list[int]]]]:
        rows = self.db.execute("SELECT agent_id, mark, ranges FROM marks").fetchall()
        return {agent: (mark, json.loads(ranges)) for agent, mark, ranges in rows}

    def load_counters(self) -> dict[tuple[str, ...], int]:
        rows = self.db.execute("SELECT key, value FROM counters").fetchall()
        return {tuple(json.loads(key)): value for key, value in rows}

    def load_histograms(self) -> dict[tuple[str, ...], list[float]]:
        rows = self.db.execute("SELECT key, state FROM histograms").fetchall()
        return {tuple(json.loads(key)): json.loads(state) for key, state in rows}

    def commit_applied(
        self,
        marks: Iterable[tuple[str, int, list[list[int]]]],
        counters: Iterable[tuple[tuple[str, ...], int]],
        histograms: Iterable[tuple[tuple[str, ...], list[float]]],
    ) -> None:
        """Write marks, counters and histograms in one transaction (ingest thread)."""
        db = self._ingest_db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO marks(agent_id, mark, ranges) VALUES(?, ?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET mark=excluded.mark, ranges=excluded.ranges",
                [(agent, mark, json.dumps(ranges)) for agent, mark, ranges in marks],
            )
            db.executemany(
                "INSERT INTO counters(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(_key_text(key), value) for key, value in counters],
            )
            db.executemany(
                "INSERT INTO histograms(key, state) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state=excluded.state",
                [(_key_text(key), json.dumps(state)) for key, state in histograms],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def load_revision(self) -> tuple[int, str] | None:
        row = self.db.execute(
            "SELECT revision, digest FROM revisions ORDER BY revision DESC LIMIT 1"
        ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def save_revision(self, revision: int, digest: str, created_at: float) -> None:
        self.db.execute(
            "INSERT INTO revisions(revision, digest, created_at) VALUES(?, ?, ?)",
            (revision, digest, created_at),
        )

    def load_spans(self) -> dict[str, list[Span]]:
        rows = self.db.execute(
            "SELECT agent_id, check_name, target, module, first_rev, last_rev, closed_at, "
            "expires_at FROM assignments ORDER BY agent_id, check_name, first_rev"
        ).fetchall()
        spans: dict[str, list[Span]] = {}
        for agent_id, *fields in rows:
            spans.setdefault(agent_id, []).append(Span(*fields))
        return spans

    def save_spans(self, agent_id: str, spans: Iterable[Span]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO assignments(agent_id, check_name, first_rev, last_rev, target, "
                "module, closed_at, expires_at) VALUES(?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(agent_id, check_name, first_rev) DO UPDATE SET "
                "last_rev=excluded.last_rev, closed_at=excluded.closed_at, "
                "expires_at=excluded.expires_at",
                [
                    (agent_id, s.check, s.first, s.last, s.target, s.module, s.closed_at,
                     s.expires_at)
                    for s in spans
                ],
            )  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def prune_spans(self, now: float) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            removed = db.execute(
                "DELETE FROM assignments WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            ).rowcount
            # The newest revision stays: it is what the next one counts from.
            db.execute(
                "DELETE FROM revisions WHERE revision < (SELECT MAX(revision) FROM revisions) "
                "AND revision < COALESCE((SELECT MIN(first_rev) FROM assignments), "
                "(SELECT MAX(revision) FROM revisions))"
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(removed)

    def close(self) -> None:
        """Finish the queued writes, then close."""
        self.worker.shutdown()
        self._ingest_db.close()
        self.db.close()


@functools.lru_cache(maxsize=1 << 20)
def _key_text(key: tuple[str, ...]) -> str:
    """The JSON text of a counter or histogram key; the same keys recur in every commit.

    Bounded: keys are made of configured checks, token-bound agents and a
    fixed set of labels, but a cache must not grow without limit anyway.
    """
    return json.dumps(key)
