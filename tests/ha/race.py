"""The takeover race: one agent switching back and forth between two collectors.

Each switch happens at a varied phase of the result flow (an offset within
the agents' 200 ms flush and the collectors' apply cycle) and in one of three
ways, through the relay in front of the collector the agent leaves:

- cut: both sides see the connection end at once;
- freeze: no byte flows, the connections stay open; the agent gives the
  stream up as dead while the old collector still holds it open. Either the
  bytes held in the relay reach the old collector soon after the other one
  took the lease (its fence must refuse them), or they are held until the
  old collector's poll of recent takes closes that stream (ABORTED);
- hold: only the old collector's Acks are held back; it applies and
  commits batches the agent still holds as unacked, and the agent resends
  them to the other collector, which must not count them again.

Used by tests/ha/test_takeover_race.py (a few rounds in CI) and by
bench/lease_soak.py (many runs, counts printed).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.durability.common import AgentRef, Relay, TcpSink, checks_yaml, closed_port
from tests.ha.cluster import Cluster, assert_exact_across
from tests.harness import free_port, total, wait_for

MODES = ("cut", "freeze", "hold")
# The agent gives a stream up after this long without an Ack (environment of the agents).
RACE_ENV = {"PROBEMESH_LINK_DEAD_AFTER": "1.5", "PROBEMESH_LINK_KEEPALIVE": "1"}


@dataclass
class RaceFigures:
    """What one run saw: counts per agent, and how much of the race it exercised."""

    produced: float = 0.0
    counted: float = 0.0
    applied: float = 0.0  # results applied, summed over the collectors: each once
    switches: list[str] = field(default_factory=list)
    takeovers: float = 0.0
    fenced: float = 0.0
    lost: float = 0.0
    duplicates: float = 0.0


def run_race(root: Path, database_args: list[str], rounds: int, seed: int) -> RaceFigures:
    """Run the race (the caller sets RACE_ENV and the fast link env); assert exact counts.

    No collector dies here, so the results each one applied, summed over
    both, must equal what the agent produced: a stale collector that applied
    a batch the other one applied too shows here even when neither exported
    counter goes beyond the agent's.
    """
    rng = random.Random(seed)
    sink = TcpSink()
    targets = (f"127.0.0.1:{sink.port}", f"127.0.0.1:{closed_port()}")
    cluster = Cluster(root, checks_yaml(*targets), database_args, size=2)
    relays: list[Relay] = []
    try:
        for index in range(2):
            cluster.start(index)
        relays = [Relay(node.grpc_port) for node in cluster.collectors]
        agent_id = "race-1"
        agent = cluster.start_agent(
            agent_id,
            "DE",
            cluster.token(agent_id, "DE"),
            [f"127.0.0.1:{relay.port}" for relay in relays],
            free_port(),
        )
        figures = RaceFigures()
        polled = 0  # freezes left until the poll closed the old stream
        current = _wait_holder(cluster, agent, None)
        wait_for(lambda: cluster.counted() > 0, 30, "first results")
        for round_ in range(rounds):
            mode = MODES[(seed + round_) % len(MODES)]
            time.sleep(0.3 + rng.random() * 0.6)  # the phase: anywhere in the flush cycle
            relay = relays[current]
            relay.open = False  # the agent reconnects to the other collector
            if mode == "cut":
                relay.cut()
            elif mode == "freeze":
                relay.freeze()
            else:
                relay.hold_replies()
            other = 1 - current
            if mode == "freeze":
                node = cluster.collectors[other]
                wait_for(
                    lambda n=node: total(n.metrics(), "probemesh_agent_connected", agent=agent_id),  # type: ignore[misc]
                    30,
                    f"{agent_id} on collector {other}",
                )
                if (seed + round_ // len(MODES)) % 2 == 0:
                    # Idle, the old stream is closed by the poll of recent takes.
                    polled += 1
                    _wait_holder(cluster, agent, other)
                else:
                    time.sleep(rng.random() * 0.3)
                relay.thaw()  # the held bytes reach the old stream: fenced, or it is closed
            _wait_holder(cluster, agent, other)
            relay.cut()  # held Acks, if any, are lost with the connections
            relay.thaw()
            relay.heal()
            figures.switches.append(mode)
            current = other
        cluster.quiesce(checks_yaml(*targets, countries="AQ"), [agent])
        final = assert_exact_across(cluster, [agent])[agent_id]
        figures.produced = final["produced"]
        figures.counted = final["max_sum"]
        for node in cluster.live():
            samples = node.metrics()
            figures.applied += total(samples, "probemesh_ingest_results_total")
            figures.takeovers += total(samples, "probemesh_lease_takeovers_total")
            figures.fenced += total(samples, "probemesh_lease_fenced_batches_total")
            figures.lost += total(samples, "probemesh_lease_lost_total")
            figures.duplicates += total(samples, "probemesh_duplicate_results_total")
        assert figures.applied == figures.produced, f"a result was applied twice: {figures}"
        if polled:  # the stream the agent left was closed for the takeover (ABORTED)
            logs = "".join(cluster.log(index, lines=None) for index in range(2))
            assert f"took over agent {agent_id}; this stream is closed" in logs, logs[-3000:]
        return figures
    finally:
        cluster.stop()
        for proc in [*cluster.agents.values(), *(n.proc for n in cluster.collectors if n.proc)]:
            if proc.alive():
                proc.kill()
        for relay in relays:
            relay.close()
        sink.close()


def _wait_holder(cluster: Cluster, agent: AgentRef, index: int | None) -> int:
    """Wait until the agent streams to one collector (index, if given) alone."""

    def holder() -> int | None:
        node = cluster.holder(agent.agent_id)
        if node is None or (index is not None and node.index != index):
            return None
        return node.index + 1  # truthy for index 0

    found = wait_for(holder, 30, f"{agent.agent_id} on collector {index}")
    return int(found) - 1  # type: ignore[call-overload]
