"""The classifier on scripted result sequences: damping, local problems, scope, staleness."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client import CollectorRegistry

from probemesh.collector.api import agents_json
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.verdicts import failure_detail
from probemesh.errors import ConfigError
from tests.collector.mesh_script import (
    COUNTRIES,
    INTERVAL,
    ScriptedMesh,
    build_checks,
    result,
)


def test_flapping_agent_is_damped() -> None:
    mesh = ScriptedMesh()
    for _ in range(3):
        mesh.round()
    assert mesh.view().state == "ok"
    for i in range(10):  # DE alternates fail / success every round
        mesh.round(web={"DE": "500"} if i % 2 == 0 else {})
        assert mesh.country_states()["DE"] == "up", f"round {i}: one failed round flipped DE"
        assert mesh.view().state == "ok"
    assert mesh.book.incidents() == []


def test_two_failed_rounds_make_a_country_down() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    mesh.round(web={"DE": "500"})
    assert mesh.country_states()["DE"] == "up"
    mesh.round(web={"DE": "500"})
    assert mesh.country_states()["DE"] == "down"
    de = next(c for c in mesh.view().countries if c.country == "DE")
    assert (de.agents, de.up, de.ratio, de.reason, de.detail) == (
        1,
        0,
        0.0,
        "http_status",
        "HTTP 500",
    )


def test_first_rounds_are_unknown_until_confirmed() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    assert set(mesh.country_states().values()) == {"unknown"}
    assert mesh.view().state == "unknown"
    mesh.round()
    assert set(mesh.country_states().values()) == {"up"}
    assert mesh.view().state == "ok"


def test_single_agent_uplink_failure_is_a_local_problem_not_an_incident() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    for _ in range(4):  # the agent in UG fails everything; the others see both checks up
        mesh.round(web={"UG": "timeout"}, tcp={"UG": "timeout"})
    assert mesh.monitor.snapshot.agent_state("a-ug") == "local_problem"
    assert mesh.monitor.snapshot.local_problems == {"a-ug"}
    for check in ("web", "tcp"):
        ug = next(c for c in mesh.view(check).countries if c.country == "UG")
        assert (ug.state, ug.agents, ug.excluded) == ("unknown", 0, 1)
        assert mesh.view(check).state == "ok"
    assert mesh.book.incidents() == []
    registry = CollectorRegistry()
    registry.register(_Families(mesh))
    assert (
        registry.get_sample_value(
            "probemesh_country_reachability_ratio", {"check": "web", "country": "UG"}
        )
        is None
    )
    assert (
        registry.get_sample_value("probemesh_outage", {"check": "web", "scope": "regional"}) == 0.0
    )
    flag = {"agent": "a-ug", "country": "UG"}
    assert registry.get_sample_value("probemesh_agent_local_problem", flag) == 1.0
    agents = {a["agent"]: a for a in agents_json(mesh.state, mesh.monitor.snapshot)}
    assert (agents["a-ug"]["local_problem"], agents["a-ug"]["suspect"]) == (True, False)
    assert (agents["a-de"]["local_problem"], agents["a-de"]["suspect"]) == (False, False)
    # recovery clears the flag
    mesh.round()
    mesh.round()
    assert mesh.monitor.snapshot.agent_state("a-ug") == "ok"
    assert mesh.country_states()["UG"] == "up"
    assert registry.get_sample_value("probemesh_agent_local_problem", flag) == 0.0


def test_an_agent_failing_everything_is_suspect_before_it_is_flagged() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    mesh.round(web={"UG": "timeout"}, tcp={"UG": "timeout"})  # first failed round
    assert mesh.monitor.snapshot.agent_state("a-ug") == "suspect"
    ug = next(c for c in mesh.view().countries if c.country == "UG")
    assert (ug.state, ug.agents, ug.excluded, ug.suspects) == ("unknown", 0, 0, 1)
    mesh.round(web={"UG": "timeout"}, tcp={"UG": "timeout"})  # confirmed: flagged
    assert mesh.monitor.snapshot.agent_state("a-ug") == "local_problem"
    ug = next(c for c in mesh.view().countries if c.country == "UG")
    assert (ug.state, ug.agents, ug.excluded, ug.suspects) == ("unknown", 0, 1, 0)
    assert mesh.book.incidents() == []


def test_evaluation_reads_the_mesh_state_and_never_writes_it() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    states = []
    for _ in range(4):  # UG loses its uplink: the verdict on it changes, the state must not
        mesh.now += INTERVAL
        for agent in mesh.state.agents.values():
            for check in ("web", "tcp"):
                mode = "timeout" if agent.country == "UG" else ""
                mesh.state.apply(agent, result(check, mesh.now - 0.5, mode))
        agents = {k: dataclasses.asdict(v) for k, v in mesh.state.agents.items()}
        latest = {k: dataclasses.astuple(v) for k, v in mesh.state.latest.items()}
        mesh.monitor.evaluate()
        assert {k: dataclasses.asdict(v) for k, v in mesh.state.agents.items()} == agents
        assert {k: dataclasses.astuple(v) for k, v in mesh.state.latest.items()} == latest
        states.append(mesh.monitor.snapshot.agent_state("a-ug"))
    assert states[-1] == "local_problem"


def test_country_outage_of_one_check_is_not_a_local_problem() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    for _ in range(3):  # DE fails web only: half of its checks, not "nearly everything"
        mesh.round(web={"DE": "timeout"})
    assert mesh.monitor.snapshot.agent_state("a-de") == "ok"
    assert mesh.country_states()["DE"] == "down"


def test_one_of_eight_countries_down_is_regional() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    mesh.round(web={"LT": "500"})
    mesh.round(web={"LT": "500"})
    view = mesh.view()
    assert view.state == "regional_outage"
    assert view.down == {"LT"}
    registry = CollectorRegistry()
    registry.register(_Families(mesh))
    assert (
        registry.get_sample_value("probemesh_outage", {"check": "web", "scope": "regional"}) == 1.0
    )
    assert registry.get_sample_value("probemesh_outage", {"check": "web", "scope": "global"}) == 0.0
    assert (
        registry.get_sample_value(
            "probemesh_country_reachability_ratio", {"check": "web", "country": "LT"}
        )
        == 0.0
    )
    assert (
        registry.get_sample_value(
            "probemesh_country_reachability_ratio", {"check": "web", "country": "JP"}
        )
        == 1.0
    )
    assert mesh.view("tcp").state == "ok"


def test_all_countries_down_is_global() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    everyone = dict.fromkeys(COUNTRIES, "500")
    mesh.round(web=everyone)
    mesh.round(web=everyone)
    assert mesh.view().state == "global_outage"
    # every agent fails web, nobody sees it up: no local problem anywhere
    assert mesh.monitor.snapshot.local_problems == frozenset()


def test_global_share_is_configurable() -> None:
    mesh = ScriptedMesh(outage={"global_share": 0.5})
    mesh.round()
    mesh.round()
    half = dict.fromkeys(COUNTRIES[:4], "timeout")
    mesh.round(web=half)
    mesh.round(web=half)
    assert mesh.view().state == "global_outage"


def test_confirm_rounds_is_configurable() -> None:
    mesh = ScriptedMesh(outage={"confirm_rounds": 3})
    for _ in range(3):
        mesh.round()
    mesh.round(web={"DE": "500"})
    mesh.round(web={"DE": "500"})
    assert mesh.country_states()["DE"] == "up"
    mesh.round(web={"DE": "500"})
    assert mesh.country_states()["DE"] == "down"


def test_degraded_when_a_minority_of_agents_fail() -> None:
    mesh = ScriptedMesh(countries=("US",))
    for n in (2, 3):
        mesh.state.agents[f"a-us{n}"] = AgentInfo(
            f"a-us{n}", "US", assigned={n: c.target for n, c in mesh.checks.checks.items()}
        )
    mesh.round()
    mesh.round()
    ts = mesh.now
    for _ in range(2):
        ts += INTERVAL
        mesh.now = ts
        for agent in mesh.state.agents.values():
            mode = "500" if agent.agent_id == "a-us" else ""
            mesh.state.apply(agent, result("web", ts - 0.5, mode))
            mesh.state.apply(agent, result("tcp", ts - 0.5, ""))
        mesh.monitor.evaluate()
    us = next(c for c in mesh.view().countries if c.country == "US")
    assert (us.state, us.agents, us.up) == ("degraded", 3, 2)
    assert mesh.view().state == "ok"


def test_stale_results_make_a_country_unknown() -> None:
    mesh = ScriptedMesh()
    mesh.round()
    mesh.round()
    mesh.round(silent=("JP",))
    assert mesh.country_states()["JP"] == "up"  # one interval old: still fresh
    mesh.round(silent=("JP",))
    mesh.round(silent=("JP",))
    assert mesh.country_states()["JP"] == "unknown"  # older than two intervals
    assert mesh.view().state == "ok"


def test_failure_detail_names_http_status() -> None:
    state = MeshState()
    agent = AgentInfo("a-de", "DE", assigned={"web": "t", "tcp": "t"})
    state.apply(agent, result("web", 1.0, "503"))
    state.apply(agent, result("tcp", 1.0, "timeout"))
    assert failure_detail(state.latest[("web", "a-de")]) == ("http_status", "HTTP 503")
    assert failure_detail(state.latest[("tcp", "a-de")]) == ("timeout", "timeout")


def test_outage_section_rejects_unknown_and_bad_thresholds() -> None:
    with pytest.raises(ConfigError, match="unknown field 'down_ratio'"):
        build_checks({"down_ratio": 0.5})
    with pytest.raises(ConfigError, match="global_share"):
        build_checks({"global_share": 0})
    with pytest.raises(ConfigError, match="confirm_rounds"):
        build_checks({"confirm_rounds": 0})
    assert build_checks(None).outage.confirm_rounds == 2


class _Families:
    """Adapts the monitor's metric families to a registry collector."""

    def __init__(self, mesh: ScriptedMesh) -> None:
        self.mesh = mesh

    def collect(self):  # type: ignore[no-untyped-def]
        return self.mesh.monitor.metric_families()
