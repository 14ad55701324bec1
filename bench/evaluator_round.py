"""Cost of one outage evaluation over a large mesh (default 10,000 agents x 20 checks).

Builds the collector's real state in-process (HTTP-like results, agents spread
over 40 countries, a few failing pairs, one country down for one check), then
times the outage monitor's round (every ``evaluate_every`` seconds) in its two
parts: publish (verdicts.Publisher over this collector's MeshState.latest:
streaks, freshness, what changed) and judge (Classifier.evaluate over every
check x agent's inputs, diagnosis, IncidentBook.update), the evaluator's part.
The first round creates every pair's streak; the rounds after it see a new
result on 1/60 of the pairs (checks every 60 s, evaluated every second), which
is the steady state the figures are about.

    .venv/bin/python bench/evaluator_round.py --agents 10000 --checks 20
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.checks import parse_checks
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.v1 import mesh_pb2 as pb

COUNTRIES = 40


def result(check: str, ts: float, success: bool) -> pb.Result:
    return pb.Result(
        check=check,
        target="https://example.org/",
        timestamp=ts,
        success=success,
        duration_seconds=0.05,
        reason=pb.FAILURE_REASON_UNSPECIFIED if success else pb.FAILURE_REASON_TIMEOUT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="steady-state rounds to time")
    args = parser.parse_args()
    names = [f"check-{i:02d}" for i in range(args.checks)]
    checks = parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {
                    "name": n,
                    "target": "https://example.org/",
                    "module": "http_2xx",
                    "interval": "60s",
                }
                for n in names
            ],
        }
    )
    rng = random.Random(1)
    state = MeshState()
    now = time.time()
    agents = []
    for i in range(args.agents):
        country = f"C{i % COUNTRIES:02d}"
        agent = AgentInfo(f"agent-{i:05d}", country, region="r", connected=True)
        agent.assigned = {n: "https://example.org/" for n in names}
        state.agents[agent.agent_id] = agent
        agents.append(agent)

    def fails(agent: AgentInfo, check: str) -> bool:
        # one country down for check-00; 1 % of the other pairs fail now and then
        return (check == names[0] and agent.country == "C00") or rng.random() < 0.01

    for round_ in range(3):  # enough rounds for every pair to have a confirmed verdict
        for agent in agents:
            for n in names:
                state.apply(agent, result(n, now - 180 + 60 * round_, not fails(agent, n)))
    clock = [now]
    monitor = OutageMonitor(state, lambda: checks, IncidentBook(), clock=lambda: clock[0])
    t0 = time.perf_counter()
    monitor.evaluate()
    first = time.perf_counter() - t0
    pairs = list(state.tallies)
    per_round = max(1, len(pairs) // 60)
    publish, judge = [], []
    for r in range(args.rounds):
        at = clock[0] = now + 1 + r
        by_agent = state.agents
        for check, agent_id in rng.sample(pairs, per_round):
            agent = by_agent[agent_id]
            state.apply(agent, result(check, at, not fails(agent, check)))
        t0 = time.perf_counter()
        monitor.inputs.apply(monitor.publish(checks, at))
        t1 = time.perf_counter()
        monitor.judge(monitor.inputs.inputs, checks, at)
        publish.append(t1 - t0)
        judge.append(time.perf_counter() - t1)
    book = monitor.book
    print(f"agents={args.agents:,} checks={args.checks} pairs={len(pairs):,} "
          f"new results per round={per_round:,}")  # fmt: skip
    print(f"first round (every streak created): {first * 1000:.0f} ms")
    for name, times in (("publish", publish), ("judge", judge)):
        print(
            f"steady round, {name}: median {statistics.median(times) * 1000:.0f} ms, "
            f"best {min(times) * 1000:.0f} ms, worst {max(times) * 1000:.0f} ms of {len(times)}"
        )
    total = [p + j for p, j in zip(publish, judge, strict=True)]
    print(f"steady round, both: median {statistics.median(total) * 1000:.0f} ms; "
          f"host load average {os.getloadavg()[0]:.1f} (2 cores, shared)")  # fmt: skip
    print(f"incidents open: {len(book.active)} ({', '.join(sorted(book.active))})")


if __name__ == "__main__":
    main()
