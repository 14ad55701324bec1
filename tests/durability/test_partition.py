"""A network partition between agents and the collector (root only).

Each agent runs in its own network namespace, linked to the host by a veth
pair; the collector listens on the host end of the first veth. nftables in the
agents' namespaces drops their traffic to and from the collector for a while,
then the rule is lifted. The agents must notice the dead link quickly (the
test shortens dead-peer detection with PROBEMESH_LINK_DEAD_AFTER and
PROBEMESH_LINK_KEEPALIVE), buffer on disk, and replay everything within a
bounded time once the link returns, with exact accounting.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.durability.common import (
    DEPTH,
    PRODUCED,
    AgentRef,
    TcpSink,
    agents_sum,
    assert_disk_matches,
    assert_exact_accounting,
    checks_yaml,
    collector_total,
    quiesce,
)
from tests.harness import Mesh, Proc, free_port, wait_for

pytestmark = pytest.mark.root

N_AGENTS = 2
PARTITION_SECONDS = 8.0
REPLAY_BOUND_SECONDS = 20.0


def _run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, input=stdin, text=True, check=True, capture_output=True, timeout=20)


def _netns_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables rules"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} tool"
    probe = f"pmprobe{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


@dataclass
class Net:
    """Per-run namespaces: agent k lives in ns[k] at agent_ip[k]."""

    ns: list[str]
    host_ip: list[str]
    agent_ip: list[str]

    @property
    def collector_ip(self) -> str:
        return self.host_ip[0]


@pytest.fixture
def net() -> Iterator[Net]:
    problem = _netns_problem()
    if problem:
        pytest.skip(f"partition test skipped: {problem}")
    run_id = f"{random.randrange(16**5):05x}"
    octet2, octet3 = random.randrange(200, 250), random.randrange(0, 250)
    net = Net([], [], [])
    try:
        for k in range(N_AGENTS):
            ns, host_if, ns_if = f"pmd{run_id}a{k}", f"pv{run_id}h{k}", f"pv{run_id}n{k}"
            host_ip, agent_ip = (
                f"10.{octet2}.{octet3}.{4 * k + 1}",
                f"10.{octet2}.{octet3}.{4 * k + 2}",
            )
            _run("ip", "netns", "add", ns)
            net.ns.append(ns)
            _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _run("ip", "link", "set", ns_if, "netns", ns)
            _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
            _run("ip", "link", "set", host_if, "up")
            _run("ip", "-n", ns, "addr", "add", f"{agent_ip}/30", "dev", ns_if)
            _run("ip", "-n", ns, "link", "set", ns_if, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", host_ip)
            net.host_ip.append(host_ip)
            net.agent_ip.append(agent_ip)
        yield net
    finally:
        for ns in net.ns:  # deleting the namespace deletes its veth pair and nft tables
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def partition(net: Net, port: int) -> None:
    rules = f"""
table inet pmpartition {{
  chain out {{ type filter hook output priority 0; policy accept;
    ip daddr {net.collector_ip} tcp dport {port} drop; }}
  chain in {{ type filter hook input priority 0; policy accept;
    ip saddr {net.collector_ip} tcp sport {port} drop; }}
}}
"""
    for ns in net.ns:
        _run("ip", "netns", "exec", ns, "nft", "-f", "-", stdin=rules)


def heal(net: Net) -> None:
    for ns in net.ns:
        _run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "pmpartition")


def test_partition_then_bounded_replay(
    tmp_path: Path, net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROBEMESH_LINK_DEAD_AFTER", "3")
    monkeypatch.setenv("PROBEMESH_LINK_KEEPALIVE", "1")
    sink = TcpSink(host=net.collector_ip)
    mesh = Mesh(tmp_path, checks_yaml(f"{net.collector_ip}:{sink.port}", "127.0.0.1:9"))
    grpc = f"{net.collector_ip}:{mesh.grpc_port}"
    agents: list[AgentRef] = []
    try:
        mesh.start_collector("--grpc-listen", grpc, "--insecure")
        for k, ns in enumerate(net.ns):
            agent_id, port = f"ag-ns{k}", free_port()
            listen = f"{net.agent_ip[k]}:{port}"
            args = [
                "agent", "--collector", grpc, "--insecure",
                "--agent-id", agent_id, "--country", "DE",
                "--state-dir", str(tmp_path / f"agent-{agent_id}"), "--allow-private-targets",
                "--min-interval", "100ms", "--metrics-listen", listen,
            ]  # fmt: skip
            proc = Proc(
                args,
                tmp_path / f"agent-{agent_id}.log",
                env={"PROBEMESH_TOKEN": mesh.token(agent_id, "DE")},
                prefix=["ip", "netns", "exec", ns],
            ).start()
            mesh.agents[agent_id] = proc
            agents.append(
                AgentRef(agent_id, f"http://{listen}/metrics", tmp_path / f"agent-{agent_id}")
            )
        wait_for(lambda: collector_total(mesh) > 100, 30, "results from the namespaced agents")

        partition(net, mesh.grpc_port)
        cut_at = collector_total(mesh)
        time.sleep(PARTITION_SECONDS)
        during = collector_total(mesh)
        depth = agents_sum(agents, DEPTH)
        assert during - cut_at < 200, "results still arrived through the partition"
        assert depth > 0, "the agents buffered nothing during the partition"

        produced_at_heal = agents_sum(agents, PRODUCED)
        heal(net)
        healed = time.monotonic()
        wait_for(
            lambda: collector_total(mesh) >= produced_at_heal,
            REPLAY_BOUND_SECONDS,
            "replay after heal",
        )
        replay = time.monotonic() - healed
        print(
            f"partition {PARTITION_SECONDS:g}s, {depth:.0f} results buffered, "
            f"replayed in {replay:.1f}s"
        )

        quiesce(
            mesh,
            checks_yaml(f"{net.collector_ip}:{sink.port}", "127.0.0.1:9", countries="AQ"),
            agents,
        )
        figures = assert_exact_accounting(mesh, agents)
        mesh.stop()
        assert_disk_matches(agents, figures)
    finally:
        mesh.stop()
        for proc in [*mesh.agents.values(), *([mesh.collector] if mesh.collector else [])]:
            if proc.alive():
                proc.kill()
        sink.close()
