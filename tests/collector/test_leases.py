"""Agent leases and the ingest fence: two collectors' ingest on one database.

Each "collector" here is the real Ingest, MeshState and Store of a collector
process, sharing one PostgreSQL database (the collectors of a mesh share one);
batches are the agent's real sequence ranges, resent to the other collector
the way a failing-over agent does. SQLite is owned by one collector: its tests
here are that collector's own reconnects.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import Database, open_database
from probemesh.collector.ingest import Ingest, _Item
from probemesh.collector.leases import LeaseBook
from probemesh.collector.remote_results import Applied
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

AGENT = "vps-1"


class Node:
    """One collector's ingest side, on the shared database."""

    def __init__(self, database: Database, name: str) -> None:
        self.store = Store(database)
        self.state = MeshState()
        self.ingest = Ingest(
            self.state,
            self.store,
            AssignmentHistory(self.store, "digest"),
            leases=LeaseBook(name),
            result_sink=self.sink,
        )
        self.hold: asyncio.Event | None = None  # set: the next sink call waits for it
        self.sinking = asyncio.Event()

    async def sink(self, _applied: list[Applied]) -> None:
        """Called inside the fenced transaction, before the commit."""
        self.sinking.set()
        if self.hold is not None:
            await self.hold.wait()

    async def connect(self, agent_id: str = AGENT) -> Session:
        agent = self.state.agents.setdefault(agent_id, AgentInfo(agent_id, "DE"))
        agent.assigned, agent.revision = {"web": "t.example:80"}, 1
        epoch = await self.ingest.take_lease(agent)
        return Session(agent, "token", epoch)

    async def send(self, session: Session, first: int, last: int) -> None:
        results = [
            pb.Result(check="web", revision=1, timestamp=1000.0 + seq, success=True,
                      duration_seconds=0.01)
            for seq in range(first, last + 1)
        ]  # fmt: skip
        batch = pb.ResultBatch(first_seq=first, last_seq=last, floor_seq=1, results=results)
        await self.ingest._apply_group([_Item(session, batch)])

    def counted(self) -> int:
        tally = self.state.tallies.get(("web", AGENT))
        return tally.success if tally else 0

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path) -> Database:
    """A database several collectors share: a fresh PostgreSQL one."""
    return open_database(postgres_url, tmp_path)


@pytest.fixture
def nodes(shared: Database) -> Iterator[list[Node]]:
    made = [Node(shared, "collector-a"), Node(shared, "collector-b")]
    yield made
    for node in made:
        node.close()


def test_takeover_continues_counters_and_fences_the_old_stream(nodes: list[Node]) -> None:
    a, b = nodes

    async def scenario() -> None:
        on_a = await a.connect()
        await a.send(on_a, 1, 10)
        on_b = await b.connect()  # the agent failed over: B takes the lease
        assert (on_a.epoch, on_b.epoch) == (1, 2)
        assert b.counted() == 10 and b.ingest.mark_of(AGENT) == 10  # continues from A's commit
        await b.send(on_b, 5, 15)  # 5..10 are resends A applied: deduped
        await a.send(on_a, 11, 20)  # A's stream is half-open: refused, not counted
        assert a.counted() == 10
        assert on_a.end_code == grpc.StatusCode.ABORTED
        assert "collector-b took over agent vps-1" in on_a.end_details
        assert a.ingest.leases.fenced_batches_total == 1 and a.ingest.leases.lost_total == 1
        assert b.counted() == 15 and b.ingest.leases.takeovers_total == 1
        on_a = await a.connect()  # and back to A, which reloads what B committed
        assert a.counted() == 15
        await a.send(on_a, 1, 20)
        assert a.counted() == 20 and b.counted() == 15

    asyncio.run(scenario())


def test_histograms_of_a_country_add_up_across_collectors(nodes: list[Node]) -> None:
    """Agents of one country on two collectors: the stored histogram is the sum,
    and each collector's memory takes it back at its commits."""
    a, b = nodes

    async def scenario() -> None:
        on_a, on_b = await a.connect("vps-1"), await b.connect("vps-2")
        await a.send(on_a, 1, 30)
        await b.send(on_b, 1, 20)
        await a.send(on_a, 31, 40)
        stored = Store.load_histograms(a.store)[("duration", "web", "DE")]
        assert sum(stored[:-1]) == 60
        assert sum(a.state.histograms[("duration", "web", "DE")].counts) == 60
        assert sum(b.state.histograms[("duration", "web", "DE")].counts) == 50

    asyncio.run(scenario())


def test_take_waits_for_a_fenced_commit_in_progress(nodes: list[Node]) -> None:
    """A takeover during the old holder's apply loads that apply's commit, never
    the state before it: the lease row stays locked until the commit."""
    a, b = nodes

    async def scenario() -> None:
        on_a = await a.connect()
        a.hold = asyncio.Event()
        applying = asyncio.create_task(a.send(on_a, 1, 50))
        await a.sinking.wait()  # A applied in memory, inside its transaction
        taking = asyncio.create_task(b.connect())
        await asyncio.sleep(0.3)
        assert not taking.done(), "the takeover did not wait for the fenced commit"
        a.hold.set()
        await applying
        on_b = await taking
        assert b.counted() == 50 and b.ingest.mark_of(AGENT) == 50
        await b.send(on_b, 1, 60)
        assert b.counted() == 60

    asyncio.run(scenario())


def test_lease_poll_ends_an_idle_stream(nodes: list[Node]) -> None:
    """The poll of recent takes closes a stream that sends nothing any more."""
    from probemesh.collector.service import ProbeMeshService
    from probemesh.collector.sessions import SessionRegistry

    a, b = nodes

    async def scenario() -> None:
        sessions = SessionRegistry()
        service = ProbeMeshService(
            a.state, a.ingest, None, sessions, lambda: None, None  # type: ignore[arg-type]
        )  # fmt: skip
        on_a = await a.connect()
        sessions.open(on_a)
        await service.close_taken_over()
        assert on_a.end_code is None  # its own lease
        await b.connect()
        await service.close_taken_over()
        assert on_a.end_code == grpc.StatusCode.ABORTED
        assert AGENT not in a.ingest.leases.epochs and a.ingest.leases.lost_total == 1

    asyncio.run(scenario())


PHASES = ("in_flight", "held_in_sink", "after_take", "after_new_applies")


@pytest.mark.parametrize("seed", range(12))
def test_failover_phases_count_each_result_once(nodes: list[Node], seed: int) -> None:
    """An agent switching between two collectors; the old collector still has a
    batch to apply, at a varied phase of the takeover: already applying when the
    lease moves (in memory or waiting in the sink, inside its transaction), or
    starting after the take, or after the new holder applied more. Each result
    counts once, in memory and in the database.

    The agent model keeps what a real agent keeps: results stay until acked,
    and after a switch it resends everything unacked to the new collector.
    """
    rng = random.Random(seed)

    async def scenario() -> None:
        produced = 0
        current = 0
        sessions: list[Session | None] = [await nodes[0].connect(), None]
        for _round in range(8):
            old, new = nodes[current], nodes[1 - current]
            session = sessions[current]
            assert session is not None
            for _ in range(rng.randint(1, 4)):
                n = rng.randint(1, 30)
                await old.send(session, produced + 1, produced + n)
                produced += n
            stale_first, stale_last = produced + 1, produced + 5
            produced += 5
            phase = PHASES[(seed + _round) % len(PHASES)]
            if phase in ("in_flight", "held_in_sink"):
                old.hold = asyncio.Event()
                stale = asyncio.create_task(old.send(session, stale_first, stale_last))
                if phase == "held_in_sink":
                    await old.sinking.wait()
                else:
                    await asyncio.sleep(rng.choice([0.0, 0.001]))
                taking = asyncio.create_task(new.connect())
                await asyncio.sleep(rng.choice([0.0, 0.02]))
                old.hold.set()
                old.hold = None
                old.sinking.clear()
                await stale
                sessions[1 - current] = await taking
            else:
                sessions[1 - current] = await new.connect()
                if phase == "after_new_applies":
                    await new.send(sessions[1 - current], new.ingest.mark_of(AGENT) + 1, produced)
                await old.send(session, stale_first, stale_last)  # half-open stream
                assert session.end_code == grpc.StatusCode.ABORTED
            current = 1 - current
            # Resend everything unacked from what the new collector says is applied.
            holder = nodes[current]
            resend_from = holder.ingest.mark_of(AGENT) + 1
            if resend_from <= produced:
                await holder.send(sessions[current], resend_from, produced)
            assert holder.counted() == produced, (phase, holder.counted(), produced)
        holder = nodes[current]
        assert holder.ingest.mark_of(AGENT) == produced
        assert max(n.counted() for n in nodes) == produced
        stored = holder.store.load_counters()[("results", "web", AGENT, "DE", "success")]
        assert stored == produced

    asyncio.run(scenario())


def test_two_collectors_applying_at_once_never_overcount(shared: Database) -> None:
    """Threads of two real event loops racing: each keeps taking the lease and
    resending from the committed mark; the total stays exact."""
    produced = 400
    counts: dict[str, int] = {}

    def run(name: str, seed: int) -> None:
        rng = random.Random(seed)

        async def loop() -> None:
            node = Node(shared, name)
            try:
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    session = await node.connect()
                    start = node.ingest.mark_of(AGENT) + 1
                    for first in range(start, produced + 1, 7):
                        await node.send(session, first, min(first + 6, produced))
                        if session.end_code is not None or rng.random() < 0.2:
                            break
                    if node.ingest.mark_of(AGENT) >= produced and session.end_code is None:
                        break
                    await asyncio.sleep(rng.random() * 0.01)
                counts[name] = node.counted()
            finally:
                node.close()

        asyncio.run(loop())

    threads = [threading.Thread(target=run, args=(f"c{i}", i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(counts) == 2, counts
    assert max(counts.values()) == produced and all(c <= produced for c in counts.values())
    final = Store(shared)
    try:
        assert final.load_counters()[("results", "web", AGENT, "DE", "success")] == produced
    finally:
        final.close()


def test_one_collector_on_sqlite_reconnects_during_an_apply(tmp_path: Path) -> None:
    """SQLite, one collector: the agent's new stream takes the lease while the old
    stream's batch is being applied. The take waits for that apply (not for the
    file's write lock, which the apply holds only to commit), the old stream's
    later batches are fenced, and the count is exact."""
    node = Node(open_database(None, tmp_path), "collector-a")

    async def scenario() -> None:
        old = await node.connect()
        await node.send(old, 1, 10)
        node.hold = asyncio.Event()
        applying = asyncio.create_task(node.send(old, 11, 20))
        await node.sinking.wait()
        other = await node.connect("vps-2")  # another agent's take goes through meanwhile
        assert other.epoch == 1
        taking = asyncio.create_task(node.connect())
        await asyncio.sleep(0.3)
        assert not taking.done(), "the take did not wait for the agent's apply"
        node.hold.set()
        node.hold = None
        await applying
        new = await taking
        assert node.counted() == 20 and node.ingest.mark_of(AGENT) == 20
        await node.send(old, 21, 30)  # the replaced stream: fenced, nothing counted
        assert node.ingest.leases.fenced_batches_total == 1 and node.counted() == 20
        await node.send(new, 21, 30)
        stored = node.store.load_counters()[("results", "web", AGENT, "DE", "success")]
        assert node.counted() == stored == 30 and node.ingest.mark_of(AGENT) == 30

    try:
        asyncio.run(scenario())
    finally:
        node.close()
