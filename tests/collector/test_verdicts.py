"""The split of the classifier: serving collectors publish inputs, the evaluator judges them."""

from __future__ import annotations

import json
import sys

from probemesh.collector.alertmanager import AlertmanagerNotifier
from probemesh.collector.diagnosis import Diagnosis, PathHop
from probemesh.collector.evaluation_doc import from_doc, to_doc
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.notify import Notifications
from probemesh.collector.reachability import Classifier
from probemesh.collector.runnable import not_runnable
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.verdicts import InputBook, Publisher
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.mesh_script import COUNTRIES, INTERVAL, ScriptedMesh, build_checks, result


def _observe(publisher: Publisher, mesh: ScriptedMesh) -> tuple[set[str], list[str]]:
    pub = publisher.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now)
    return {f"{p.check}/{p.agent}" for p in pub.changed}, [f"{c}/{a}" for c, a in pub.removed]


def test_a_steady_mesh_publishes_only_flips() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US"))
    publisher = Publisher()
    changed, _ = _observe(publisher, mesh)
    assert changed == {f"{c}/a-{cc}" for c in ("web", "tcp") for cc in ("br", "de", "us")}
    assert {p.success for p in publisher.published.values()} == {None}  # assigned, unheard
    mesh.round()
    assert len(_observe(publisher, mesh)[0]) == 6  # first results: raw success, streak 1
    mesh.round()
    assert len(_observe(publisher, mesh)[0]) == 6  # streak 2 confirms every pair
    for _ in range(5):
        mesh.round()
        assert _observe(publisher, mesh) == (set(), [])  # steady: nothing to publish
    mesh.round(web={"BR": "500"})
    changed, _ = _observe(publisher, mesh)
    assert changed == {"web/a-br"}
    web_br = publisher.published[("web", "a-br")]
    assert (web_br.success, web_br.confirmed, web_br.detail) == (False, True, "HTTP 500")
    mesh.round(web={"BR": "500"})
    assert _observe(publisher, mesh)[0] == {"web/a-br"}
    assert publisher.published[("web", "a-br")].confirmed is False
    mesh.round(web={"BR": "500"})
    assert _observe(publisher, mesh) == (set(), [])
    mesh.state.forget_agent("a-de")  # gone longer than the series TTL
    assert _observe(publisher, mesh) == (set(), ["web/a-de", "tcp/a-de"])


def test_the_stamp_going_stale_is_a_flip() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE"))
    publisher = Publisher()
    for _ in range(3):
        mesh.round()
        _observe(publisher, mesh)
    mesh.round(silent=("BR",))
    assert _observe(publisher, mesh) == (set(), [])  # one missed round is still fresh
    mesh.round(silent=("BR",))
    changed, _ = _observe(publisher, mesh)
    assert changed == {"web/a-br", "tcp/a-br"}
    assert not publisher.published[("web", "a-br")].fresh


def test_a_pair_due_to_go_stale_is_published_without_a_visit_from_its_feed() -> None:
    """Given the state's change feed, a round visits only the pairs it names
    and those due to go stale: a silent agent's pairs still turn stale in the
    round a pass over every pair turns them, a clock that goes back makes them
    fresh again, and a forgotten track is taken up again, as without a feed."""
    mesh = ScriptedMesh(countries=("BR", "DE"))
    fed, whole = Publisher(mesh.state.feed()), Publisher()

    def both() -> tuple[set[str], list[str]]:
        seen = _observe(fed, mesh)
        assert seen == _observe(whole, mesh)
        assert fed.published == whole.published
        return seen

    for _ in range(3):
        mesh.round()
        both()
    mesh.round(silent=("BR",))
    assert both() == (set(), [])  # one missed round is still fresh
    mesh.now += 1.0
    assert both() == (set(), [])
    mesh.round(silent=("BR",))
    assert both() == ({"web/a-br", "tcp/a-br"}, [])  # due: no result, no feed entry
    assert not fed.published[("web", "a-br")].fresh
    mesh.now -= INTERVAL  # the clock goes back: fresh again
    assert both() == ({"web/a-br", "tcp/a-br"}, [])
    assert fed.published[("web", "a-br")].fresh
    mesh.now += INTERVAL
    both()
    for publisher in (fed, whole):  # a-de reconnected: its tracks start over
        publisher.forget_agents({"a-de"})
    both()
    assert fed._track(("web", "a-de")) is not None
    mesh.round(silent=("BR", "DE"))
    mesh.round(silent=("BR", "DE"))
    assert both() == ({"web/a-de", "tcp/a-de"}, [])  # its taken-up track went stale too


class SplitMesh:
    """The scripted mesh's agents served by two collectors whose inputs meet in one evaluator."""

    def __init__(self, outage: dict[str, float] | None = None) -> None:
        self.whole = ScriptedMesh(outage=outage)  # one collector serving everyone: the reference
        self.checks = build_checks(outage)
        self.states = (MeshState(), MeshState())
        self.publishers = (Publisher(), Publisher())
        for i, cc in enumerate(COUNTRIES):
            info = self.whole.state.agents[f"a-{cc.lower()}"]
            self.states[i % 2].agents[info.agent_id] = AgentInfo(
                info.agent_id, cc, connected=True, assigned=dict(info.assigned)
            )
        self.inputs = InputBook()
        self.classifier = Classifier()
        self.book = IncidentBook()

    def round(self, **modes: dict[str, str]) -> None:
        self.whole.round(**modes)
        now = self.whole.now
        for state in self.states:
            for agent in state.agents.values():
                for check in ("web", "tcp"):
                    failing = modes.get(check, {})
                    state.apply(agent, result(check, now - 0.5, failing.get(agent.country, "")))
        for state, publisher in zip(self.states, self.publishers, strict=True):
            self.inputs.apply(publisher.observe(state.latest, self.checks, state.agents, now))
        snapshot = self.classifier.evaluate(self.inputs.inputs, self.checks, now)
        self.book.update(snapshot, self.checks)
        reference = self.whole.monitor.snapshot
        assert snapshot.checks == reference.checks
        assert snapshot.agents == reference.agents


def test_two_publishers_give_the_verdicts_of_one_collector() -> None:
    mesh = SplitMesh()
    for _ in range(3):
        mesh.round()
    for _ in range(4):  # UG loses its uplink (a local problem), BR and PH lose the target
        mesh.round(web={"UG": "timeout", "BR": "500", "PH": "500"}, tcp={"UG": "timeout"})
    assert mesh.whole.monitor.snapshot.local_problems == {"a-ug"}
    assert mesh.whole.view().down == {"BR", "PH"}
    for _ in range(4):
        mesh.round()
    ours = [i.to_json() for i in mesh.book.incidents()]
    theirs = [i.to_json() for i in mesh.whole.book.incidents()]
    assert ours == theirs and len(ours) == 1
    assert ours[0]["peak_countries"] == ["BR", "PH"] and ours[0]["ended_at"] is not None


def test_an_agent_that_moves_keeps_its_confirmed_verdict() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US"))
    first = Publisher()
    for _ in range(3):
        mesh.round(web={"BR": "timeout"})
        first.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now)
    assert first.published[("web", "a-br")].confirmed is False
    second = Publisher()  # another collector; the agent's next result arrives there
    mesh.round(web={"BR": "timeout"})
    assert second.new_pairs(mesh.state.latest, mesh.checks)
    second.resume(first.published.values())
    second.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now)
    assert second.published[("web", "a-br")].confirmed is False
    assert second.published[("web", "a-de")].confirmed is True
    fresh = Publisher()  # without resuming, the verdict would start over
    fresh.observe(mesh.state.latest, mesh.checks, mesh.state.agents, mesh.now)
    assert fresh.published[("web", "a-br")].confirmed is None


def test_published_inputs_are_keyed_by_the_pair_tuple_of_the_mesh_state() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE"))
    publisher = Publisher()
    _observe(publisher, mesh)  # assigned, not heard yet
    mesh.round()
    _observe(publisher, mesh)
    assert {p.success for p in publisher.published.values()} == {True}
    assert {id(key) for key in publisher.published} == {id(key) for key in mesh.state.tallies}


def test_the_monitor_evaluates_what_it_publishes() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US"))
    monitor: OutageMonitor = mesh.monitor
    mesh.round()
    mesh.round(web={"BR": "500"})
    published = monitor.publisher.published
    assert {p.success for p in published.values()} == {True, False}
    assert monitor.classifier._seen == published  # alone: judged as published, no copy
    assert not monitor.inputs.inputs


def _families(monitor: OutageMonitor) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in monitor.metric_families()}


def test_the_outage_gauges_come_from_the_evaluator_alone() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US"))
    for _ in range(3):
        mesh.round(web={"BR": "500"})
    alone = _families(mesh.monitor)  # a collector alone is always the evaluator
    assert alone["probemesh_evaluator"] == [({}, 1.0)]
    assert ({"check": "web", "scope": "regional"}, 1.0) in alone["probemesh_outage"]
    assert alone["probemesh_country_reachability_ratio"]
    assert len(alone["probemesh_agent_local_problem"]) == 3
    assert alone["probemesh_outage_round_seconds"][1][0] == {"part": "publish"}
    mesh.monitor.is_evaluator = False  # another collector of the mesh was elected
    follower = _families(mesh.monitor)
    assert follower["probemesh_evaluator"] == [({}, 0.0)]
    assert [labels for labels, _ in follower["probemesh_outage_round_seconds"]] == [
        {"part": "publish"}
    ]
    assert set(follower) == {"probemesh_evaluator", "probemesh_outage_round_seconds"}


def test_a_collector_that_stops_evaluating_stops_resending_its_alerts() -> None:
    mesh = ScriptedMesh(countries=("BR", "DE", "US"))
    alertmanager = AlertmanagerNotifier(["http://127.0.0.1:9/"])
    mesh.monitor.notifications = Notifications(mesh.book, [alertmanager])
    for _ in range(3):
        mesh.round(web={"BR": "500"})
    [alert] = alertmanager.payload()
    assert alert["labels"]["check"] == "web"
    mesh.monitor.notifications.stand_by()  # demoted: the new evaluator posts the set now
    assert alertmanager.payload() == []


def test_refusals_are_published_and_served_from_the_evaluation() -> None:
    mesh = ScriptedMesh(countries=("BR", "JP"))
    jp = mesh.state.agents["a-jp"]
    mesh.now += 10.0
    message = "interval_floor: interval 10s is below this agent's floor of 60s (--min-interval)"
    mesh.state.apply(
        jp,
        pb.Result(
            check="web", target="t", timestamp=mesh.now, reason=pb.FAILURE_REASON_POLICY,
            message=message,
        ),
    )  # fmt: skip
    jp.refusals["web"] = message
    mesh.monitor.evaluate()
    [refusal] = mesh.monitor.refusals["web"]
    assert (refusal.agent, refusal.country, refusal.rule) == ("a-jp", "JP", "interval_floor")
    assert mesh.monitor.refusals == not_runnable(mesh.state.latest, mesh.state.agents, mesh.checks)
    doc = json.loads(json.dumps(to_doc(mesh.monitor.snapshot, {}, mesh.monitor.refusals)))
    assert from_doc(doc)[2] == mesh.monitor.refusals  # what the other collectors serve


def test_an_evaluation_reads_back_as_it_was_stored() -> None:
    mesh = ScriptedMesh()
    for _ in range(3):
        mesh.round()
    for _ in range(4):  # UG's agent has a local problem, BR is down
        mesh.round(web={"UG": "timeout", "BR": "500"}, tcp={"UG": "timeout"})
    diagnoses = {
        "web": {
            "BR": Diagnosis(
                "path", "path lost after 10.0.0.1", "10.0.0.1", 64500,
                (PathHop(1, "10.0.0.1", 0.001, 64500), PathHop(2, "", 0.0, None)),
            )
        }
    }  # fmt: skip
    snapshot = mesh.monitor.snapshot
    doc = json.loads(json.dumps(to_doc(snapshot, diagnoses, {})))
    back, back_diagnoses, _ = from_doc(doc)
    assert back.checks == snapshot.checks and back.at == snapshot.at
    assert back.local_problems == {"a-ug"} == snapshot.local_problems
    assert {a: back.agent_state(a) for a in mesh.state.agents} == {
        a: snapshot.agent_state(a) for a in mesh.state.agents
    }
    assert back_diagnoses == diagnoses


def test_pairs_heard_at_last_leave_the_input_tables_sized_for_them() -> None:
    """Every assigned pair is published unheard, then keyed anew by MeshState's tuple
    once heard, here over several rounds as agents report: the tables of inputs must
    not keep twice the size their entries need (a dict copy of a table that sparse is
    smaller; of a compact one, the same)."""
    countries = tuple(f"C{i:04d}" for i in range(2600))
    mesh = ScriptedMesh(countries=countries)
    mesh.monitor.evaluate()  # every pair assigned, none heard
    for quarter in range(1, 5):
        mesh.round(silent=countries[quarter * 650 :])
    mesh.round()  # nothing keyed anew
    published, seen = mesh.monitor.publisher.published, mesh.monitor.classifier._seen
    assert len(published) == len(seen) == 5200
    assert {p.success for p in seen.values()} == {True}
    assert sys.getsizeof(published) == sys.getsizeof(dict(published))
    assert sys.getsizeof(seen) == sys.getsizeof(dict(seen))
