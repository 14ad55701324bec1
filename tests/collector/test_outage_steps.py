"""The outage round runs in steps: the event loop goes round between them, and
readers see the snapshot, diagnoses and refusals of one round, never a mix."""

from __future__ import annotations

import asyncio
from typing import Any

from probemesh.collector.work_lane import WorkLane
from tests.collector.mesh_script import INTERVAL, ScriptedMesh, result


def feed(mesh: ScriptedMesh, web: dict[str, str]) -> None:
    """One probe round of results, without evaluating it."""
    mesh.now += INTERVAL
    for agent in mesh.state.agents.values():
        for check in ("web", "tcp"):
            mode = web.get(agent.country, "") if check == "web" else ""
            mesh.state.apply(agent, result(check, mesh.now - 0.5, mode))


def test_the_round_yields_between_steps_and_publishes_one_round_at_once() -> None:
    stepped, whole = ScriptedMesh(), ScriptedMesh()
    for mesh in (stepped, whole):
        for _ in range(3):
            mesh.round(web={"BR": "500"})
        feed(mesh, {"BR": "500", "PH": "500"})
    whole.monitor.evaluate()

    monitor = stepped.monitor
    monitor.lane = WorkLane(budget=0)  # one step per loop iteration
    before = (monitor.snapshot, monitor.diagnoses, monitor.refusals)
    evaluations = monitor.evaluations
    seen: list[tuple[Any, ...]] = []

    async def scenario() -> None:
        async def watch() -> None:
            while monitor.evaluations == evaluations:
                seen.append((monitor.snapshot, monitor.diagnoses, monitor.refusals))
                await asyncio.sleep(0)
            seen.append((monitor.snapshot, monitor.diagnoses, monitor.refusals))

        rounds = asyncio.create_task(monitor.run())
        await asyncio.wait_for(watch(), 10)
        rounds.cancel()
        await asyncio.gather(rounds, return_exceptions=True)

    asyncio.run(scenario())
    during, after = seen[:-1], seen[-1]
    assert len(during) >= 3, f"the loop ran {len(during)} times during the round"
    assert all(all(a is b for a, b in zip(view, before, strict=True)) for view in during)
    assert all(a is not b for a, b in zip(after, before, strict=True))
    assert stepped.country_states() == whole.country_states()
    assert stepped.monitor.diagnoses.keys() == whole.monitor.diagnoses.keys()
