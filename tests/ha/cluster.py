"""Several real collector processes on one shared database, and the exact
accounting across them.

The accounting: after a quiesce (every collector reloaded with checks assigned
to nobody) and drained agent queues, for every agent

    sum over checks of max over collectors(probemesh_probe_results_total
        + probemesh_probe_refused_total)  ==  produced - dropped

and for every agent and check, the collector that holds the agent's lease has
that maximum. A result counted twice (by two collectors, or twice by one) or
lost breaks one of them: no collector may count beyond what the agent
produced, and the holder must count all of it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.durability.common import (
    DEPTH,
    DROPPED,
    PRODUCED,
    REFUSED,
    RESULTS,
    AgentRef,
    wait_no_checks,
)
from tests.harness import (
    Proc,
    Samples,
    create_token,
    free_port,
    http_get,
    scrape,
    stop_all,
    total,
    wait_for,
)


@dataclass
class Collector:
    """One collector process: its ports, data dir and current process."""

    index: int
    root: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def data_dir(self) -> Path:
        return self.root / f"collector-{self.index}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def metrics(self) -> Samples:
        return scrape(self.url("/metrics"))

    def collector_id(self) -> str:
        return str(json.loads(http_get(self.url("/api/v1/collector")))["collector_id"])


@dataclass
class Cluster:
    """N collectors sharing one database (database_args), one checks file, agents."""

    root: Path
    checks_yaml: str
    database_args: list[str]
    size: int = 3
    collectors: list[Collector] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.collectors = [Collector(i, self.root) for i in range(self.size)]

    @property
    def checks_path(self) -> Path:
        return self.root / "checks.yaml"

    def start(self, index: int) -> Collector:
        node = self.collectors[index]
        self.checks_path.write_text(self.checks_yaml)
        args = [
            "collector", "--checks", str(self.checks_path),
            "--grpc-listen", node.address, "--http-listen", f"127.0.0.1:{node.http_port}",
            "--data-dir", str(node.data_dir), *self.database_args,
        ]  # fmt: skip
        node.proc = Proc(args, self.root / f"collector-{index}.log").start()
        wait_for(lambda: http_get(node.url("/readyz")), 30, f"collector {index} /readyz")
        return node

    def kill(self, index: int) -> None:
        node = self.collectors[index]
        assert node.proc is not None and node.alive(), self.log(index)
        node.proc.kill()

    def log(self, index: int, lines: int | None = 40) -> str:
        """The collector's output: its last lines, or all of it (lines=None)."""
        node = self.collectors[index]
        return node.proc.log(lines) if node.proc else ""

    def token(self, agent_id: str, country: str) -> str:
        """A token in the collectors' shared database."""
        args = self.database_args
        database = args[args.index("--database") + 1] if "--database" in args else None
        return create_token(agent_id, country, self.collectors[0].data_dir, database)

    def start_agent(
        self, agent_id: str, country: str, token: str, addresses: list[str], metrics_port: int
    ) -> AgentRef:
        args = [
            "agent", "--collector", ",".join(addresses),
            "--agent-id", agent_id, "--country", country,
            "--state-dir", str(self.root / f"agent-{agent_id}"),
            "--allow-private-targets", "--min-interval", "100ms",
            "--metrics-listen", f"127.0.0.1:{metrics_port}",
        ]  # fmt: skip
        self.agents[agent_id] = Proc(
            args, self.root / f"agent-{agent_id}.log", env={"PROBEMESH_TOKEN": token}
        ).start()
        return AgentRef(
            agent_id, f"http://127.0.0.1:{metrics_port}/metrics", self.root / f"agent-{agent_id}"
        )

    def live(self) -> list[Collector]:
        return [node for node in self.collectors if node.alive()]

    def counted(self) -> float:
        """Results counted so far, summed over the live collectors (progress only)."""
        return sum(total(n.metrics(), RESULTS) for n in self.live())

    def holder(self, agent_id: str) -> Collector | None:
        """The live collector the agent is connected to, if exactly one."""
        connected = [
            node
            for node in self.live()
            if total(node.metrics(), "probemesh_agent_connected", agent=agent_id) == 1
        ]
        return connected[0] if len(connected) == 1 else None

    def quiesce(self, quiet_yaml: str, agents: list[AgentRef]) -> None:
        """Every live collector reloads checks assigned to nobody: production stops."""
        for agent in agents:
            wait_for(
                lambda a=agent: self.holder(a.agent_id) is not None,  # type: ignore[misc]
                30,
                f"{agent.agent_id} connected to exactly one collector",
            )
        self.checks_yaml = quiet_yaml
        self.checks_path.write_text(quiet_yaml)
        for node in self.live():
            assert node.proc is not None
            node.proc.signal(signal.SIGHUP)

    def stop(self) -> None:
        stop_all(self.agents.values())
        stop_all(node.proc for node in self.collectors)


def per_check(samples: Samples, agent_id: str) -> dict[str, float]:
    """check -> results + refused counted for the agent by one collector."""
    counts: dict[str, float] = defaultdict(float)
    for (name, labels), value in samples.items():
        lab = dict(labels)
        if name in (RESULTS, REFUSED) and lab.get("agent") == agent_id:
            counts[lab["check"]] += value
    return counts


def assert_exact_across(cluster: Cluster, agents: list[AgentRef], timeout: float = 40) -> dict:
    """After quiesce: wait for drained queues, then require exact counts per agent and check."""
    wait_no_checks(agents)

    def figures() -> dict[str, dict]:
        views = [(node.index, node.metrics()) for node in cluster.live()]
        out = {}
        for agent in agents:
            samples = agent.metrics()
            best: dict[str, float] = defaultdict(float)
            for _, view in views:
                for check, value in per_check(view, agent.agent_id).items():
                    best[check] = max(best[check], value)
            holder = cluster.holder(agent.agent_id)
            out[agent.agent_id] = {
                "produced": total(samples, PRODUCED),
                "dropped": total(samples, DROPPED),
                "depth": total(samples, DEPTH),
                "max_sum": sum(best.values()),
                "best": dict(best),
                "holder": holder.index if holder else None,
                "holder_counts": per_check(holder.metrics(), agent.agent_id) if holder else {},
            }
        return out

    def exact() -> bool:
        return all(
            f["depth"] == 0 and f["max_sum"] + f["dropped"] == f["produced"]
            for f in figures().values()
        )

    with contextlib.suppress(AssertionError):  # the numbers are reported below
        wait_for(exact, timeout, "drained queues and exact counts")
    time.sleep(1.0)  # nothing late may still arrive and count twice
    final = figures()
    for agent_id, f in final.items():
        print(f"{agent_id}: produced {f['produced']:.0f} dropped {f['dropped']:.0f} "
              f"depth {f['depth']:.0f} max over collectors {f['max_sum']:.0f} "
              f"holder {f['holder']}")  # fmt: skip
    for agent_id, f in final.items():
        assert f["produced"] > 0, (agent_id, f)
        assert f["depth"] == 0, f"{agent_id} still holds results: {f}"
        assert f["max_sum"] + f["dropped"] == f["produced"], f"{agent_id} not exact: {f}"
        assert f["holder"] is not None, f"{agent_id} is not connected to one collector: {f}"
        assert f["holder_counts"] == f["best"], f"{agent_id}: its holder lacks counts: {f}"
    return final
