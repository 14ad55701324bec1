"""The evaluator fails over at every round of an outage: the incident keeps its id.

Two real outage monitors share a real PostgreSQL, each serving two of four
agents, on a scripted clock: BR's agent fails for six rounds, then recovers.
At round ``kill`` the evaluator's process "dies" (its session ends, it does
no more rounds) and its agents reconnect to the other collector, which
resumes their streaks from the database. Whatever the round, one incident
opens, keeps its id across the failover and closes once BR recovers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from probemesh.collector import shared as shared_mod
from probemesh.collector.database import Database, open_database
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.shared import Election, SharedVerdicts
from probemesh.collector.state import AgentInfo, MeshState
from tests.collector.mesh_script import INTERVAL, T0, build_checks, result

SERVED = {"a": ("BR", "DE"), "b": ("US", "JP")}
ROUNDS = 16  # 3 up, 6 with BR failing, 7 recovered (the incident closes after 2)
FAILING = range(3, 9)


class Collector:
    def __init__(self, name: str, database: Database, clock: list[float]) -> None:
        self.state = MeshState()
        self.checks = build_checks()
        self.monitor = OutageMonitor(
            self.state,
            lambda: self.checks,
            IncidentBook(database),
            clock=lambda: clock[0],
            shared=SharedVerdicts(database, name),
            election=Election(database, name),
        )

    def serve(self, country: str) -> AgentInfo:
        agent = AgentInfo(f"a-{country.lower()}", country, connected=True)
        agent.assigned = {name: spec.target for name, spec in self.checks.checks.items()}
        self.state.agents[agent.agent_id] = agent
        return agent

    async def round(self) -> None:
        assert self.monitor.shared is not None
        await self.monitor._shared_round(self.monitor.shared)


async def _run(database: Database, kill: int) -> list[int]:
    clock = [T0]
    collectors = {name: Collector(name, database, clock) for name in SERVED}
    agents = {cc: (name, collectors[name].serve(cc)) for name in SERVED for cc in SERVED[name]}
    ids: list[int] = []
    await collectors["a"].round()  # a is elected first
    await collectors["b"].round()
    assert collectors["a"].monitor.is_evaluator
    alive = ["a", "b"]
    for n in range(ROUNDS):
        if n == kill:  # a dies; its agents move to b
            dead = collectors["a"].monitor
            assert dead.election is not None and dead.shared is not None
            dead.election.close()
            dead.shared.close()
            dead.book.close()
            alive.remove("a")
            for cc in SERVED["a"]:
                agents[cc] = ("b", collectors["b"].serve(cc))
        clock[0] += INTERVAL
        for cc, (name, agent) in agents.items():
            if name in alive:
                mode = "500" if cc == "BR" and n in FAILING else ""
                for check in ("web", "tcp"):
                    state = collectors[name].state
                    state.apply(
                        agent, result(check, clock[0] - 0.5, mode if check == "web" else "")
                    )
        for name in alive:
            await collectors[name].round()
        for _ in range(40):  # the server frees a dead session's lock a moment after it ends
            evaluator = [c for name in alive if (c := collectors[name]).monitor.is_evaluator]
            if evaluator:
                break
            await asyncio.sleep(0.05)
            await collectors["b"].round()
        assert len(evaluator) == 1, f"round {n}: {len(evaluator)} evaluators"
        ids.extend(i.id for i in evaluator[0].monitor.book.incidents())
    [incident] = collectors["b"].monitor.book.incidents()
    assert incident.ended_at is not None and incident.peak_countries == ["BR"]
    # BR never looked recovered while it failed: its new collector resumed its streak
    assert [e.event for e in incident.timeline] == ["opened", "recovered", "closed"]
    for name in alive:
        monitor = collectors[name].monitor
        await monitor._io(monitor._close_shared)
        monitor.book.close()
    return sorted(set(ids))


@pytest.mark.parametrize("kill", [2, 4, 5, 6, 8, 9, 10, 11])
def test_the_incident_keeps_its_id_whatever_the_round_the_evaluator_dies(
    postgres_url: str, tmp_path: Path, kill: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_mod, "ELECTION_RETRY", 0.0)
    assert asyncio.run(_run(open_database(postgres_url, tmp_path), kill)) == [1]


async def _ping_pong(database: Database) -> list[str]:
    """BR's agent moves from a to b during its outage and back to a once it recovered."""
    clock = [T0]
    collectors = {name: Collector(name, database, clock) for name in SERVED}
    agents = {cc: (name, collectors[name].serve(cc)) for name in SERVED for cc in SERVED[name]}
    states = []
    for n in range(ROUNDS):
        if n in (5, 11):  # the stream moves: the old collector keeps the agent, disconnected
            new = "b" if n == 5 else "a"
            agents["BR"][1].connected = False
            moved = collectors[new].state.agents.get("a-br") or collectors[new].serve("BR")
            moved.connected = True
            agents["BR"] = (new, moved)
        clock[0] += INTERVAL
        for cc, (name, agent) in agents.items():
            mode = "500" if cc == "BR" and n in FAILING else ""
            for check in ("web", "tcp"):
                state = collectors[name].state
                state.apply(agent, result(check, clock[0] - 0.5, mode if check == "web" else ""))
        for name in SERVED:
            await collectors[name].round()
        [evaluator] = [c for c in collectors.values() if c.monitor.is_evaluator]
        view = evaluator.monitor.snapshot.checks["web"]
        states.append({c.country: c.state for c in view.countries}["BR"])
    for collector in collectors.values():
        await collector.monitor._io(collector.monitor._close_shared)
        collector.monitor.book.close()
    return states


def test_an_agent_back_on_its_old_collector_resumes_the_newest_streak(
    postgres_url: str, tmp_path: Path
) -> None:
    states = asyncio.run(_ping_pong(open_database(postgres_url, tmp_path)))
    known = states[states.index("up") :]
    assert "unknown" not in known and "down" in known, states
    # Back on a at round 11, BR is up at once: a resumed the streak b published (confirmed
    # up), not its own from before the move (still failing), which would hold BR down.
    assert states[11:] == ["up"] * (ROUNDS - 11), states
