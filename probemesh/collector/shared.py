"""Verdicts shared through the mesh's database: publication, the evaluator's election, results.

Every collector of a mesh publishes its agents' classifier inputs
(verdicts.Publication) into ``verdict_inputs``: one row per check x agent,
written only when it changes. Each publication is one transaction numbered
with the next value of the publishing collector's own sequence
(``verdict_publishers.seq``), so the evaluator reads only the rows newer than
the last number it saw of each collector: a collector commits its
publications one after the other, so a reader that sees number N has seen
every row up to N. The same row carries a liveness ``beat`` that the collector
bumps at most every ``STAMP_EVERY`` seconds even when nothing changed: a
collector whose beat the evaluator has not seen move for
``PUBLISHER_TIMEOUT`` seconds is dead (no clock is compared across machines),
and its rows count as stale until the agents' new collector publishes them.

A row moves to another collector only with a newer result (``last_ts``), so a
collector that lost an agent can neither overwrite nor remove what the
agent's new collector published.

One collector at a time is the evaluator: it holds the session-level advisory
lock ``EVALUATOR_LOCK`` on a connection of its own. The others try again every
``ELECTION_RETRY`` seconds; PostgreSQL releases the lock when the holder's
session ends (process killed, connection lost), so another takes over within
a few seconds. The evaluator stores each evaluation in ``verdict_evaluation``
(and the incidents in ``incidents``, through its IncidentBook); every
collector serves those.

Every method runs in the outage monitor's database thread, never on the event loop.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from probemesh.collector.database import Connection, Database, DatabaseError
from probemesh.collector.verdicts import InputBook, Pair, PairInput, Publication

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: b"probeval" read as a 64-bit integer (migrations use another).
EVALUATOR_LOCK = 0x70726F626576616C
ELECTION_RETRY = 2.0  # seconds between two attempts to become the evaluator
STAMP_EVERY = 2.0  # seconds between two liveness beats of a collector with nothing to publish
PUBLISHER_TIMEOUT = 10.0  # a collector whose beat has not moved for this long is dead
_IN_CHUNK = 500  # agents per "IN (...)" lookup

_COLUMNS = (
    "check_name, agent_id, country, success, confirmed, fresh, settled, reason, detail, "
    "streak, refused, last_ts"
)
_UPSERT = (
    f"INSERT INTO verdict_inputs({_COLUMNS}, collector_id, seq, gone) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE) "
    "ON CONFLICT (check_name, agent_id) DO UPDATE SET country = excluded.country, "
    "success = excluded.success, confirmed = excluded.confirmed, fresh = excluded.fresh, "
    "settled = excluded.settled, reason = excluded.reason, detail = excluded.detail, "
    "streak = excluded.streak, refused = excluded.refused, last_ts = excluded.last_ts, "
    "collector_id = excluded.collector_id, seq = excluded.seq, gone = FALSE "
    "WHERE verdict_inputs.collector_id = excluded.collector_id "
    "OR verdict_inputs.gone OR excluded.last_ts > verdict_inputs.last_ts"
)
# An agent's row moves to the collector it is connected to; between two that are not
# connected to it (or two that are), to the one that heard from it last.
_AGENT_UPSERT = (
    "INSERT INTO verdict_agents(agent_id, connected, last_seen, doc, collector_id, seq, gone) "
    "VALUES (?, ?, ?, ?, ?, ?, FALSE) ON CONFLICT (agent_id) DO UPDATE SET "
    "connected = excluded.connected, last_seen = excluded.last_seen, doc = excluded.doc, "
    "collector_id = excluded.collector_id, seq = excluded.seq, gone = FALSE "
    "WHERE verdict_agents.collector_id = excluded.collector_id OR verdict_agents.gone "
    "OR (excluded.connected AND NOT verdict_agents.connected) "
    "OR (excluded.connected = verdict_agents.connected "
    "AND excluded.last_seen > verdict_agents.last_seen)"
)
_AGENT_REMOVE = (
    "UPDATE verdict_agents SET gone = TRUE, seq = ? WHERE agent_id = ? AND collector_id = ?"
)
_REMOVE = (
    "UPDATE verdict_inputs SET gone = TRUE, seq = ? "
    "WHERE check_name = ? AND agent_id = ? AND collector_id = ?"
)


def _row(item: PairInput) -> tuple[Any, ...]:
    return (
        item.check,
        item.agent,
        item.country,
        item.success,
        item.confirmed,
        item.fresh,
        item.settled,
        item.reason,
        item.detail,
        item.streak,
        item.refused,
        item.last_ts,
    )


def _input(row: tuple[Any, ...]) -> PairInput:
    """The PairInput of a row read with _COLUMNS first (SQLite gives booleans as 0/1).

    The driver gives each row its own strings; the evaluator holds an input for
    every pair of the mesh, so the names are interned (one copy each).
    """
    check, agent, country, success, confirmed, fresh, settled, reason, detail = row[:9]
    return PairInput(
        sys.intern(check),
        sys.intern(agent),
        sys.intern(country),
        None if success is None else bool(success),
        None if confirmed is None else bool(confirmed),
        bool(fresh),
        bool(settled),
        sys.intern(reason),
        sys.intern(detail),
        int(row[9]),
        bool(row[10]),
        float(row[11]),
    )


class Election:
    """Holds (or keeps trying to take) the evaluator's advisory lock on a session of its own."""

    def __init__(self, database: Database, collector_id: str) -> None:
        self.database = database
        self.collector_id = collector_id
        self.conn: Connection | None = None
        self.held = False
        self._next_try = 0.0

    def hold(self) -> bool:
        """Still (or now) the evaluator? A held lock's session is checked on every call."""
        now = time.monotonic()
        try:
            if self.held:
                assert self.conn is not None
                self.conn.execute("SELECT 1")
                return True
            if now < self._next_try:
                return False
            self._next_try = now + ELECTION_RETRY
            if self.conn is None:
                self.conn = self.database.connect()
            self.held = self.conn.try_advisory_lock(EVALUATOR_LOCK)
        except DatabaseError as exc:
            if self.held:
                log.error("collector %s: lost the evaluator's session: %s", self.collector_id, exc)
            self.held = False
            self._drop()  # a new session next time: the old one's lock is gone with it
            return False
        if self.held:
            log.warning("collector %s is now the evaluator", self.collector_id)
        return self.held

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def close(self) -> None:
        """End the session: the lock goes with it, so another collector takes over at once."""
        self.held = False
        self._drop()


class SharedVerdicts:
    """The verdict tables of the mesh's database, as one collector uses them."""

    def __init__(self, database: Database, collector_id: str) -> None:
        self.database = database
        self.collector_id = collector_id
        self.conn: Connection | None = None
        self.seq: int | None = None  # this collector's last publication number
        self._beat_at = 0.0
        # evaluator: collector -> last publication number read; -> (beat, when it last moved)
        self.seen: dict[str, int] = {}
        self.beats: dict[str, tuple[int, float]] = {}
        self.owners: dict[Pair, str] = {}  # evaluator: which collector published each input
        # every collector: agent -> (its collector, its description); collector -> number read
        self.fleet: dict[str, tuple[str, dict[str, Any]]] = {}
        self.fleet_seen: dict[str, int] = {}

    def _run(self, work: Callable[[Connection], Any]) -> Any:
        """Run work in one transaction."""
        if self.conn is None:
            self.conn = self.database.connect()
        with self.conn.transaction():
            return work(self.conn)

    def publish(self, publication: Publication) -> None:
        """Write one round's changes in one transaction, numbered after the previous one."""
        now = time.monotonic()
        if not publication and now - self._beat_at < STAMP_EVERY and self.seq is not None:
            return

        def work(conn: Connection) -> None:
            if self.seq is None:
                row = conn.execute(
                    "SELECT seq FROM verdict_publishers WHERE collector_id = ?",
                    (self.collector_id,),
                ).fetchone()
                self.seq = int(row[0]) if row else 0
            seq = self.seq + 1 if publication else self.seq
            if publication.changed:
                conn.executemany(
                    _UPSERT, [(*_row(p), self.collector_id, seq) for p in publication.changed]
                )
            if publication.removed:
                conn.executemany(
                    _REMOVE, [(seq, c, a, self.collector_id) for c, a in publication.removed]
                )
            if publication.agents:
                conn.executemany(
                    _AGENT_UPSERT,
                    [
                        (agent, connected, last_seen, json.dumps(doc), self.collector_id, seq)
                        for agent, connected, last_seen, doc in publication.agents
                    ],
                )
            if publication.agents_removed:
                conn.executemany(
                    _AGENT_REMOVE,
                    [(seq, agent, self.collector_id) for agent in publication.agents_removed],
                )
            conn.execute(
                "INSERT INTO verdict_publishers(collector_id, seq, beat) VALUES (?, ?, 0) "
                "ON CONFLICT (collector_id) DO UPDATE "
                "SET seq = excluded.seq, beat = verdict_publishers.beat + 1",
                (self.collector_id, seq),
            )
            self.seq = seq

        self._run(work)
        self._beat_at = now

    def published(self, pairs: Iterable[Pair]) -> list[PairInput]:
        """The inputs published for these pairs, by whichever collector served them last
        (to resume their streaks)."""
        wanted = set(pairs)
        agents = sorted({agent for _, agent in wanted})
        found: list[PairInput] = []

        def work(conn: Connection) -> None:
            for i in range(0, len(agents), _IN_CHUNK):
                chunk = agents[i : i + _IN_CHUNK]
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM verdict_inputs WHERE agent_id IN "
                    f"({', '.join('?' * len(chunk))}) AND NOT gone",
                    chunk,
                ).fetchall()
                found.extend(_input(r) for r in rows if (r[0], r[1]) in wanted)

        if agents:
            self._run(work)
        return found

    def _publishers(self, conn: Connection, now: float) -> list[tuple[str, int]]:
        """(collector, last publication number) of every publisher; notes whose beat moved."""
        out = []
        for collector, seq, beat in conn.execute(
            "SELECT collector_id, seq, beat FROM verdict_publishers"
        ).fetchall():
            previous = self.beats.get(collector)
            if previous is None or previous[0] != beat:
                self.beats[collector] = (beat, now)
            out.append((collector, int(seq)))
        return out

    def _dead(self, now: float) -> set[str]:
        return {c for c, (_, moved) in self.beats.items() if now - moved > PUBLISHER_TIMEOUT}

    def read(self, book: InputBook) -> dict[Pair, PairInput]:
        """Bring the evaluator's copy up to date; inputs of dead collectors are stale."""
        now = time.monotonic()

        def work(conn: Connection) -> None:
            for collector, seq in self._publishers(conn, now):
                seen = self.seen.get(collector, 0)
                if seq <= seen:
                    continue
                rows = conn.execute(
                    f"SELECT {_COLUMNS}, gone FROM verdict_inputs "
                    "WHERE collector_id = ? AND seq > ?",
                    (collector, seen),
                ).fetchall()
                changed, keys, removed = [], [], []
                for row in rows:
                    if row[12]:  # gone
                        key = (row[0], row[1])
                        removed.append(key)
                        self.owners.pop(key, None)
                    else:
                        item = _input(row)
                        key = (item.check, item.agent)  # shared by owners and the book
                        changed.append(item)
                        keys.append(key)
                        self.owners[key] = collector
                book.apply(Publication(changed, removed, keys=keys))
                self.seen[collector] = seq

        self._run(work)
        dead = self._dead(now)
        if not dead:
            return book.inputs
        owners = self.owners
        return {
            key: replace(item, fresh=False) if owners.get(key) in dead else item
            for key, item in book.inputs.items()
        }

    def read_fleet(self) -> dict[str, dict[str, Any]]:
        """Every agent of the mesh as its collector described it (agent_doc); those of a
        dead collector are no longer connected."""
        now = time.monotonic()

        def work(conn: Connection) -> None:
            for collector, seq in self._publishers(conn, now):
                seen = self.fleet_seen.get(collector, 0)
                if seq <= seen:
                    continue
                rows = conn.execute(
                    "SELECT agent_id, doc, gone FROM verdict_agents "
                    "WHERE collector_id = ? AND seq > ?",
                    (collector, seen),
                ).fetchall()
                for agent, doc, gone in rows:
                    if gone:
                        self.fleet.pop(agent, None)
                    else:
                        self.fleet[agent] = (collector, json.loads(doc))
                self.fleet_seen[collector] = seq

        self._run(work)
        dead = self._dead(now)
        return {
            agent: {**doc, "connected": False} if collector in dead else doc
            for agent, (collector, doc) in self.fleet.items()
        }

    def forget_reads(self) -> None:
        """Start the evaluator's copy over (this collector just became the evaluator)."""
        self.seen.clear()
        self.owners.clear()

    def save_evaluation(self, evaluation: int, doc: dict[str, Any]) -> None:
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO verdict_evaluation(id, evaluator, evaluation, doc) "
                "VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "evaluator = excluded.evaluator, evaluation = excluded.evaluation, "
                "doc = excluded.doc",
                (self.collector_id, evaluation, json.dumps(doc)),
            )
        )

    def load_evaluation(self) -> tuple[str, int, dict[str, Any]] | None:
        """(evaluator, evaluation number, document) of the latest evaluation, if any."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT evaluator, evaluation, doc FROM verdict_evaluation WHERE id = 1"
            ).fetchone()
        )
        if row is None:
            return None
        return str(row[0]), int(row[1]), json.loads(row[2])

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
