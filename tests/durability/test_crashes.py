"""Crashes and clean stops of real collector and agent processes: not one
probe result lost, none counted twice."""

from __future__ import annotations

import signal
import time

from tests.durability.common import (
    PRODUCED,
    AgentRef,
    assert_disk_matches,
    assert_exact_accounting,
    checks_yaml,
    collector_total,
    queue_counters,
    quiesce,
)
from tests.durability.conftest import StartAgent
from tests.harness import Mesh, total, wait_for


def quiet(targets: tuple[str, str], n_checks: int = 10) -> str:
    return checks_yaml(*targets, n_checks=n_checks, countries="AQ")


def streaming(mesh: Mesh, agents: list[AgentRef], timeout: float = 20) -> None:
    """Wait until the collector counts results from every agent."""
    for agent in agents:
        wait_for(
            lambda a=agent: (
                total(mesh.metrics(), "probemesh_probe_results_total", agent=a.agent_id) > 0
            ),  # type: ignore[misc]
            timeout,
            f"results from {agent.agent_id}",
        )


def test_collector_sigkill_three_times(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """Three agents at ~100 results/s each; the collector is SIGKILLed three times."""
    mesh.start_collector()
    agents = [start_agent(f"ag-{i}", cc) for i, cc in enumerate(("BR", "DE", "JP"))]
    streaming(mesh, agents)
    collector = mesh.collector
    for round_ in range(3):
        time.sleep(2.0)  # batches in flight, marks and counters being committed
        assert collector is not None and collector.alive(), collector and collector.log()[-2000:]
        collector.kill()
        time.sleep(1.0)  # agents buffer on disk, their sessions fail
        collector = mesh.start_collector()
        before = collector_total(mesh)

        def grew(before: float = before) -> bool:
            return collector_total(mesh) > before

        wait_for(grew, 20, f"ingest after restart {round_ + 1}")
    quiesce(mesh, quiet(targets), agents)
    figures = assert_exact_accounting(mesh, agents)
    assert figures["produced"] > 1000, "the rate was too low to prove anything"
    mesh.stop()
    assert_disk_matches(agents, figures)


def test_agent_sigkill_mid_batch(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """An agent at ~200 results/s is SIGKILLed with batches unacked, restarted on its state dir."""
    mesh.checks_yaml = checks_yaml(*targets, n_checks=20)
    mesh.start_collector()
    agent = start_agent("ag-kill", "DE")
    streaming(mesh, [agent])
    collector = mesh.collector
    assert collector is not None
    at_kill = []
    for round_ in range(4):
        time.sleep(1.5)
        # Every other round the collector is frozen for a moment, so the agent
        # dies with batches written to the socket but not acked: the collector
        # may apply them after the agent is gone, and the replay must dedupe.
        frozen = round_ % 2 == 0
        if frozen:
            collector.signal(signal.SIGSTOP)
            time.sleep(0.6)
        mesh.agents["ag-kill"].kill()
        counters = queue_counters(agent.state_dir)
        at_kill.append((counters["depth"], counters["sent_ranges"]))
        if frozen:
            collector.signal(signal.SIGCONT)
        agent = start_agent("ag-kill", "DE")
        wait_for(lambda a=agent: total(a.metrics(), PRODUCED) > 0, 20, "agent restarted")  # type: ignore[misc]
    print(f"(unacked results, sent batches) on disk at each SIGKILL: {at_kill}")
    assert any(depth and sent for depth, sent in at_kill), "no kill caught a batch in flight"
    quiesce(mesh, quiet(targets, 20), [agent])
    figures = assert_exact_accounting(mesh, [agent])
    mesh.stop()
    assert_disk_matches([agent], figures)


def test_agent_sigterm_flushes_and_keeps_the_rest(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """SIGTERM: with a collector, everything is acked before exit; without one,
    every result produced is on disk and is delivered after the restart."""
    mesh.start_collector()
    agent = start_agent("ag-term", "DE")
    streaming(mesh, [agent])
    time.sleep(1.0)
    assert mesh.agents["ag-term"].stop(timeout=15) == 0
    counters = queue_counters(agent.state_dir)
    assert counters["depth"] == 0 and counters["acked"] == counters["produced"] > 0, (
        counters,
        mesh.agents["ag-term"].log(30),
    )
    assert collector_total(mesh) == counters["produced"]

    agent = start_agent("ag-term", "DE")
    wait_for(lambda: total(agent.metrics(), PRODUCED) > counters["produced"], 20, "agent back")
    assert mesh.collector is not None
    mesh.collector.kill()  # no collector now: the agent must keep its results
    time.sleep(2.0)
    started = time.monotonic()
    assert mesh.agents["ag-term"].stop(timeout=15) == 0
    assert time.monotonic() - started < 10, "SIGTERM without a collector took too long"
    kept = queue_counters(agent.state_dir)
    assert kept["depth"] > 0, kept
    assert kept["produced"] == kept["acked"] + kept["depth"] and kept["dropped"] == 0, kept

    mesh.start_collector()
    agent = start_agent("ag-term", "DE")
    quiesce(mesh, quiet(targets), [agent])
    figures = assert_exact_accounting(mesh, [agent])
    assert figures["produced"] >= kept["produced"]
    mesh.stop()
    assert_disk_matches([agent], figures)


def test_collector_sigterm_acks_only_what_it_applied(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """The collector is frozen (SIGSTOP) so batches pile up, then SIGTERMed as it
    resumes: whatever it acks must be applied and persisted, the rest replayed."""
    mesh.start_collector()
    agents = [start_agent(f"ag-{i}", cc) for i, cc in enumerate(("BR", "DE"))]
    streaming(mesh, agents)
    for _ in range(2):
        time.sleep(1.5)
        collector = mesh.collector
        assert collector is not None
        collector.signal(signal.SIGSTOP)
        time.sleep(1.5)
        collector.signal(signal.SIGCONT)
        collector.signal(signal.SIGTERM)
        assert collector.wait(20) == 0, collector.log()[-3000:]
        mesh.start_collector()
    quiesce(mesh, quiet(targets), agents)
    figures = assert_exact_accounting(mesh, agents)
    mesh.stop()
    assert_disk_matches(agents, figures)
