"""How long each step of the outage round holds the event loop, steady and in a storm.

The collector runs the round in steps through its work lane (docs/architecture.md);
a step is the longest stretch the round holds the loop. This builds loop_lag.py's
mesh in memory: 50 agents with results for 20 checks, 500 agents assigned the same
checks without results, then times each step of a round (thread CPU time):
steady rounds, then the round after all 500 agents reconnected (their
assignments replaced, as a reconnect storm does), then steady again.

    .venv/bin/python bench/outage_round_steps.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.checks import parse_checks
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.v1 import mesh_pb2 as pb


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--ingest-agents", type=int, default=50)
    parser.add_argument("--storm-agents", type=int, default=500)
    args = parser.parse_args()
    checks = parse_checks({
        "modules": {"http_2xx": {"prober": "http"}},
        "checks": [{"name": f"c{i}", "target": "http://127.0.0.1/", "module": "http_2xx",
                    "interval": "30s"} for i in range(args.checks)],
    })  # fmt: skip
    assigned = {name: spec.target for name, spec in checks.checks.items()}
    state = MeshState()
    ingest = [f"ingest-{i:03d}" for i in range(args.ingest_agents)]
    storm = [f"storm-{i:03d}" for i in range(args.storm_agents)]
    for agent_id in ingest + storm:
        agent = state.agents[agent_id] = AgentInfo(agent_id, "JP" if agent_id in storm else "DE")
        state.assign(agent, dict(assigned), 1)
        agent.connected = True
    clock = [time.time()]
    monitor = OutageMonitor(state, lambda: checks, IncidentBook(None), clock=lambda: clock[0])

    def probe_round() -> None:
        clock[0] += 1.0
        for agent_id in ingest:
            for i, name in enumerate(assigned):
                ok = i % 7 != 0
                state.apply(state.agents[agent_id], pb.Result(
                    check=name, target="http://127.0.0.1/", timestamp=clock[0], success=ok,
                    duration_seconds=0.01, reason=0 if ok else pb.FAILURE_REASON_TIMEOUT,
                ))  # fmt: skip

    def timed_round(label: str) -> None:
        steps = monitor._evaluate_steps()
        times = []
        while True:
            started = time.thread_time()
            try:
                next(steps)
            except StopIteration:
                times.append(time.thread_time() - started)
                break
            times.append(time.thread_time() - started)
        print(f"{label:>14}: {len(times):3d} steps, longest {max(times) * 1000:5.1f} ms, "
              f"all {sum(times) * 1000:5.1f} ms")  # fmt: skip

    for _ in range(3):
        probe_round()
        timed_round("steady")
    for agent_id in storm:  # a reconnect replaces each agent's assignment
        state.assign(state.agents[agent_id], dict(assigned), 1)
    probe_round()
    timed_round("storm")
    for _ in range(2):
        probe_round()
        timed_round("steady again")


if __name__ == "__main__":
    main()
