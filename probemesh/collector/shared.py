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

The same publications carry the evidence its agents reported
(``verdict_evidence``, evidence.EvidenceBook's slots; gone once forgotten),
so the evaluator diagnoses a country with every agent's evidence, wherever
it is connected. Collectors' clocks are not assumed to agree, and the
database server's is the reference: each transaction that needs it reads
that clock between two of its own (``_skew``), evidence times are stored on
the server's clock, and each publication records its collector's skew
(``verdict_publishers.skew``) for the probe times of its inputs. A row
moves to another collector only with newer evidence. The evaluator's
requests for evidence from agents another collector serves go through
``evidence_requests``, which that collector takes every round.

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
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from probemesh.collector.database import Connection, Database, DatabaseError
from probemesh.collector.evidence import SLOTS, Change, Observed, Outbox
from probemesh.collector.verdicts import InputBook, Pair, PairInput, Publication
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

# pg_try_advisory_lock key: b"probeval" read as a 64-bit integer (migrations use another).
EVALUATOR_LOCK = 0x70726F626576616C
ELECTION_RETRY = 2.0  # seconds between two attempts to become the evaluator
STAMP_EVERY = 2.0  # seconds between two liveness beats of a collector with nothing to publish
PUBLISHER_TIMEOUT = 10.0  # a collector whose beat has not moved for this long is dead
_IN_CHUNK = 500  # agents per "IN (...)" lookup

FORGET_DEAD_AFTER = 600.0  # seconds dead after which a collector's evidence is deleted

# An evidence request for an agent another collector serves: (that collector, check,
# agent, with a traceroute).
Relayed = tuple[str, str, str, bool]
# Evidence another collector published: (collector, check, agent, slot, change on this clock).
RemoteChange = tuple[str, str, str, str, Change]


class MeshRead(NamedTuple):
    """What the evaluator read: every input, the evidence other collectors published
    since its last read, and the collectors whose evidence it deleted (dead for
    FORGET_DEAD_AFTER): the caller puts the evidence into its EvidenceBook and drops
    what those collectors published, on the event loop that uses the book."""

    inputs: dict[Pair, PairInput]
    evidence: list[RemoteChange]
    forgotten: list[str]


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
_EVIDENCE_UPSERT = (
    "INSERT INTO verdict_evidence(check_name, agent_id, slot, country, evidence, received, "
    "since, collector_id, seq, gone) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE) "
    "ON CONFLICT (check_name, agent_id, slot) DO UPDATE SET country = excluded.country, "
    "evidence = excluded.evidence, received = excluded.received, since = excluded.since, "
    "collector_id = excluded.collector_id, seq = excluded.seq, gone = FALSE "
    "WHERE verdict_evidence.collector_id = excluded.collector_id OR verdict_evidence.gone "
    "OR excluded.received > verdict_evidence.received"
)
_EVIDENCE_REMOVE = (
    "UPDATE verdict_evidence SET gone = TRUE, seq = ? "
    "WHERE check_name = ? AND agent_id = ? AND slot = ? AND collector_id = ?"
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


def _skew(conn: Connection, clock: Callable[[], float]) -> float:
    """This clock minus the database server's, read between two of this clock's readings."""
    before = clock()
    if conn.dialect == "postgresql":
        sql = "SELECT EXTRACT(EPOCH FROM clock_timestamp())"
    else:
        sql = "SELECT (julianday('now') - 2440587.5) * 86400.0"
    server = float(conn.execute(sql).fetchone()[0])
    return (before + clock()) / 2 - server


def _evidence_rows(
    outbox: Outbox, collector: str, seq: int, skew: float
) -> tuple[list[Any], list[Any]]:
    """(upserts, removals) of verdict_evidence for one publication's evidence changes,
    times moved onto the server's clock."""
    upserts: list[Any] = []
    removals: list[Any] = []
    # in key order: two collectors writing an agent's rows as it moves take the locks alike
    for (check, agent, slot), change in sorted(outbox.items(), key=lambda kv: kv[0]):
        if change is None:
            removals.append((seq, check, agent, slot, collector))
        elif isinstance(change, Observed):
            upserts.append((
                check, agent, slot, change.country, change.evidence.SerializeToString(),
                change.received - skew, change.since - skew, collector, seq,
            ))  # fmt: skip
        else:  # a recovery: its time alone
            at = change - skew
            upserts.append((check, agent, slot, "", None, at, at, collector, seq))
    return upserts, removals


def _change(collector: str, row: tuple[Any, ...], skew: float) -> RemoteChange | None:
    """A verdict_evidence row (check, agent, slot, country, evidence, received, since,
    gone) as EvidenceBook.put takes it, times on this clock; None if unreadable."""
    check, agent, slot, country, evidence, received, since, gone = row
    check, agent = sys.intern(check), sys.intern(agent)
    if slot not in SLOTS:  # a slot of a newer probemesh
        return None
    if gone:
        return collector, check, agent, slot, None
    if slot == "recovered":
        return collector, check, agent, slot, float(received) + skew
    try:
        message = pb.Evidence.FromString(bytes(evidence))
    except (DecodeError, TypeError) as exc:
        log.warning("evidence of %s on %s (%s) unreadable: %s", check, agent, slot, exc)
        return None
    observed = Observed(
        message, agent, sys.intern(country), float(received) + skew, float(since) + skew
    )
    return collector, check, agent, slot, observed


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

    def __init__(
        self, database: Database, collector_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.database = database
        self.collector_id = collector_id
        self.clock = clock  # this collector's wall clock: its evidence's and inputs' times
        self.conn: Connection | None = None
        self.seq: int | None = None  # this collector's last publication number
        self._beat_at = 0.0
        # evaluator: collector -> last publication number read; -> (beat, when it last moved)
        self.seen: dict[str, int] = {}
        self.beats: dict[str, tuple[int, float]] = {}
        self.owners: dict[Pair, str] = {}  # evaluator: which collector published each input
        self.skews: dict[str, float] = {}  # evaluator: each publisher's clock minus the server's
        self.skew = 0.0  # evaluator: this clock minus the server's, at its last read
        self.forgotten: set[str] = set()  # evaluator: dead collectors whose evidence it deleted
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
            skew = _skew(conn, self.clock)
            if publication.evidence:
                upserts, removals = _evidence_rows(
                    publication.evidence, self.collector_id, seq, skew
                )
                if upserts:
                    conn.executemany(_EVIDENCE_UPSERT, upserts)
                if removals:
                    conn.executemany(_EVIDENCE_REMOVE, removals)
            conn.execute(
                "INSERT INTO verdict_publishers(collector_id, seq, beat, skew) "
                "VALUES (?, ?, 0, ?) ON CONFLICT (collector_id) DO UPDATE "
                "SET seq = excluded.seq, beat = verdict_publishers.beat + 1, "
                "skew = excluded.skew",
                (self.collector_id, seq, skew),
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

    def request(self, requests: list[Relayed]) -> None:
        """The evaluator's evidence requests for agents other collectors serve, written
        as soon as it made them (in key order: the serving collector's take locks alike)."""
        self._run(
            lambda conn: conn.executemany(
                "INSERT INTO evidence_requests(collector_id, check_name, agent_id, path) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (collector_id, check_name, agent_id) "
                "DO UPDATE SET path = excluded.path OR evidence_requests.path",
                sorted(requests),
            )
        )

    def take_requests(self) -> list[tuple[str, str, bool]]:
        """The evaluator's requests for evidence from agents this collector serves:
        (check, agent, with a traceroute), each taken once."""

        def work(conn: Connection) -> list[tuple[str, str, bool]]:
            rows = conn.execute(
                "DELETE FROM evidence_requests WHERE collector_id = ? "
                "RETURNING check_name, agent_id, path",
                (self.collector_id,),
            ).fetchall()
            return [(str(check), str(agent), bool(path)) for check, agent, path in rows]

        result: list[tuple[str, str, bool]] = self._run(work)
        return result

    def serving(self, agent_id: str) -> str | None:
        """The live collector the agent is connected to, as the fleet last read says."""
        found = self.fleet.get(agent_id)
        if found is None or not found[1].get("connected"):
            return None
        collector = found[0]
        return None if collector in self._dead(time.monotonic()) else collector

    def _publishers(self, conn: Connection, now: float) -> list[tuple[str, int]]:
        """(collector, last publication number) of every publisher; notes whose beat moved
        and each one's skew."""
        out = []
        for collector, seq, beat, skew in conn.execute(
            "SELECT collector_id, seq, beat, skew FROM verdict_publishers"
        ).fetchall():
            previous = self.beats.get(collector)
            if previous is None or previous[0] != beat:
                self.beats[collector] = (beat, now)
            self.skews[collector] = float(skew)
            out.append((collector, int(seq)))
        return out

    def offset(self, collector: str | None) -> float:
        """What to add to a time on this publisher's clock to have it on the evaluator's."""
        return self.skew - self.skews.get(collector, self.skew) if collector else 0.0

    def _dead(self, now: float, after: float | None = None) -> set[str]:
        """Collectors whose beat has not moved for after (PUBLISHER_TIMEOUT) seconds."""
        limit = PUBLISHER_TIMEOUT if after is None else after
        return {c for c, (_, moved) in self.beats.items() if now - moved > limit}

    def read(self, book: InputBook) -> MeshRead:
        """Bring the evaluator's copy of every input up to date (inputs of dead collectors
        are stale), and read the evidence other collectors published since (MeshRead)."""
        now = time.monotonic()
        evidence: list[RemoteChange] = []
        forgotten: list[str] = []

        def work(conn: Connection) -> None:
            self.skew = _skew(conn, self.clock)
            for collector, seq in self._publishers(conn, now):
                seen = self.seen.get(collector, 0)
                if seq <= seen:
                    continue
                if collector != self.collector_id:  # this one's evidence is in its book
                    evidence.extend(self._read_evidence(conn, collector, seen, seq))
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
            long_dead = self._dead(now, FORGET_DEAD_AFTER) - self.forgotten - {self.collector_id}
            for collector in long_dead:
                for table in ("verdict_evidence", "evidence_requests"):
                    conn.execute(f"DELETE FROM {table} WHERE collector_id = ?", (collector,))
                forgotten.append(collector)

        self._run(work)
        self.forgotten.update(forgotten)
        dead = self._dead(now)
        inputs = book.inputs
        if dead:
            owners = self.owners
            inputs = {
                key: replace(item, fresh=False) if owners.get(key) in dead else item
                for key, item in book.inputs.items()
            }
        return MeshRead(inputs, evidence, forgotten)

    def _read_evidence(
        self, conn: Connection, collector: str, seen: int, seq: int
    ) -> list[RemoteChange]:
        """The collector's evidence rows numbered after seen; the tombstones up to seq,
        read now, are deleted (a new evaluator starts from the live rows)."""
        rows = conn.execute(
            "SELECT check_name, agent_id, slot, country, evidence, received, since, gone "
            "FROM verdict_evidence WHERE collector_id = ? AND seq > ?",
            (collector, seen),
        ).fetchall()
        if any(row[7] for row in rows):
            conn.execute(
                "DELETE FROM verdict_evidence WHERE collector_id = ? AND gone AND seq <= ?",
                (collector, seq),
            )
        return [c for row in rows if (c := _change(collector, row, self.skew)) is not None]

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
