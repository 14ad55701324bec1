"""The assignment history and the checks revision, on the real SQLite store:
what survives a restart, how results are judged, and what pruning forgets."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from pathlib import Path

import pytest

from probemesh.checks import ChecksFile, parse_checks
from probemesh.collector.assignments import PRUNE_MARGIN, AssignmentHistory, _log_failure
from probemesh.collector.database import open_database
from probemesh.collector.ingest import Ingest, _Item
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

DAY = 86400.0


def checks(*entries: tuple[str, str, str]) -> ChecksFile:
    """A checks file of (name, target, countries) entries; "" means every agent."""
    return parse_checks(
        {
            "modules": {"tcp": {"prober": "tcp"}, "tcp4": {"prober": "tcp"}},
            "checks": [
                {"name": n, "target": t, "module": "tcp", **({"countries": [c]} if c else {})}
                for n, t, c in entries
            ],
        }
    )


V1 = checks(("web", "a.example:80", ""), ("api", "b.example:80", ""), ("de", "c.example:80", "DE"))
V2 = checks(("web", "z.example:80", ""), ("de", "c.example:80", "FR"))  # re-target, remove, narrow


def send(history: AssignmentHistory, agent: str, file: ChecksFile, now: float) -> None:
    history.record(agent, history.revision, file.for_agent(agent, "DE"), 7 * DAY, now)


def test_revision_is_persistent_and_strictly_increasing(tmp_path: Path) -> None:
    first = AssignmentHistory(Store(open_database(None, tmp_path)), V1.digest)
    assert first.revision == 1
    assert first.new_revision(V1.digest) == 1, "an unchanged file keeps its revision"
    assert first.new_revision(V2.digest) == 2
    restarted = AssignmentHistory(Store(open_database(None, tmp_path)), V2.digest)
    assert restarted.revision == 2, "a restart on the same file keeps its revision"
    edited_while_down = AssignmentHistory(Store(open_database(None, tmp_path)), V1.digest)
    assert edited_while_down.revision == 3, "a file back to an old content is a new revision"
    assert AssignmentHistory(Store(open_database(None, tmp_path)), V1.digest).revision == 3


def test_results_are_judged_by_the_revision_they_name_across_a_restart(tmp_path: Path) -> None:
    history = AssignmentHistory(Store(open_database(None, tmp_path)), V1.digest)
    send(history, "vps-1", V1, now=1000.0)
    history.new_revision(V2.digest)
    send(history, "vps-1", V2, now=2000.0)
    history = AssignmentHistory(
        Store(open_database(None, tmp_path)), V2.digest
    )  # restart: all from the database
    now = {"web": "z.example:80"}
    assert history.target_of("vps-1", "web", 1, "a.example:80", now) == "a.example:80"
    assert history.target_of("vps-1", "web", 2, "z.example:80", now) == "z.example:80"
    assert history.target_of("vps-1", "api", 1, "b.example:80", now) == "b.example:80"
    assert history.target_of("vps-1", "de", 1, "c.example:80", now) == "c.example:80"
    assert history.target_of("vps-1", "api", 2, "b.example:80", now) is None, "removed in 2"
    assert history.target_of("vps-1", "de", 2, "c.example:80", now) is None, "narrowed in 2"
    assert history.target_of("vps-1", "nope", 1, "", now) is None, "never assigned"
    assert history.target_of("vps-2", "web", 1, "a.example:80", now) is None, "other agent"


def test_an_untagged_result_is_judged_by_the_current_assignment(tmp_path: Path) -> None:
    """Revision 0 (an agent that does not tag) or one this collector never issued."""
    history = AssignmentHistory(Store(open_database(None, tmp_path)), V1.digest)
    send(history, "vps-1", V1, now=1000.0)
    history.new_revision(V2.digest)
    send(history, "vps-1", V2, now=2000.0)
    now = {"web": "z.example:80"}
    for revision in (0, 99):
        assert history.target_of("vps-1", "web", revision, "z.example:80", now) == "z.example:80"
        assert history.target_of("vps-1", "web", revision, "a.example:80", now) == "a.example:80"
        assert history.target_of("vps-1", "api", revision, "b.example:80", now) == "b.example:80"
        assert history.target_of("vps-1", "nope", revision, "", now) is None


def test_pruning_follows_the_agents_queue_max_age(tmp_path: Path) -> None:
    store = Store(open_database(None, tmp_path))
    history = AssignmentHistory(store, V1.digest)
    history.record("short", 1, V1.for_agent("short", "DE"), 3600.0, now=0.0)
    history.record("long", 1, V1.for_agent("long", "DE"), 0.0, now=0.0)  # not announced: 7 d
    history.new_revision(V2.digest, now=10.0)
    history.record("short", 2, V2.for_agent("short", "DE"), 3600.0, now=10.0)
    history.record("long", 2, V2.for_agent("long", "DE"), 0.0, now=10.0)
    spans = history.span_count()
    assert history.prune(now=10.0 + 3600.0 + PRUNE_MARGIN - 1) == 0
    # The short agent's closed spans (web@a, api, de) go; the open ones stay.
    assert history.prune(now=10.0 + 3600.0 + PRUNE_MARGIN + 1) == 3
    assert history.target_of("short", "api", 1, "b.example:80", {}) is None
    assert history.target_of("long", "api", 1, "b.example:80", {}) == "b.example:80"
    assert history.prune(now=10.0 + 7 * DAY + PRUNE_MARGIN + 1) == 3
    assert history.span_count() == spans - 6 == 2  # web@z for both agents, still assigned
    reopened = AssignmentHistory(Store(open_database(None, tmp_path)), V2.digest)
    assert reopened.span_count() == 2, "pruning is persisted"
    assert reopened.revision == 2
    rows = store.db.execute("SELECT revision FROM revisions").fetchall()
    assert rows == [(2,)], "revisions no span refers to are pruned, the newest stays"


def test_ingest_counts_late_results_and_rejects_the_never_assigned(tmp_path: Path) -> None:
    """The applier on the real store: a backlog of revision 1 after the file moved to 2."""
    store = Store(open_database(None, tmp_path))
    history = AssignmentHistory(store, V1.digest)
    state = MeshState()
    ingest = Ingest(state, store, history)
    agent = state.agents["vps-1"] = AgentInfo("vps-1", "DE")
    history.record("vps-1", 1, V1.for_agent("vps-1", "DE"), 0.0, now=1.0)
    history.new_revision(V2.digest)
    specs = V2.for_agent("vps-1", "DE")
    history.record("vps-1", 2, specs, 0.0)
    agent.assigned, agent.revision = {s.name: s.target for s in specs}, 2
    state.configured = frozenset(V2.checks)

    def result(check: str, revision: int, target: str, ts: float) -> pb.Result:
        return pb.Result(check=check, revision=revision, target=target, timestamp=ts,
                         success=True, duration_seconds=0.01)  # fmt: skip

    results = [
        result("web", 2, "z.example:80", 500.0),  # live
        result("web", 1, "a.example:80", 400.0),  # re-targeted, older
        result("web", 1, "a.example:80", 600.0),  # re-targeted, newer than the live one
        result("api", 1, "b.example:80", 400.0),  # removed
        result("de", 1, "c.example:80", 400.0),  # narrowed away
        result("api", 2, "b.example:80", 400.0),  # not assigned at 2
        result("nope", 1, "", 400.0),  # never assigned
    ]
    batch = pb.ResultBatch(first_seq=1, last_seq=len(results), floor_seq=1, results=results)
    epoch = asyncio.run(ingest.take_lease(agent))
    asyncio.run(ingest._apply_group([_Item(Session(agent, "t", epoch), batch)]))
    counted = {check: tally.success for (check, _), tally in state.tallies.items()}
    assert counted == {"web": 3, "api": 1, "de": 1}
    assert +ingest.rejected == {"not_assigned": 2}  # the reasons that counted anything
    latest = state.latest[("web", "vps-1")]
    assert (latest.timestamp, latest.target) == (500.0, "z.example:80"), (
        "an old target's result never becomes the latest of the new one"
    )
    assert ("api", "vps-1") not in state.latest and ("de", "vps-1") not in state.latest
    assert set(state.lingering) == {"api"}, "the removed check's series stay exported"
    persisted = Store(open_database(None, tmp_path)).load_counters()
    assert persisted[("results", "api", "vps-1", "DE", "success")] == 1


def test_gauges_of_a_check_narrowed_away_expire_like_a_gone_agents() -> None:
    state = MeshState()
    agent = state.agents["vps-1"] = AgentInfo("vps-1", "DE")
    state.assign(agent, {"web": "a.example:80", "de": "c.example:80"}, 1)
    for check in ("web", "de"):
        state.apply(agent, pb.Result(check=check, timestamp=100.0, success=True))
    state.assign(agent, {"web": "a.example:80"}, 2)  # "de" narrowed away
    state.forget_unassigned(horizon=50.0)
    assert ("de", "vps-1") in state.latest, "kept until --series-ttl has passed"
    state.forget_unassigned(horizon=150.0)
    assert set(state.latest) == {("web", "vps-1")}, "only the narrowed check's gauges go"
    assert state.tallies[("de", "vps-1")].success == 1, "its counters stay"
    assert not state.unassigned


def test_a_write_cancelled_with_its_stream_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """A stream that ends while its history write waits cancels the write; the
    done callback must not raise (concurrent.futures would log a traceback)."""
    future: Future[object] = Future()
    future.add_done_callback(_log_failure)
    with caplog.at_level(logging.ERROR):
        assert future.cancel()
    assert caplog.records == []
    failed: Future[object] = Future()
    failed.add_done_callback(_log_failure)
    with caplog.at_level(logging.ERROR):
        failed.set_exception(OSError("disk full"))
    assert "could not write the assignment history: disk full" in caplog.text


def test_agents_sent_the_same_checks_share_spans_yet_change_alone(tmp_path: Path) -> None:
    store = Store(open_database(None, tmp_path))
    history = AssignmentHistory(store, V1.digest)
    for agent in ("vps-1", "vps-2"):
        history.record(agent, 1, V1.for_agent(agent, "DE"), 0.0, now=1000.0)
    assert history.spans["vps-1"]["web"] is history.spans["vps-2"]["web"]
    assert history.spans["vps-1"] is history.spans["vps-2"], "one map of spans for both"
    history.new_revision(V2.digest)
    history.record("vps-1", 2, V2.for_agent("vps-1", "DE"), 0.0, now=2000.0)
    assert history.spans["vps-1"] is not history.spans["vps-2"], "a change is vps-1's alone"
    # vps-2 was not sent revision 2: what it was sent at 1 stays open
    assert all(spans[-1].closed_at is None for spans in history.spans["vps-2"].values())
    assert history.target_of("vps-2", "web", 1, "a.example:80", {}) == "a.example:80"
    assert history.target_of("vps-1", "api", 2, "b.example:80", {}) is None
    assert history.spans["vps-1"]["api"][-1].closed_at == 2000.0
    history.record("vps-2", 2, V2.for_agent("vps-2", "DE"), 0.0, now=2000.0)
    assert history.spans["vps-1"]["web"] is history.spans["vps-2"]["web"]
    reopened = AssignmentHistory(Store(open_database(None, tmp_path)), V2.digest)
    assert reopened.spans == history.spans, "every change is persisted"
    assert reopened.spans["vps-1"]["web"] is reopened.spans["vps-2"]["web"]


def test_agents_sent_the_same_checks_share_one_assignment_yet_change_alone() -> None:
    state = MeshState()
    one, two = (AgentInfo(agent, "DE") for agent in ("vps-1", "vps-2"))
    state.assign(one, {"web": "a.example:80", "api": "b.example:80"}, 1)
    state.assign(two, {"api": "b.example:80", "web": "a.example:80"}, 1)
    assert one.assigned is two.assigned, "one dict for agents sent the same checks"
    state.assign(two, {"web": "a.example:80"}, 1)
    assert one.assigned == {"web": "a.example:80", "api": "b.example:80"}, "vps-1's stays"
    assert two.assigned == {"web": "a.example:80"}
    assert state.unassigned == {("api", "vps-2")}
    state.assign(one, {"web": "a.example:80"}, 2)
    assert one.assigned == two.assigned and one.revision == 2


def test_agents_that_come_and_go_leave_no_assignment_behind() -> None:
    """Agents each sent checks of their own, connecting and forgotten in turn: the
    shared assignments of the revision hold only about what live agents hold."""
    state = MeshState()
    for n in range(300):
        agent = state.agents[f"vps-{n}"] = AgentInfo(f"vps-{n}", "DE")
        state.assign(agent, {"web": f"host-{n}.example:80"}, 1)
        if n >= 5:
            del state.agents[f"vps-{n - 5}"]  # gone, as forget_agent drops it
    assert state._assignments_kept <= 2 * len(state.agents) + 17
    again = AgentInfo("vps-again", "DE")
    state.agents["vps-again"] = again
    state.assign(again, {"web": "host-299.example:80"}, 1)
    assert again.assigned is state.agents["vps-299"].assigned, "live agents' dicts still shared"
