"""Cost of one outage evaluation over a large mesh (default 10,000 agents x 20 checks).

Builds the collector's real state in-process (HTTP-like results, agents spread
over 40 countries, a few failing pairs, one country down for one check), then
times the outage monitor's round (every ``evaluate_every`` seconds) in its two
parts: publish (verdicts.Publisher over this collector's MeshState.latest:
streaks, freshness, what changed) and judge (Classifier.evaluate over every
check x agent's inputs, diagnosis, IncidentBook.update), the evaluator's part:
one collector's whole round (OutageMonitor.evaluate), split by the publish
time it records. The first round creates every pair's streak; the rounds after it see a new
result on 1/60 of the pairs (checks every 60 s, evaluated every second), which
is the steady state the figures are about.

With ``--memory`` it then prints the bytes each part of the round holds per
check x agent pair (tracemalloc, the round's state built again under it): the
serving collector's publisher, the evaluator's copy of the inputs (in process,
and read back from a collector database as an evaluator of several
collectors reads it), the classifier, and the assignment history's spans.
``--baseline DIR`` first runs the same on another tree (a ``git archive`` copy
of main), in its own process, for a side-by-side figure.

    .venv/bin/python bench/evaluator_round.py --agents 10000 --checks 20 [--memory]
        [--baseline /tmp/main-tree]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path

import trees  # noqa: F401  (imports probemesh from --tree DIR, as --baseline runs it)

from probemesh.checks import ChecksFile, parse_checks
from probemesh.collector.assignments import AssignmentHistory, Span
from probemesh.collector.database import open_database
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.reachability import Classifier
from probemesh.collector.shared import SharedVerdicts
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.verdicts import InputBook, Publisher
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


class _NoStore:
    """An assignment store that keeps nothing: the bench measures the history's memory."""

    def load_revision(self) -> tuple[int, str] | None:
        return None

    def save_revision(self, revision: int, digest: str, created_at: float) -> None:
        pass

    def load_spans(self) -> dict[str, list[Span]]:
        return {}

    def save_spans(self, agent_id: str, spans: Iterable[Span]) -> None:
        pass

    def prune_spans(self, now: float) -> int:
        return 0


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def memory(
    state: MeshState,
    checks: ChecksFile,
    at: float,
    steady: Callable[[float], None],
) -> None:
    """Bytes per pair held by each part of the round, built again under tracemalloc."""
    pairs = len(state.tallies)
    tracemalloc.start()
    base = _traced()
    monitor = OutageMonitor(state, lambda: checks, IncidentBook(), clock=lambda: at)
    monitor.evaluate()  # a collector alone: publisher, evaluator's inputs, classifier
    whole = _traced() - base
    publisher = Publisher()
    base = _traced()
    publication = publisher.observe(state.latest, checks, state.agents, at)
    lists = sum(sys.getsizeof(x) for x in (publication.changed, publication.removed))
    published = _traced() - base - lists
    del publisher
    # an evaluator of several collectors reads every input back from the database
    with tempfile.TemporaryDirectory() as tmp:
        database = open_database(None, Path(tmp))
        SharedVerdicts(database, "serving").publish(publication)
        del publication
        base = _traced()
        reader, book = SharedVerdicts(database, "evaluator"), InputBook()
        inputs = reader.read(book)[0]
        read = _traced() - base
        classifier = Classifier()
        classifier.evaluate(inputs, checks, at)
        judged = _traced() - base - read
        del classifier, reader, book, inputs
    history = AssignmentHistory(_NoStore(), "digest", now=at)
    specs = list(checks.checks.values())
    base = _traced()
    for revision in (1, 2):  # sent at start-up, then again after a reconnect
        for agent_id in state.agents:
            history.record(agent_id, revision, specs, 0.0, at)
    spans = _traced() - base
    for second in range(1, 4):
        steady(at + second)
        monitor.evaluate()
    rounds = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, f"*{name}") for name in ("verdicts.py", "reachability.py",
                                                           "incidents.py", "<string>")]
    )  # fmt: skip
    held = sum(stat.size for stat in rounds.statistics("filename"))
    tracemalloc.stop()

    def per_pair(size: float) -> str:
        return f"{size / pairs:,.0f} B"

    print(f"memory per pair (tracemalloc, {pairs:,} pairs):")
    print(f"  one collector alone, the whole round: {per_pair(whole)}")
    print(f"    of which its publisher (any serving collector): {per_pair(published)}")
    print(f"    and the evaluator's part (inputs, classifier, incidents): "
          f"{per_pair(whole - published)}")  # fmt: skip
    print(f"  evaluator of several collectors, per pair of the mesh: inputs read from the "
          f"database {per_pair(read)}, classifier {per_pair(judged)}")  # fmt: skip
    print(f"  assignment spans: {per_pair(spans)}")
    print(f"  one collector alone after 3 steady rounds, held by the round's modules: "
          f"{per_pair(held)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10, help="steady-state rounds to time")
    parser.add_argument("--memory", action="store_true", help="print bytes per pair by part")
    parser.add_argument("--baseline", metavar="DIR", help="run the same on this tree first")
    parser.add_argument("--tree", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline:
        argv = sys.argv[1:]
        at = argv.index("--baseline")
        del argv[at : at + 2]
        print(f"== baseline: {args.baseline}", flush=True)
        subprocess.run([sys.executable, __file__, *argv, "--tree", args.baseline], check=True)
        print("== this tree", flush=True)
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

    def new_results(at: float) -> None:
        by_agent = state.agents
        for check, agent_id in rng.sample(pairs, per_round):
            agent = by_agent[agent_id]
            state.apply(agent, result(check, at, not fails(agent, check)))

    for r in range(args.rounds):
        at = clock[0] = now + 1 + r
        new_results(at)
        t0 = time.perf_counter()
        monitor.evaluate()
        spent = time.perf_counter() - t0
        publish.append(monitor.round_seconds["publish"])
        judge.append(spent - monitor.round_seconds["publish"])
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
    if args.memory:
        del monitor, book
        memory(state, checks, now + 1 + args.rounds, new_results)


if __name__ == "__main__":
    main()
