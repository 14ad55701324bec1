"""Verdicts shared through a real PostgreSQL: publication, reading, ownership, election."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from probemesh.collector import shared as shared_mod
from probemesh.collector.database import Database, open_database
from probemesh.collector.diagnosis import AWAITING_CONTROL_PROBE, Diagnoser
from probemesh.collector.evidence import EvidenceBook
from probemesh.collector.reachability import Classifier
from probemesh.collector.shared import Election, SharedVerdicts
from probemesh.collector.state import AgentInfo
from probemesh.collector.verdicts import FleetPublisher, InputBook, Publication, Publisher
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.mesh_script import ScriptedMesh, result
from tests.collector.test_diagnosis import ASNS, evidence


@pytest.fixture
def pg_database(postgres_url: str, tmp_path: Path) -> Database:
    return open_database(postgres_url, tmp_path)


def test_the_evaluator_reads_what_each_collector_published(pg_database: Database) -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US", "JP"))
    # BR and DE are served by collector a, US and JP by collector b
    split = {"a": ("a-br", "a-de"), "b": ("a-us", "a-jp")}
    stores = {c: SharedVerdicts(pg_database, c) for c in split}
    publishers = {c: Publisher() for c in split}
    evaluator = SharedVerdicts(pg_database, "e")
    book, classifier = InputBook(), Classifier()

    def round_(**modes: dict[str, str]) -> Any:
        mesh.round(**modes)
        for c, agents in split.items():
            latest = {k: v for k, v in mesh.state.latest.items() if k[1] in agents}
            mine = {a: mesh.state.agents[a] for a in agents}
            stores[c].publish(publishers[c].observe(latest, mesh.checks, mine, mesh.now))
        inputs = evaluator.read(book)[0]
        return classifier.evaluate(inputs, mesh.checks, mesh.now)

    for _ in range(3):
        snapshot = round_()
    assert snapshot.checks == mesh.monitor.snapshot.checks
    # one key tuple a pair, one copy of each name: the evaluator holds every pair of the mesh
    assert {id(key) for key in book.inputs} == {id(key) for key in evaluator.owners}
    assert book.inputs[("web", "a-br")].agent is book.inputs[("tcp", "a-br")].agent
    assert book.inputs[("web", "a-br")].country is book.inputs[("tcp", "a-br")].country
    seq = dict(evaluator.seen)
    snapshot = round_()  # steady: nothing new to read
    assert evaluator.seen == seq
    for _ in range(3):
        snapshot = round_(web={"BR": "500", "US": "500"})
    assert snapshot.checks == mesh.monitor.snapshot.checks
    assert snapshot.checks["web"].down == {"BR", "US"}
    assert evaluator.seen["a"] > seq["a"] and evaluator.seen["b"] > seq["b"]

    # An agent that moved to collector b: b resumes a's streak; a can no longer touch the row.
    split = {"a": ("a-de",), "b": ("a-us", "a-jp", "a-br")}
    mesh.round(web={"BR": "500", "US": "500"})
    new = publishers["b"].new_pairs(
        {k: v for k, v in mesh.state.latest.items() if k[1] == "a-br"}, mesh.checks
    )
    assert sorted(new) == [("tcp", "a-br"), ("web", "a-br")]
    publishers["b"].resume(stores["b"].published(new))
    snapshot = round_(web={"BR": "500", "US": "500"})
    assert snapshot.checks["web"].down == {"BR", "US"}  # no round without a verdict
    assert evaluator.owners[("web", "a-br")] == "b"
    stores["a"].publish(publishers["a"].observe({}, mesh.checks, {}, mesh.now))  # a forgets
    assert ("web", "a-br") in evaluator.read(book)[0]
    assert evaluator.owners[("web", "a-br")] == "b"


def test_a_dead_collectors_inputs_are_stale(
    pg_database: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_mod, "PUBLISHER_TIMEOUT", 1.0)
    monkeypatch.setattr(shared_mod, "STAMP_EVERY", 0.2)
    mesh = ScriptedMesh(countries=("BR", "DE"))
    store, publisher = SharedVerdicts(pg_database, "a"), Publisher()
    evaluator, book = SharedVerdicts(pg_database, "e"), InputBook()
    for _ in range(2):
        mesh.round()
        store.publish(
            publisher.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now)
        )
    assert all(i.fresh for i in evaluator.read(book)[0].values())
    time.sleep(1.5)  # a stopped stamping
    assert not any(i.fresh for i in evaluator.read(book)[0].values())
    mesh.round()  # a steady round publishes nothing but the stamp
    store.publish(publisher.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now))
    assert all(i.fresh for i in evaluator.read(book)[0].values())  # stamped again: alive


def test_one_evaluator_at_a_time_and_a_quick_takeover(
    pg_database: Database, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_mod, "ELECTION_RETRY", 0.2)
    first = Election(pg_database, "a")
    second = Election(pg_database, "b")
    assert first.hold()
    assert not second.hold()
    assert first.hold()
    assert first.conn is not None
    with psycopg.connect(postgres_url, autocommit=True) as admin:  # the session dies
        admin.execute("SELECT pg_terminate_backend(%s)", (first.conn.raw.info.backend_pid,))
    assert not first.hold()  # notices at its next check
    deadline = time.monotonic() + 2.0
    while not second.hold():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not first.hold()
    second.close()
    deadline = time.monotonic() + 2.0
    while not first.hold():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.close()


def test_every_collector_lists_every_agent_where_it_is_connected(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_mod, "PUBLISHER_TIMEOUT", 1.0)
    a, b = SharedVerdicts(pg_database, "a"), SharedVerdicts(pg_database, "b")
    fleets = {"a": FleetPublisher(), "b": FleetPublisher()}
    on_a = {"x": AgentInfo("x", "BR", connected=True, last_seen=100.0, version="1")}
    on_b = {"y": AgentInfo("y", "DE", connected=True, last_seen=100.0)}
    a.publish(fleets["a"].observe(on_a, 0.0))
    b.publish(fleets["b"].observe(on_b, 0.0))
    assert a.read_fleet() == b.read_fleet()
    assert {k: v["connected"] for k, v in a.read_fleet().items()} == {"x": True, "y": True}
    assert not fleets["a"].observe(on_a, 1.0)  # nothing changed: nothing to publish
    # x moves to b; a learns of it later and publishes x disconnected: b's row stays
    on_b["x"] = AgentInfo("x", "BR", connected=True, last_seen=105.0, version="2")
    b.publish(fleets["b"].observe(on_b, 2.0))
    on_a["x"].connected = False
    a.publish(fleets["a"].observe(on_a, 3.0))
    fleet = a.read_fleet()
    assert (fleet["x"]["connected"], fleet["x"]["version"]) == (True, "2")
    a.publish(fleets["a"].observe({}, 4.0))  # a forgets x (series TTL): b's row stays
    assert b.read_fleet()["x"]["version"] == "2"
    time.sleep(1.5)  # b stops beating: its agents are no longer connected anywhere
    a.publish(fleets["a"].observe({}, 20.0))
    assert not any(doc["connected"] for doc in a.read_fleet().values())


def test_the_evaluator_holds_every_collectors_evidence_on_its_own_clock(
    pg_database: Database,
) -> None:
    """a's agent fails in UG, b's agent is a control in KE, and b's clock is 100 s behind:
    the evaluator gets both reports with their times on its own clock; a recovery and
    a forgotten check reach it too, a late publication of a collector the agent left
    does not take its row back, and its requests for b's agent reach b once."""
    now = time.time()
    a = SharedVerdicts(pg_database, "a")
    b = SharedVerdicts(pg_database, "b", clock=lambda: time.time() - 100.0)
    evaluator = SharedVerdicts(pg_database, "e")
    books = {"a": EvidenceBook(), "b": EvidenceBook()}
    for book in books.values():
        book.share()
    failing = pb.Evidence(probe_success=False)
    failing.tcp.add(address="192.0.2.7", port=443, outcome="refused")
    failing.path.hops.add(ttl=1, address="10.0.0.1")
    control = pb.Evidence(probe_success=True)
    books["a"].observe("web", "a-ug", "UG", failing, now - 5.0)
    books["b"].observe("web", "b-ke", "KE", control, now - 100.0 - 3.0)
    for name, store in (("a", a), ("b", b)):
        store.publish(Publication(evidence=books[name].take_outbox()))
    assert not books["a"].take_outbox()  # taken once

    def read(reader: SharedVerdicts, book: EvidenceBook) -> None:
        for collector, check, agent, slot, change in reader.read(InputBook()).evidence:
            book.put(check, agent, slot, change, remote=collector)

    mine = EvidenceBook()
    read(evaluator, mine)
    seen = mine.failing[("web", "a-ug")]
    assert (seen.evidence, seen.agent, seen.country) == (failing, "a-ug", "UG")
    assert mine.paths[("web", "a-ug")].evidence == failing
    assert abs(seen.received - (now - 5.0)) < 0.5 and seen.since == seen.received
    assert abs(mine.control[("web", "b-ke")].received - (now - 3.0)) < 0.5
    assert abs(evaluator.offset("b") - 100.0) < 0.5 and abs(evaluator.offset("a")) < 0.5
    assert mine.remote == {
        ("web", "a-ug", "failing"): "a",
        ("web", "a-ug", "path"): "a",
        ("web", "b-ke", "control"): "b",
    }
    mine.forget_agent("a-ug")  # gone from the evaluator itself: b's copy is not its to drop
    assert ("web", "a-ug") in mine.failing
    changes = mine.changes["web"]

    books["a"].recover("web", "a-ug", now)
    a.publish(Publication(evidence=books["a"].take_outbox()))
    read(evaluator, mine)
    assert abs(mine.recovered[("web", "a-ug")] - now) < 0.5
    assert mine.failure_over(("web", "a-ug"), seen)
    assert mine.changes["web"] > changes  # a diagnosis of web is due again

    # b-ke moved to a, which has newer evidence of it; b's late publication stays out
    books["a"].observe("web", "b-ke", "KE", control, now + 5.0)
    a.publish(Publication(evidence=books["a"].take_outbox()))
    books["b"].observe("web", "b-ke", "KE", control, now - 100.0)
    b.publish(Publication(evidence=books["b"].take_outbox()))
    read(evaluator, mine)
    assert abs(mine.control[("web", "b-ke")].received - (now + 5.0)) < 0.5
    assert mine.remote[("web", "b-ke", "control")] == "a"

    # the evaluator's requests for b's agent: b takes them once, a traceroute if any asked one
    evaluator.request([("b", "web", "b-ke", False), ("b", "web", "b-ke", True)])
    assert a.take_requests() == []
    assert b.take_requests() == [("web", "b-ke", True)]
    assert b.take_requests() == []

    books["a"].forget_checks(set())  # web left a's checks file: its rows go
    a.publish(Publication(evidence=books["a"].take_outbox()))
    read(evaluator, mine)  # the tombstones: read, then deleted
    assert not mine.failing and not mine.paths and not mine.recovered and not mine.control
    assert not mine.remote
    conn = pg_database.connect()
    assert conn.execute("SELECT count(*) FROM verdict_evidence").fetchone()[0] == 0
    conn.close()


def test_a_long_dead_collectors_evidence_and_requests_are_deleted(
    pg_database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_mod, "FORGET_DEAD_AFTER", 1.0)
    a, evaluator = SharedVerdicts(pg_database, "a"), SharedVerdicts(pg_database, "e")
    published = EvidenceBook()
    published.share()
    published.observe("web", "x", "KE", pb.Evidence(probe_success=True), time.time())
    a.publish(Publication(evidence=published.take_outbox()))
    evaluator.request([("a", "web", "x", True)])
    mine = EvidenceBook()
    first = evaluator.read(InputBook())
    for collector, check, agent, slot, change in first.evidence:
        mine.put(check, agent, slot, change, remote=collector)
    assert first.forgotten == [] and ("web", "x") in mine.control
    time.sleep(1.5)  # a stopped publishing
    second = evaluator.read(InputBook())
    assert second.forgotten == ["a"]
    mine.forget_remote("a")
    assert not mine.control and not mine.remote
    conn = pg_database.connect()
    for table in ("verdict_evidence", "evidence_requests"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    conn.close()
    assert evaluator.read(InputBook()).forgotten == []  # once


def test_a_mesh_evaluator_diagnoses_with_the_controls_other_collectors_serve(
    pg_database: Database,
) -> None:
    """UG's agent, served here, is refused; DE's and KE's agents moved to collector b,
    which publishes their successes. The evaluator asks b's agents for control
    evidence through b, waits for it, and then judges the refusal against it:
    blocking in UG, not the origin (no control) and not unknown."""
    mesh = ScriptedMesh(countries=("UG", "DE", "KE"))
    shared = SharedVerdicts(pg_database, "e")
    monitor = mesh.monitor
    book = mesh.state.evidence
    monitor.diagnoser = Diagnoser(book, ASNS, monitor.relay)
    for _ in range(5):
        mesh.round(web={"UG": "refused"})
    assert mesh.country_states()["UG"] == "down"
    book.observe("web", "a-ug", "UG", evidence(tcp="refused"), mesh.now)
    inputs = dict(monitor.publisher.published)
    for agent_id in ("a-de", "a-ke"):  # what this collector kept of them is a failure
        agent = mesh.state.agents[agent_id]
        mesh.state.apply(agent, result("web", mesh.now + 0.2, "refused"))
        agent.connected = False
        shared.fleet[agent_id] = ("b", {"connected": True, "features": ["evidence"]})
    monitor.shared, monitor.fleet = shared, {a: doc for a, (_, doc) in shared.fleet.items()}
    mesh.now += 1.0
    monitor.judge(inputs, mesh.checks, mesh.now)
    waiting = monitor.diagnoses["web"]["UG"]
    assert (waiting.kind, waiting.detail) == ("unknown", AWAITING_CONTROL_PROBE)
    # one control a country, asked through b (its successes predate UG's failure)
    b = SharedVerdicts(pg_database, "b")
    shared.request(monitor._relay)
    monitor._relay.clear()
    assert sorted(b.take_requests()) == [("web", "a-de", False), ("web", "a-ke", False)]
    # b's agents answer; b also publishes what UG's agent reported before it moved here
    published = EvidenceBook()
    published.share()
    for agent_id, country in (("a-de", "DE"), ("a-ke", "KE")):
        published.observe("web", agent_id, country, evidence(success=True), mesh.now + 0.5)
    published.observe("web", "a-ug", "UG", evidence(tcp="timeout"), mesh.now - 30.0)
    b.publish(Publication(evidence=published.take_outbox()))
    read = shared.read(InputBook())
    monitor._put_remote(read.evidence, read.forgotten)
    assert book.failing[("web", "a-ug")].evidence == evidence(tcp="refused")  # its own, newer
    mesh.now += 1.0
    monitor.judge(inputs, mesh.checks, mesh.now)
    assert monitor.diagnoses["web"]["UG"].kind == "tcp_blocking"
    assert not monitor._relay  # the controls' evidence is newer than UG's failure

    # UG recovers and fails again: the controls' evidence predates the new failure
    mesh.now += 31.0  # past the retry delay of the first requests
    book.recover("web", "a-ug", mesh.now)
    book.observe("web", "a-ug", "UG", evidence(tcp="refused"), mesh.now + 1.0)
    mesh.now += 2.0
    monitor.judge(inputs, mesh.checks, mesh.now)
    assert monitor.diagnoses["web"]["UG"].detail == AWAITING_CONTROL_PROBE
    assert sorted(monitor._relay) == [("b", "web", "a-de", False), ("b", "web", "a-ke", False)]
