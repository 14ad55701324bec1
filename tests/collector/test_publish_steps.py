"""The outage round's publish step runs a few agents at a time; what ingest changes
between two of its steps is published by the next round, as if it came after."""

from __future__ import annotations

import random

import pytest

from probemesh.collector import verdicts
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.verdicts import InputBook, Publisher
from tests.collector.test_reachability_incremental import (
    CHECKS,
    COUNTRIES,
    as_sets,
    checks_file,
    outcome,
)


def mesh(agents: int) -> MeshState:
    state = MeshState()
    for i in range(agents):
        agent_id = f"a-{i:03d}"
        state.agents[agent_id] = AgentInfo(
            agent_id, COUNTRIES[i % len(COUNTRIES)], connected=True,
            assigned={name: f"http://{name}.example/" for name in CHECKS},
        )  # fmt: skip
    return state


def probe_round(rng: random.Random, state: MeshState, now: float, step: int) -> None:
    for agent in list(state.agents.values()):
        for check in list(agent.assigned):
            result = outcome(rng, agent, check, step)
            result.timestamp = now - rng.random()
            state.apply(agent, result)


def ingest_meanwhile(rng: random.Random, state: MeshState, now: float, step: int) -> None:
    """What ingest and stream set-ups do while a round is half published."""
    agents = list(state.agents.values())
    for agent in rng.sample(agents, 5):  # new results
        for check in list(agent.assigned):
            result = outcome(rng, agent, check, step)
            result.timestamp = now
            state.apply(agent, result)
    narrowed = rng.choice(agents)  # a reconnect with a narrower assignment
    state.assign(narrowed, {"web": "http://web.example/"}, narrowed.revision + 1)
    moved = rng.choice(agents)  # a reconnect from another country
    moved.country = "LT" if moved.country != "LT" else "BR"
    gone = rng.choice([a for a in agents if a not in (narrowed, moved)])
    state.forget_agent(gone.agent_id)
    new = AgentInfo(f"n-{step:03d}", "KE", connected=True, assigned={"api": "http://api.example/"})
    state.agents[new.agent_id] = new


@pytest.mark.parametrize("seed", range(1, 4))
def test_changes_between_steps_are_published_by_the_next_round(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdicts, "STEP_SECONDS", 0.0)  # a step per agent
    rng, twin = random.Random(seed), random.Random(seed)
    checks = checks_file(10.0)
    state, reference_state = mesh(60), mesh(60)
    publisher, reference = Publisher(state.feed()), Publisher()
    book, reference_book = InputBook(), InputBook()
    now = 1_800_000_000.0
    for step in range(12):
        now += 10.0
        probe_round(rng, state, now, step)
        probe_round(twin, reference_state, now, step)
        # the stepped round: ingest changes the mesh after its third step
        steps = publisher.observe_steps(state.latest, checks, state.agents, now)
        taken = 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                publication = done.value
                break
            taken += 1
            if taken == 3:
                ingest_meanwhile(rng, state, now, step)
        book.apply(publication)
        # the reference round sees the same changes only after it
        reference_book.apply(reference.observe(reference_state.latest, checks,
                                               reference_state.agents, now))  # fmt: skip
        ingest_meanwhile(twin, reference_state, now, step)
        assert taken > 3, "the round was published in steps"
        # the next round, with nothing new, publishes what the changes call for
        later = now + 1.0
        book.apply(publisher.observe(state.latest, checks, state.agents, later))
        published = reference.observe(reference_state.latest, checks, reference_state.agents, later)
        reference_book.apply(published)
        assert book.inputs == reference_book.inputs, f"step {step}"
        assert publisher.published == reference.published
        assert as_sets(publisher.observe(state.latest, checks, state.agents, later)) == (
            set(),
            set(),
        )
