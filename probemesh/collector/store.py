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

import contextlib
import functools
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from probemesh.collector.assignments import Span
from probemesh.collector.database import Connection, Database
from probemesh.collector.leases import AgentRows, LeaseRow, Takeover


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
        # The one thread that runs the ingest connection's fenced transactions.
        self.ingest_thread = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="collector-ingest"
        )
        self._fence: contextlib.AbstractContextManager[Connection] | None = None
        self._fenced: dict[str, LeaseRow] = {}  # the lease rows the open fence checked
        # On a shared database, the histogram rows known to exist (they are
        # never deleted): commit_fenced creates the others before it locks them.
        self._histogram_rows: set[str] = set()
        # On a database one collector owns, the histogram states it committed:
        # nobody else adds to them, so a commit need not read them back.
        self._histogram_states: dict[str, list[float]] = {}
        if database.shared:
            self.lease_thread = self.worker
        else:
            # A database one collector owns keeps its leases in memory (see
            # take_lease); the first take of an agent only reads, on a
            # connection and thread of its own, so it never queues behind a
            # write that waits for the file's lock (a token's last use).
            self._own: dict[str, LeaseRow] = {}
            self._reader_db = database.connect()
            self.lease_thread = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="collector-leases"
            )

    def load_marks(self) -> dict[str, tuple[int, list[list[int]]]]:
        rows = self.db.execute("SELECT agent_id, mark, ranges FROM marks").fetchall()
        return {agent: (mark, json.loads(ranges)) for agent, mark, ranges in rows}

    def load_counters(self) -> dict[tuple[str, ...], int]:
        rows = self.db.execute("SELECT key, value FROM counters").fetchall()
        return {tuple(json.loads(key)): value for key, value in rows}

    def load_histograms(self) -> dict[tuple[str, ...], list[float]]:
        rows = self.db.execute("SELECT key, state FROM histograms").fetchall()
        return {tuple(json.loads(key)): json.loads(state) for key, state in rows}

    def take_lease(self, agent_id: str, holder: str, now: float) -> Takeover:
        """Take the agent's lease (epoch + 1) and read its rows, in one transaction
        (run on lease_thread).

        The lease row is locked first: a fenced commit of the previous holder
        in progress keeps it locked, so the rows read here include that commit.
        """
        if not self.database.shared:
            return self._take_own(agent_id, holder)
        with self.db.transaction() as db:
            row = db.execute(
                db.for_update("SELECT holder FROM leases WHERE agent_id = ?"), (agent_id,)
            ).fetchone()
            (epoch,) = db.execute(
                "INSERT INTO leases(agent_id, holder, epoch, taken_at) VALUES(?, ?, 1, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET holder=excluded.holder, "
                "epoch=leases.epoch + 1, taken_at=excluded.taken_at RETURNING epoch",
                (agent_id, holder, now),
            ).fetchone()
            rows = _agent_rows(db, agent_id)
        return Takeover(int(epoch), row[0] if row else None, rows)

    def _take_own(self, agent_id: str, holder: str) -> Takeover:
        """A lease on a database this collector alone writes (claimed at start).

        Nobody else can apply the agent's results, so the lease is memory only
        and needs no write: a stream set-up never waits for the file's write
        lock, which ingest commits hold under load. The first take in this
        process reads the agent's committed rows (a WAL read, never blocked by
        a writer); later ones keep what memory holds, which is what was
        committed since.
        """
        previous = self._own.get(agent_id)
        row = LeaseRow(holder, previous.epoch + 1 if previous else 1)
        rows = None if previous else _agent_rows(self._reader_db, agent_id)
        self._own[agent_id] = row
        return Takeover(row.epoch, holder if previous else None, rows)

    def recent_leases(self, since: float) -> dict[str, LeaseRow]:
        """Leases taken since a time (the poll for streams another collector took)."""
        if not self.database.shared:
            return {}
        rows = self.db.execute(
            "SELECT agent_id, holder, epoch FROM leases WHERE taken_at >= ?", (since,)
        ).fetchall()
        return {agent: LeaseRow(holder, int(epoch)) for agent, holder, epoch in rows}

    def begin_fence(self, agent_ids: Iterable[str]) -> dict[str, LeaseRow]:
        """The agents' lease rows, as ingest checks them before applying (ingest thread).

        On a shared database this opens the ingest transaction and locks the
        rows, in agent order (two collectors' fences never wait on each other
        in a cycle); the transaction stays open while ingest applies the
        batches in memory, and commit_fenced or rollback_fence ends it. A
        database one collector owns (SQLite) has its leases in memory.
        """
        agents = sorted(agent_ids)
        if not self.database.shared:
            self._fenced = {a: self._own[a] for a in agents if a in self._own}
            return self._fenced
        fence = self._ingest_db.transaction()
        db = fence.__enter__()
        self._fence = fence
        try:
            self._fenced = _lease_rows(db, agents, lock=True)
        except BaseException:
            self.rollback_fence()
            raise
        return self._fenced

    def commit_fenced(
        self,
        marks: Iterable[tuple[str, int, list[list[int]]]],
        counters: Iterable[tuple[tuple[str, ...], int]],
        histograms: Iterable[tuple[tuple[str, ...], list[float]]],
    ) -> dict[tuple[str, ...], list[float]]:
        """Write marks and counters, add the histogram deltas, and commit the
        fenced transaction; return the histograms' new stored states.

        Histogram rows are shared by the collectors serving agents of one
        country: each is locked (in key order) and the delta added to it. Rows
        not stored yet are created first, in key order too: inserted in each
        collector's own order, two commits adding the same new rows (every
        collector's first results, a new check or country) could each hold a
        row the other waits for, and PostgreSQL would abort one as a deadlock;
        or both would read a row as absent and the second overwrite the
        first's delta.
        """
        fence, self._fence = self._fence, None
        db = self._ingest_db
        if fence is None:  # an unshared database: the transaction starts here
            fence = db.transaction()
            fence.__enter__()
        try:
            deltas = {_key_text(key): (key, delta) for key, delta in histograms}
            before = self._histograms_before(db, sorted(deltas))
            stored: dict[tuple[str, ...], list[float]] = {}
            states: dict[str, list[float]] = {}
            for text, (key, delta) in deltas.items():
                was = before.get(text, [])
                stored[key] = states[text] = (
                    [a + b for a, b in zip(was, delta, strict=True)]
                    if len(was) == len(delta)
                    else delta
                )
            db.executemany(
                "INSERT INTO marks(agent_id, mark, ranges) VALUES(?, ?, ?) "
                "ON CONFLICT(agent_id) DO UPDATE SET mark=excluded.mark, ranges=excluded.ranges",
                [(agent, mark, json.dumps(ranges)) for agent, mark, ranges in marks],
            )
            db.executemany(
                "INSERT INTO counters(key, value, agent_id) VALUES(?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                [(_key_text(key), value, key[2]) for key, value in counters],
            )
            db.executemany(
                "INSERT INTO histograms(key, state) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state=excluded.state",
                [(text, json.dumps(state)) for text, state in states.items()],
            )
        except BaseException as exc:
            fence.__exit__(type(exc), exc, exc.__traceback__)
            raise
        fence.__exit__(None, None, None)
        if self.database.shared:
            self._histogram_rows.update(states)
        else:
            self._histogram_states.update(states)
        return stored

    def _histograms_before(self, db: Connection, keys: list[str]) -> dict[str, list[float]]:
        """The stored states of the histogram rows keys (sorted) name, before a commit adds to them.

        On a shared database the rows are locked first (in key order), and
        those not stored yet created: see commit_fenced. A database this
        collector owns has only its own commits in them: those states are
        remembered, and only a row this process has not written yet is read
        (one stored by an earlier run).
        """
        if not self.database.shared:
            known = self._histogram_states
            unread = [key for key in keys if key not in known]
            found = db.rows_by_key("SELECT key, state FROM histograms WHERE key IN ({})", unread)
            return {
                **{key: json.loads(state) for key, state in found.items()},
                **{key: known[key] for key in keys if key in known},
            }
        new = [(key,) for key in keys if key not in self._histogram_rows]
        if new:
            db.executemany(
                "INSERT INTO histograms(key, state) VALUES(?, '[]') ON CONFLICT(key) DO NOTHING",
                new,
            )
        found = db.rows_by_key(
            "SELECT key, state FROM histograms WHERE key IN ({})", keys, lock=True
        )
        return {key: json.loads(state) for key, state in found.items()}

    def rollback_fence(self) -> None:
        """End the fenced transaction without writing (a failure mid-apply)."""
        fence, self._fence = self._fence, None
        if fence is not None:
            error = RuntimeError("ingest abandoned the fenced transaction")
            fence.__exit__(RuntimeError, error, None)

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
        self.ingest_thread.shutdown()
        if not self.database.shared:
            self.lease_thread.shutdown()
            self._reader_db.close()
        self._ingest_db.close()
        self.db.close()


def _lease_rows(db: Connection, agents: list[str], lock: bool) -> dict[str, LeaseRow]:
    select = "SELECT agent_id, holder, epoch FROM leases WHERE agent_id IN ({})"
    rows = db.rows_by_key(select, agents, lock)
    return {agent: LeaseRow(holder, int(epoch)) for agent, (holder, epoch) in rows.items()}


def _agent_rows(db: Connection, agent_id: str) -> AgentRows:
    """The agent's committed mark and counters."""
    row = db.execute("SELECT mark, ranges FROM marks WHERE agent_id = ?", (agent_id,)).fetchone()
    counters = {
        tuple(json.loads(key)): int(value)
        for key, value in db.execute(
            "SELECT key, value FROM counters WHERE agent_id = ?", (agent_id,)
        ).fetchall()
    }
    if row is None:
        return AgentRows(counters=counters)
    return AgentRows(int(row[0]), json.loads(row[1]), counters)


@functools.lru_cache(maxsize=1 << 20)
def _key_text(key: tuple[str, ...]) -> str:
    """The JSON text of a counter or histogram key; the same keys recur in every commit.

    Bounded: keys are made of configured checks, token-bound agents and a
    fixed set of labels, but a cache must not grow without limit anyway.
    """
    return json.dumps(key)
