"""The outage round's incremental parts give what a round from scratch gives.

Publisher.observe and Classifier.evaluate only redo what changed since the
previous round (see verdicts._Track and reachability._Row); the publisher,
given MeshState's change feed, visits only the pairs it names and those due
to go stale. Here the same
randomized mesh is published and judged twice per step: by a publisher and a
classifier that keep their state, and by ones that start their caches over
before every round (keeping only what the algorithm itself carries from round
to round: streaks, what was published, which failures count, held timers and
local-problem flags). Every publication and every snapshot must be equal,
through outages, local problems, silent agents, refusals, agents that leave,
narrowed assignments, failed publications and a reloaded checks file.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from unittest import mock

import pytest

from probemesh.checks import ChecksFile, parse_checks
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.reachability import Classifier
from probemesh.collector.runnable import Refusal
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.verdicts import InputBook, PairInput, Publication, Publisher
from probemesh.v1 import mesh_pb2 as pb

COUNTRIES = ("BR", "DE", "UG", "KE")
CHECKS = ("web", "api", "dns", "tcp")


def checks_file(interval: float) -> ChecksFile:
    return parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "outage": {"local_problem_min_checks": 2},
            "checks": [
                {
                    "name": name,
                    "target": f"http://{name}.example/",
                    "module": "http_2xx",
                    "interval": f"{interval * (1 + i % 2):g}s",
                }
                for i, name in enumerate(CHECKS)
            ],
        }
    )


def from_scratch(classifier: Classifier, publisher: Publisher, checks: ChecksFile) -> None:
    """Forget every cached row, track, count and health; keep the algorithm's own memory."""
    classifier._reset(checks)
    publisher._checks = None


def counting(classifier: Classifier) -> dict[tuple[str, str], tuple[bool, float | None]]:
    """Which failures count and since when lone ones wait, by pair."""
    return {
        (row.check, row.agent): (row.counted, row.held_since)
        for rows in classifier._by_agent.values()
        for row in rows.values()
    }


def refusals_in(inputs: dict[tuple[str, str], PairInput], checks: ChecksFile) -> dict[str, list]:
    """The refusals a round hands on, read from every input."""
    out: dict[str, list[Refusal]] = {}
    for (check, agent), item in sorted(inputs.items(), key=lambda kv: kv[0][1]):
        if item.refused and check in checks.checks:
            out.setdefault(check, []).append(
                Refusal(check, agent, item.country, item.reason, item.detail)
            )
    return out


def as_sets(publication: Publication) -> tuple[set[PairInput], set[tuple[str, str]]]:
    return set(publication.changed), set(publication.removed)


def outcome(rng: random.Random, agent: AgentInfo, check: str, step: int) -> pb.Result:
    down = (check == "web" and agent.country == "UG" and 10 <= step < 40) or (
        check == "api" and 25 <= step < 45
    )
    local = agent.agent_id == "a-03" and 15 <= step < 35
    lonely = agent.agent_id == "a-10" and check == "web" and 5 <= step < 25
    if rng.random() < 0.02:
        return pb.Result(
            check=check, success=False, reason=pb.FAILURE_REASON_POLICY,
            message="private_target: target resolves to a private address",
        )  # fmt: skip
    if down or local or lonely or rng.random() < 0.05:
        status = rng.choice((500, 503))
        return pb.Result(
            check=check,
            success=False,
            duration_seconds=0.1,
            reason=pb.FAILURE_REASON_HTTP_STATUS,
            samples=[pb.Sample(name="probe_http_status_code", value=status)],
        )
    return pb.Result(check=check, success=True, duration_seconds=0.05)


def scenario(rng: random.Random, state: MeshState) -> Iterator[tuple[int, float, ChecksFile]]:
    """Drive state through the randomized mesh; yield (step, time, checks) once
    each step's results and changes are in."""
    checks = checks_file(10.0)
    for i in range(16):
        agent_id = f"a-{i:02d}"
        state.agents[agent_id] = AgentInfo(
            agent_id, COUNTRIES[i % len(COUNTRIES)], connected=True,
            assigned={name: spec.target for name, spec in checks.checks.items()},
        )  # fmt: skip
    now = 1_800_000_000.0
    for step in range(60):
        now += rng.choice((1.0, 2.0, 5.0, 10.0))
        for agent in list(state.agents.values()):
            if step % 4 == 3:
                break  # a quiet round: only time passes (held failures, freshness)
            if agent.agent_id == "a-05" and 20 <= step < 30:
                continue  # silent: its results go stale
            # a-10 reports seldom: its held failure waits on the clock alone
            rate = 0.15 if agent.agent_id == "a-10" else 0.4
            for check in list(agent.assigned):
                if rng.random() < rate:
                    result = outcome(rng, agent, check, step)
                    result.timestamp = now - rng.random()
                    state.apply(agent, result)
        if step == 30:  # an agent leaves, another arrives
            state.forget_agent("a-07")
            state.agents["a-99"] = AgentInfo(
                "a-99", "LT", connected=True, assigned={"web": "http://web.example/"}
            )
        if step == 35:  # one agent's assignment is narrowed, its gauges end
            agent = state.agents["a-08"]
            state.assign(agent, {"web": agent.assigned["web"]}, 2)
            state.forget_unassigned(now + 1)
        if step in (22, 25):  # the silent agent's assignment narrowed, then widened again:
            agent = state.agents["a-05"]  # the pairs it gets back are listed unheard
            narrow = step == 22
            state.assign(agent, {n: s.target for n, s in checks.checks.items()
                                 if n == "web" or not narrow}, step)  # fmt: skip
            state.forget_unassigned(now + 1)
        if step == 45:  # a reload with other intervals
            checks = checks_file(5.0)
        yield step, now, checks


@pytest.mark.parametrize("seed", range(1, 7))
def test_incremental_rounds_equal_rounds_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    state = MeshState()
    incremental, reference = Classifier(), Classifier()
    publisher, book = Publisher(state.feed()), InputBook()  # visits only what changed or is due
    reference_publisher, reference_book = Publisher(), InputBook()
    seen: set[str] = set()
    refused = 0
    for step, now, checks in scenario(rng, state):
        from_scratch(reference, reference_publisher, checks)
        published = reference_publisher.observe(state.latest, checks, state.agents, now)
        publication = publisher.observe(state.latest, checks, state.agents, now)
        assert as_sets(publication) == as_sets(published), f"step {step}"
        assert publisher.published == reference_publisher.published
        if step % 9 == 5:  # the database refused the publication: it is sent again
            publisher.retry(publication)
            reference_publisher.retry(published)
            continue
        book.apply(publication)
        reference_book.apply(published)
        assert book.inputs == reference_book.inputs
        expected = reference.evaluate(reference_book.inputs, checks, now)
        # the book names the pairs it changed: only those are compared
        got = incremental.evaluate(book.inputs, checks, now, book.take_changed())
        assert got == expected, f"step {step}"
        refusals = refusals_in(book.inputs, checks)
        assert incremental.refusals() == reference.refusals() == refusals, f"step {step}"
        refused += sum(map(len, refusals.values()))
        assert incremental.local == reference.local
        assert counting(incremental) == counting(reference)
        seen.update(view.state for view in got.checks.values())
        seen.update(c.state for view in got.checks.values() for c in view.countries)
        seen.update(health.state for health in got.agents.values())
    # the scenario went through what it is meant to exercise
    assert {"regional_outage", "global_outage", "down", "degraded"} <= seen, seen
    assert {"local_problem", "suspect"} <= seen, seen
    assert refused


@pytest.mark.parametrize("seed", range(1, 4))
def test_a_collector_alone_judges_as_from_scratch(seed: int) -> None:
    """A collector alone judges its publisher's inputs, naming the pairs each
    publication changed; a round that fails makes the next compare every input."""
    rng = random.Random(seed)
    state = MeshState()
    checks_now = [checks_file(10.0)]
    clock = [0.0]
    monitor = OutageMonitor(state, lambda: checks_now[0], IncidentBook(), clock=lambda: clock[0])
    reference = Classifier()
    for step, now, checks in scenario(rng, state):
        checks_now[0], clock[0] = checks, now
        if step % 11 == 7:  # the round fails once its inputs are published
            failing = mock.patch.object(monitor.classifier, "evaluate", side_effect=RuntimeError)
            with failing, pytest.raises(RuntimeError):
                monitor.evaluate()
            continue
        monitor.evaluate()
        reference._reset(checks)
        expected = reference.evaluate(dict(monitor.publisher.published), checks, now)
        assert monitor.snapshot == expected, f"step {step}"
        assert monitor.refusals == reference.refusals(), f"step {step}"


def test_views_a_round_keeps_follow_each_kind_of_change() -> None:
    """A check's view is built again only when its counts moved: here each
    change alone (a country listed before it is heard, an input that moves
    country, a failure, an input gone) must show in the next round's view,
    as a classifier that builds every view afresh sees it."""
    checks = checks_file(10.0)
    now = 1_800_000_000.0

    def up(agent: str, country: str) -> PairInput:
        return PairInput("web", agent, country, True, True, True)

    inputs = {("web", f"a-{i}"): up(f"a-{i}", COUNTRIES[i % 2]) for i in range(6)}
    classifier = Classifier()
    classifier.evaluate(inputs, checks, now)
    changes = [
        lambda: inputs.update({("web", "a-new"): PairInput("web", "a-new", "PH", None)}),
        lambda: inputs.update({("web", "a-new"): PairInput("web", "a-new", "LT", None)}),
        lambda: inputs.update({("web", "a-1"): up("a-1", "KE")}),
        lambda: inputs.update(
            {("web", "a-2"): PairInput("web", "a-2", "BR", False, False, True, reason="timeout")}
        ),
        lambda: inputs.pop(("web", "a-3")),
        lambda: inputs.pop(("web", "a-new")),
    ]
    for step, change in enumerate(changes):
        change()
        now += 1
        got = classifier.evaluate(dict(inputs), checks, now)
        reference = Classifier()
        reference._carried = {  # which failures count is the algorithm's own memory
            (row.check, row.agent): (row.counted, row.held_since)
            for rows in classifier._by_agent.values()
            for row in rows.values()
        }
        assert got.checks == reference.evaluate(dict(inputs), checks, now).checks, f"step {step}"
