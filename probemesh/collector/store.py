"""The collector's state in its Database (SQLite in --data-dir, or PostgreSQL).

It holds what must survive a restart: agent tokens (hashed), each agent's
applied-sequence mark (for dedupe) and the result counters and histograms,
which are written in the same transaction as the mark so that accounting stays
exact across crashes: a batch is either applied, counted and marked, or not.
It also holds the checks revision and the assignment history (see
assignments.py), which say which buffered results are still valid.
The tables are created by the migrations (collector/migrations/).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from probemesh.collector.assignments import Span
from probemesh.collector.database import Database


class Store:
    """Typed access to the collector database."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.db = database.connect()
        # The ingest commits run in a worker thread on a connection of their own:
        # sharing one would let an event-loop statement (a token's last use)
        # land inside, and roll back with, the worker's transaction.
        self._ingest_db = database.connect()
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
        with self._ingest_db.transaction() as db:
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

    def load_revision(self) -> tuple[int, str] | None:
        row = self.db.execute(
            "SELECT revision, digest FROM revisions ORDER BY revision DESC LIMIT 1"
        ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def save_revision(self, revision: int, digest: str, created_at: float) -> None:
        self.db.execute(
            # Collectors sharing a database and a checks file issue the same revision.
            "INSERT INTO revisions(revision, digest, created_at) VALUES(?, ?, ?) "
            "ON CONFLICT(revision) DO NOTHING",
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
        with self.db.transaction() as db:
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

    def prune_spans(self, now: float) -> int:
        with self.db.transaction() as db:
            removed = db.execute(
                "DELETE FROM assignments WHERE expires_at IS NOT NULL AND expires_at < ?", (now,)
            ).rowcount
            # The newest revision stays: it is what the next one counts from.
            db.execute(
                "DELETE FROM revisions WHERE revision < (SELECT MAX(revision) FROM revisions) "
                "AND revision < COALESCE((SELECT MIN(first_rev) FROM assignments), "
                "(SELECT MAX(revision) FROM revisions))"
            )
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
