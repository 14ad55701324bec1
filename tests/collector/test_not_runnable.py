"""A check an agent refuses by policy is a configuration problem, never an outage.

Results with reason ``policy`` move no result counter, no histogram and no verdict,
only probemesh_probe_refused_total (so every result the agent produced is counted);
/metrics says probemesh_check_not_runnable{rule} instead of probe_success=0,
and the collector predicts refusals from the policy an agent announced.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from probemesh.checks import parse_checks
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.ingest import Ingest
from probemesh.collector.reachability import LOCAL_PROBLEM
from probemesh.collector.remote_results import encode_results
from probemesh.collector.remote_write import decode_request
from probemesh.collector.runnable import not_runnable, predict, refused_everywhere
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.mesh_script import INTERVAL, ScriptedMesh, build_checks
from tests.collector.test_exposition import samples_of
from tests.prometheus.test_remote_write import applied

FLOOR = (
    "interval_floor: interval 1s is below this agent's floor of 5s (--min-interval); check refused"
)
PRIVATE = "private_target: target address 10.0.0.1 is private; start the agent with --allow-private-targets to allow it"


def refused(check: str, ts: float, message: str = PRIVATE) -> pb.Result:
    return pb.Result(
        check=check, target="t", timestamp=ts, success=False, duration_seconds=0.0001,
        reason=pb.FAILURE_REASON_POLICY, message=message,
        samples=[pb.Sample(name="probe_ip_protocol", value=4)],
    )  # fmt: skip


def test_refusals_open_no_incident_and_leave_the_country_unknown() -> None:
    """JP's only agent refuses the check for many rounds: before, this was a
    global outage ("unreachable from 1 country (JP) (global)")."""
    mesh = ScriptedMesh(countries=("JP",))
    agent = mesh.state.agents["a-jp"]
    for _ in range(6):
        mesh.now += INTERVAL
        for check in ("web", "tcp"):
            mesh.state.apply(agent, refused(check, mesh.now - 0.5))
        mesh.monitor.evaluate()
    assert mesh.book.incidents() == []
    assert mesh.view().state == "unknown"
    assert mesh.country_states() == {"JP": "unknown"}
    assert mesh.monitor.snapshot.agent_state("a-jp") != LOCAL_PROBLEM
    tally = mesh.state.tallies[("web", "a-jp")]
    assert (tally.success, tally.failure, tally.reasons) == (0, 0, {})
    assert tally.refused == 6


def test_refusing_agent_is_no_report_among_working_ones() -> None:
    """DE refuses, everyone else sees the check up: ok, and DE is no failing country."""
    mesh = ScriptedMesh()
    de = mesh.state.agents["a-de"]
    for _ in range(4):
        mesh.round(silent=("DE",))
        for check in ("web", "tcp"):
            mesh.state.apply(de, refused(check, mesh.now - 0.5))
        mesh.monitor.evaluate()
    assert mesh.view().state == "ok"
    assert mesh.country_states()["DE"] == "unknown"
    assert mesh.book.incidents() == []
    (entry,) = not_runnable(mesh.state.latest, mesh.state.agents, mesh.checks)["web"]
    assert (entry.agent, entry.rule) == ("a-de", "private_target")
    assert entry.text.startswith("not runnable on agent a-de: private_target (target address")


def _exporter(tmp_path: Path) -> tuple[MeshState, MeshExporter, AgentInfo]:
    checks = parse_checks(
        {
            "modules": {"tcp": {"prober": "tcp"}},
            "checks": [{"name": "db", "target": "10.0.0.1:5432", "module": "tcp"}],
        }
    )
    state = MeshState()
    store = Store(open_database(None, tmp_path))
    ingest = Ingest(state, store, AssignmentHistory(store, checks.digest))
    exporter = MeshExporter(state, ingest, lambda: checks, lambda: 1)
    agent = state.agents["a-de"] = AgentInfo("a-de", "DE", assigned={"db": "10.0.0.1:5432"})
    return state, exporter, agent


def test_metrics_say_not_runnable_instead_of_probe_success(tmp_path: Path) -> None:
    state, exporter, agent = _exporter(tmp_path)
    state.apply(agent, refused("db", 10.0))
    text = exporter.render_bulk().decode()
    assert (
        'probemesh_check_not_runnable{check="db",target="10.0.0.1:5432",agent="a-de",'
        'country="DE",region="",rule="private_target"} 1.0' in text
    )
    for absent in ("probe_success{", "probe_ip_protocol{", "probe_duration_seconds{"):
        assert absent not in text, absent
    counted = [
        line
        for line in text.splitlines()
        if line.startswith(("probemesh_probe_results_total{", "probemesh_probe_failures_total{"))
    ]
    assert all(line.endswith(" 0.0") for line in counted), counted
    assert 'reason="policy"' not in text  # a refusal is no failure
    assert 'probemesh_probe_refused_total{check="db",agent="a-de",country="DE"} 1.0' in text
    assert 'probemesh_probe_duration_seconds_count{check="db",country="DE"} 0.0' in text
    full = CollectorRegistry()
    full.register(exporter)
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    fast = samples_of(text + generate_latest(rest).decode())
    assert fast == samples_of(generate_latest(full).decode())
    # The agent is allowed again: the next result replaces the not-runnable line.
    state.apply(agent, pb.Result(check="db", timestamp=20.0, success=True, duration_seconds=0.01))
    text = exporter.render_bulk().decode()
    assert "probemesh_check_not_runnable{" not in text
    assert 'probe_success{check="db"' in text


@pytest.mark.parametrize(
    ("target", "interval", "floor", "allow", "rule"),
    [
        ("10.0.0.1:80", "30s", 5.0, False, "private_target"),
        ("127.0.0.1:80", "30s", 5.0, False, "private_target"),
        ("localhost:80", "30s", 5.0, False, "private_target"),
        ("[::1]:80", "30s", 5.0, False, "private_target"),
        ("169.254.169.254:80", "30s", 5.0, True, "blocked_address"),
        ("example.org:80", "2s", 5.0, True, "interval_floor"),
        ("10.0.0.1:80", "30s", 5.0, True, None),
        ("example.org:80", "30s", 5.0, False, None),  # a name: only the agent can judge
        ("10.0.0.1:80", "2s", 0.0, None, None),  # an agent that announced nothing
    ],
)
def test_prediction_from_the_announced_policy(
    target: str, interval: str, floor: float, allow: bool | None, rule: str | None
) -> None:
    checks = parse_checks(
        {
            "modules": {"tcp": {"prober": "tcp"}},
            "checks": [{"name": "c", "target": target, "module": "tcp", "interval": interval}],
        }
    )
    agent = AgentInfo("a", "DE", min_interval=floor, allow_private_targets=allow)
    message = predict(checks.checks["c"], agent)
    assert (message.partition(":")[0] if message else None) == rule


def test_prediction_shows_before_the_first_result_and_yields_to_it() -> None:
    checks = build_checks()
    state = MeshState()
    agent = state.agents["a"] = AgentInfo("a", "DE", assigned={"web": checks.checks["web"].target})
    agent.refusals = {"web": FLOOR}
    (entry,) = not_runnable(state.latest, state.agents, checks)["web"]
    assert (entry.rule, entry.detail) == ("interval_floor", FLOOR.partition(": ")[2])
    state.apply(agent, pb.Result(check="web", timestamp=1.0, success=True, duration_seconds=0.1))
    assert not_runnable(state.latest, state.agents, checks) == {}
    agent.assigned = {}
    state.apply(agent, refused("web", 2.0))
    assert not_runnable(state.latest, state.agents, checks) == {}, "no longer assigned"


def test_metadata_literal_is_refused_everywhere() -> None:
    checks = parse_checks(
        {
            "modules": {"http": {"prober": "http"}},
            "checks": [
                {"name": "meta", "target": "http://169.254.169.254/latest/", "module": "http"},
                {"name": "lan", "target": "http://10.0.0.1/", "module": "http"},
                {"name": "name", "target": "http://metadata.example/", "module": "http"},
            ],
        }
    )
    assert list(refused_everywhere(checks)) == ["meta"]


def test_remote_write_sends_not_runnable_instead_of_probe_success() -> None:
    refusal = applied("a-de", "DE", "", [refused("db", 10.0)], ["10.0.0.1:5432"])
    ((body, _),) = encode_results([refusal], {}, 5000)
    (series,) = decode_request(body).timeseries
    labels = {label.name: label.value for label in series.labels}
    assert labels["__name__"] == "probemesh_check_not_runnable"
    assert labels["rule"] == "private_target" and series.samples[0].value == 1.0
