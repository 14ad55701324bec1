"""Three collectors on one database, agents that list all three, two collectors
SIGKILLed in turn under load: every result is counted exactly once.

Each agent lists the three collectors in a rotated order, so each collector
starts with agents of its own and every kill sends some agents to the next one
in their list. Agents reach each collector through a relay that withholds the
victim's replies for a moment before the kill: the victim commits batches
whose Acks never arrive, so the agents resend to the next collector results
already counted in the database, which that collector must skip. The killed
collector comes back before the next kill, so the agents it serves later are
new to a process whose memory was restored from the database.
"""

from __future__ import annotations

import time

from tests.durability.common import AgentRef, Relay, checks_yaml
from tests.ha.cluster import Cluster, assert_exact_across
from tests.ha.conftest import MakeCluster
from tests.harness import free_port, total, wait_for

AGENTS = (("ha-br", "BR"), ("ha-de", "DE"), ("ha-jp", "JP"), ("ha-de2", "DE"))


def test_sigkill_two_collectors_in_turn_counts_every_result_once(
    make_cluster: MakeCluster, targets: tuple[str, str]
) -> None:
    cluster = make_cluster(3)
    for index in range(3):
        cluster.start(index)
    ids = [node.collector_id() for node in cluster.collectors]
    assert len(set(ids)) == 3, ids  # the default id differs per collector
    relays = [Relay(node.grpc_port) for node in cluster.collectors]
    try:
        run(cluster, relays, targets, ids)
    finally:
        for relay in relays:
            relay.close()


def run(cluster: Cluster, relays: list[Relay], targets: tuple[str, str], ids: list[str]) -> None:
    addresses = [f"127.0.0.1:{relay.port}" for relay in relays]
    agents: list[AgentRef] = []
    for k, (agent_id, country) in enumerate(AGENTS):
        rotated = addresses[k % 3 :] + addresses[: k % 3]
        token = cluster.token(agent_id, country)
        agents.append(cluster.start_agent(agent_id, country, token, rotated, free_port()))
    for agent in agents:
        wait_for(
            lambda a=agent: cluster.holder(a.agent_id) is not None
            and total(cluster.holder(a.agent_id).metrics(), "probemesh_probe_results_total",
                      agent=a.agent_id) > 0,  # type: ignore[union-attr]
            30,
            f"results from {agent.agent_id}",
        )  # fmt: skip
    for victim in (0, 1):
        time.sleep(2.0)
        relays[victim].hold_replies()
        time.sleep(1.0)  # batches applied and committed, their Acks held back
        before = cluster.counted()
        cluster.kill(victim)
        relays[victim].cut()  # the held Acks are lost with the connections
        relays[victim].thaw()
        relays[victim].heal()
        # The survivors take the victim's agents over and count on.
        wait_for(lambda b=before: cluster.counted() > b + 200, 30, f"ingest after kill {victim}")  # type: ignore[misc]
        cluster.start(victim)
        assert cluster.collectors[victim].collector_id() != ids[victim]  # a new holder
    time.sleep(2.0)
    takeovers = sum(total(n.metrics(), "probemesh_lease_takeovers_total") for n in cluster.live())
    assert takeovers >= 2, f"no agent failed over: {takeovers} takeovers"
    cluster.quiesce(checks_yaml(*targets, countries="AQ"), agents)
    final = assert_exact_across(cluster, agents)
    assert sum(f["produced"] for f in final.values()) > 2000, "the load was too low"
