"""Buffering while no collector is reachable: overflow accounting, failover,
and late results (counted, but never moving a "latest" gauge backwards)."""

from __future__ import annotations

import time

from tests.durability.common import (
    DROPPED,
    PRODUCED,
    TcpSink,
    assert_disk_matches,
    assert_exact_accounting,
    checks_yaml,
    closed_port,
    quiesce,
)
from tests.durability.conftest import StartAgent
from tests.harness import Mesh, total, wait_for


def test_overflow_drops_are_exactly_what_the_collector_never_saw(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """--queue-max-results 50 with the collector down: produced - collected == dropped."""
    mesh.start_collector()  # checks come from the collector: connect once first
    agent = start_agent("ag-small", "DE", "--queue-max-results", "50")
    wait_for(lambda: total(agent.metrics(), PRODUCED) > 0, 20, "the first results")
    assert mesh.collector is not None
    mesh.collector.kill()
    wait_for(lambda: total(agent.metrics(), DROPPED) > 100, 30, "the bounded queue to overflow")
    # The bound holds for results not in flight; batches in flight when the
    # collector died wait for their Ack on top of it, up to the hard ceiling of 2x.
    assert total(agent.metrics(), "probemesh_agent_queue_depth") <= 2 * 50
    mesh.start_collector()
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_probe_results_total") > 0,
        20,
        "results after start",
    )
    time.sleep(1.0)  # live results flow while the 50 buffered ones replay
    quiesce(mesh, checks_yaml(*targets, countries="AQ"), [agent])
    figures = assert_exact_accounting(mesh, [agent], expect_dropped=True)
    assert figures["dropped"] > 100
    assert figures["collector"] >= 50  # the buffered results arrived, not only live ones
    mesh.stop()
    assert_disk_matches([agent], figures)


def test_failover_from_a_dead_first_collector(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """--collector DEAD,LIVE: the agent streams to the second collector quickly."""
    mesh.start_collector()
    dead = closed_port()
    started = time.monotonic()
    agent = start_agent("ag-fo", "DE", collectors=f"127.0.0.1:{dead},127.0.0.1:{mesh.grpc_port}")
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_agent_connected", agent="ag-fo") == 1,
        20,
        "failover",
    )
    print(f"connected to the second collector after {time.monotonic() - started:.1f}s")
    assert f"127.0.0.1:{dead}" in mesh.agents["ag-fo"].log()  # it did try the dead one
    # The live collector dies and comes back: the agent cycles dead -> live again.
    time.sleep(1.0)
    assert mesh.collector is not None
    mesh.collector.kill()
    time.sleep(1.5)
    mesh.start_collector()
    quiesce(mesh, checks_yaml(*targets, countries="AQ"), [agent])
    figures = assert_exact_accounting(mesh, [agent])
    mesh.stop()
    assert_disk_matches([agent], figures)


def test_late_results_count_but_latest_only_moves_forward(
    mesh: Mesh, start_agent: StartAgent, targets: tuple[str, str]
) -> None:
    """Failures buffered while the collector is down replay (in small batches,
    interleaved with live successes) after newer successes: every one is
    counted, and probe_success never goes back from 1 to 0."""
    port = closed_port()
    target = f"127.0.0.1:{port}"
    mesh.checks_yaml = checks_yaml(target, target)
    mesh.collector_args = ["--max-batch-results", "20"]
    mesh.start_collector()  # checks come from the collector: connect once first
    agent = start_agent("ag-late", "DE")
    wait_for(lambda: total(agent.metrics(), PRODUCED) > 0, 20, "the first results")
    assert mesh.collector is not None
    mesh.collector.kill()
    before = total(agent.metrics(), PRODUCED)
    wait_for(lambda: total(agent.metrics(), PRODUCED) > before + 250, 30, "buffered failures")
    sink = TcpSink(port=port)  # the target comes up: successes from now on
    try:
        time.sleep(1.0)
        mesh.start_collector()
        seen: dict[str, list[float]] = {}
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            for (name, labels), value in mesh.metrics().items():
                if name == "probe_success":
                    history = seen.setdefault(dict(labels)["check"], [])
                    if not history or history[-1] != value:
                        history.append(value)
            time.sleep(0.05)
        for check, history in seen.items():
            if 1.0 in history:
                assert 0.0 not in history[history.index(1.0) :], (check, history)
        assert len(seen) == 10 and all(h[-1] == 1.0 for h in seen.values()), seen
        samples = mesh.metrics()
        late_failures = total(samples, "probemesh_probe_failures_total", reason="refused")
        assert late_failures >= 250, "the buffered (late) failures were not all counted"
        assert total(samples, "probemesh_probe_results_total", result="success") > 0
        quiesce(mesh, checks_yaml(target, target, countries="AQ"), [agent])
        figures = assert_exact_accounting(mesh, [agent])
        print(f"late failures counted: {late_failures:.0f}")
    finally:
        sink.close()
    mesh.stop()
    assert_disk_matches([agent], figures)
