"""Editing the checks file never loses a result that was already produced.

Two agents buffer while they cannot reach the collector. Meanwhile the checks
file is edited in all three ways at once: a check is narrowed away from one
agent, one is re-targeted, one is removed. The agents then replay results
produced under the old revision. Every one must be counted, exactly once, per
agent, with nothing rejected: the collector judges each result by the revision
it names, from an assignment history kept in its database.

The edit is applied three ways: by a collector restart on the edited file; by
SIGHUP while the agents are still cut off; and by a restart followed by two
more SIGKILLs of the collector in the middle of the replay.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator

import pytest

from tests.durability.common import (
    DEPTH,
    DROPPED,
    PRODUCED,
    RESULTS,
    AgentRef,
    Relay,
    assert_disk_matches,
    assert_exact_accounting,
    checks_yaml,
    quiesce,
)
from tests.durability.conftest import StartAgent
from tests.harness import Mesh, total, wait_for

AGENTS = (("rev-de", "DE"), ("rev-fr", "FR"))
MODULES = "modules: {tcp: {prober: tcp, timeout: 1s, tcp: {preferred_ip_protocol: ip4}}}\n"


def checks_file(*checks: tuple[str, str, str]) -> str:
    """tcp checks every 100 ms, each (name, target, selector)."""
    return (
        MODULES
        + "checks:\n"
        + "".join(
            f'  - {{name: {name}, target: "{target}", module: tcp, interval: 100ms{selector}}}\n'
            for name, target, selector in checks
        )
    )


def before_edit(open_target: str, closed_target: str) -> str:
    return checks_file(
        ("keep", open_target, ""),
        ("narrow", open_target, ", countries: [DE, FR]"),
        ("retarget", open_target, ""),
        ("remove", closed_target, ""),
    )


def after_edit(open_target: str, closed_target: str) -> str:
    """narrow leaves DE, retarget moves to a closed port (failures), remove is gone."""
    return checks_file(
        ("keep", open_target, ""),
        ("narrow", open_target, ", countries: [FR]"),
        ("retarget", closed_target, ""),
    )


def stored_counts(mesh: Mesh) -> dict[tuple[str, str, str], int]:
    """(check, agent, result) -> count, as committed in the collector's database."""
    db = sqlite3.connect(mesh.data_dir / "collector.sqlite3", timeout=10)
    try:
        rows = db.execute("SELECT key, value FROM counters").fetchall()
    finally:
        db.close()
    counts = {}
    for key, value in rows:
        kind, check, agent, _country, label = json.loads(key)
        if kind == "results":
            counts[(check, agent, label)] = value
    return counts


def late(mesh: Mesh, at_edit: dict[tuple[str, str, str], int]) -> dict[str, float]:
    """Results the collector counted since the edit that only the backlog can hold.

    After the edit nothing produces "remove" anywhere or "narrow" on rev-de,
    and "retarget" only fails (its new target is closed): every success of
    it since then ran against the old target.
    """
    samples = mesh.metrics()
    wanted = {
        "remove": ("remove", None, "failure"),
        "narrow@rev-de": ("narrow", "rev-de", "success"),
        "retarget(old target)": ("retarget", None, "success"),
    }
    out = {}
    for name, (check, agent, result) in wanted.items():
        agents = [agent] if agent else [a for a, _ in AGENTS]
        out[name] = sum(
            total(samples, RESULTS, check=check, agent=a, result=result)
            - at_edit.get((check, a, result), 0)
            for a in agents
        )
    return out


@pytest.fixture
def relay(mesh: Mesh) -> Iterator[Relay]:
    server = Relay(mesh.grpc_port)
    yield server
    server.close()


@pytest.mark.parametrize("how", ["restart", "sighup_while_cut_off", "restarts_during_replay"])
def test_edited_checks_never_lose_buffered_results(
    how: str,
    mesh: Mesh,
    start_agent: StartAgent,
    targets: tuple[str, str],
    relay: Relay,
) -> None:
    open_target, closed_target = targets
    mesh.checks_yaml = before_edit(open_target, closed_target)
    mesh.start_collector()
    via = f"127.0.0.1:{relay.port}"
    agents = [start_agent(agent_id, cc, collectors=via) for agent_id, cc in AGENTS]
    for agent in agents:
        wait_for(
            lambda a=agent: total(a.metrics(), "probemesh_agent_checks") == 4,  # type: ignore[misc]
            20,
            f"{agent.agent_id} running its 4 checks",
        )
    time.sleep(1.0)
    assert mesh.collector is not None
    # Cut the agents off; they buffer what they produce under revision 1.
    if how == "sighup_while_cut_off":
        relay.cut()
        for agent in agents:
            wait_for(
                lambda a=agent: (
                    total(mesh.metrics(), "probemesh_agent_connected", agent=a.agent_id) == 0
                ),  # type: ignore[misc]
                20,
                f"{agent.agent_id} cut off",
            )
    elif how == "restart":
        mesh.collector.stop()
    else:
        mesh.collector.kill()
    at_edit = stored_counts(mesh)
    buffering = 6.0 if how == "restarts_during_replay" else 3.0
    time.sleep(buffering)
    backlog = sum(total(a.metrics(), DEPTH) for a in agents)
    assert backlog > 100, f"the agents should hold a backlog, not {backlog}"
    mesh.checks_yaml = after_edit(open_target, closed_target)
    if how == "sighup_while_cut_off":
        mesh.checks_path.write_text(mesh.checks_yaml)
        mesh.collector.signal(signal.SIGHUP)
        wait_for(lambda: "revision 2" in mesh.collector.log(), 10, "the reload")  # type: ignore[union-attr]
        time.sleep(1.0)  # still cut off, past the reload
        relay.heal()
    elif how == "restart":
        mesh.start_collector()
    else:
        relay.rate = 12_000  # bytes/s per agent: the replay takes several seconds
        mesh.start_collector()
        for kill in (1, 2):
            # Under way: results flow in while the agents still hold a backlog. (Which
            # results the backlog holds by then, late ones or not, depends on timing.)
            start = total(mesh.metrics(), "probemesh_probe_results_total")
            wait_for(
                lambda s=start: total(mesh.metrics(), "probemesh_probe_results_total") > s + 20,  # type: ignore[misc]
                30,
                f"replay under way before kill {kill}",
            )
            depth = sum(total(a.metrics(), DEPTH) for a in agents)
            assert depth > 0, "the replay ended before the collector could be killed"
            print(f"kill {kill} during the replay: {depth:.0f} results still buffered")
            mesh.collector.kill()
            time.sleep(0.5)
            mesh.start_collector()
        relay.rate = 0
    wait_for(
        lambda: sum(total(a.metrics(), DEPTH) for a in agents) < 50, 60, "the backlog replayed"
    )
    samples = mesh.metrics()
    # Gauges: a removed check has none; a re-targeted one only names the new target.
    assert not [lab for (n, lab) in samples if n == "probe_success" and ("check", "remove") in lab]
    retarget = {dict(lab)["target"] for (n, lab) in samples
                if n == "probe_success" and ("check", "retarget") in lab}  # fmt: skip
    assert retarget <= {closed_target}, retarget
    counted_late = late(mesh, at_edit)
    print(f"{how}: late results counted per edit: {counted_late}")
    assert all(v > 0 for v in counted_late.values()), counted_late
    quiesce(mesh, checks_yaml(*targets, countries="AQ"), agents)
    figures = assert_exact_accounting(mesh, agents)
    samples = mesh.metrics()
    for agent in agents:
        produced = total(agent.metrics(), PRODUCED)
        counted = total(samples, RESULTS, agent=agent.agent_id)
        assert produced == counted and total(agent.metrics(), DROPPED) == 0, (
            f"{agent.agent_id}: produced {produced:.0f} != counted {counted:.0f}"
        )
    assert total(samples, "probemesh_ingest_rejected_total", reason="unknown_check") == 0
    assert total(samples, "probemesh_ingest_rejected_total", reason="not_assigned") == 0
    mesh.stop()
    assert_disk_matches(agents, figures)


def test_revision_survives_collector_restarts(mesh: Mesh, start_agent: StartAgent) -> None:
    """The agent's log names the revision it ran under: it never goes back."""
    mesh.start_collector()
    agent: AgentRef = start_agent("rev-one", "DE")
    proc = mesh.agents["rev-one"]
    wait_for(lambda: "(revision 1)" in proc.log(), 20, "revision 1")
    assert mesh.collector is not None
    mesh.checks_path.write_text(mesh.checks_yaml.replace("100ms", "200ms"))
    mesh.collector.signal(signal.SIGHUP)
    wait_for(lambda: "(revision 2)" in proc.log(), 20, "revision 2")
    mesh.collector.stop()
    mesh.checks_yaml = mesh.checks_yaml.replace("100ms", "200ms")
    mesh.start_collector()  # same file: same revision
    wait_for(lambda: proc.log().count("(revision 2)") >= 2, 20, "revision 2 again")
    mesh.collector.stop()
    mesh.checks_yaml = mesh.checks_yaml.replace("200ms", "300ms")
    mesh.start_collector()  # edited while down: the next revision, never 1
    wait_for(lambda: "(revision 3)" in proc.log(), 20, "revision 3")
    assert "(revision 1)" not in proc.log().split("(revision 2)", 1)[1]
    assert total(agent.metrics(), PRODUCED) > 0
