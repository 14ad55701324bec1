"""Verdicts shared through a real PostgreSQL: publication, reading, ownership, election."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from probemesh.collector import shared as shared_mod
from probemesh.collector.database import Database, open_database
from probemesh.collector.reachability import Classifier
from probemesh.collector.shared import Election, SharedVerdicts
from probemesh.collector.state import AgentInfo
from probemesh.collector.verdicts import FleetPublisher, InputBook, Publisher
from tests.collector.mesh_script import ScriptedMesh


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
        inputs = evaluator.read(book)
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
    assert ("web", "a-br") in evaluator.read(book)
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
    assert all(i.fresh for i in evaluator.read(book).values())
    time.sleep(1.5)  # a stopped stamping
    assert not any(i.fresh for i in evaluator.read(book).values())
    mesh.round()  # a steady round publishes nothing but the stamp
    store.publish(publisher.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now))
    assert all(i.fresh for i in evaluator.read(book).values())  # stamped again: alive


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
