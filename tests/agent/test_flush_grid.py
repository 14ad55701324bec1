"""The agent's results reach the disk, and the link, on the wall clock's grid.

Agents whose clocks agree then send together, and the collector takes their
messages a burst at a time instead of waking for each one. Whatever phase a
result arrives at within a grid step, it waits for the step's end, and results
of one step go to disk together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from probemesh.agent.link import Identity
from probemesh.agent.main import Agent, AgentOptions, until_tick
from probemesh.v1 import mesh_pb2 as pb

STEP = 1.0
LATE = 0.3  # how late the flush may come on a loaded machine (< STEP / 2)


def test_until_tick_is_the_wall_clocks_next_multiple() -> None:
    assert until_tick(0.2, 100.05) == pytest.approx(0.15)
    assert until_tick(0.25, 100.25) == 0.25  # on a tick: the next one
    assert until_tick(60.0, 59.5) == pytest.approx(0.5)


@pytest.mark.parametrize("phases", [(0.05, 0.4, 0.7), (0.3,)])
async def test_results_go_to_disk_together_at_the_steps_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, phases: tuple[float, ...]
) -> None:
    agent = Agent(
        AgentOptions(
            collectors=["127.0.0.1:1"], identity=Identity("ag", "DE"), token="t",
            state_dir=tmp_path, flush_interval=STEP,
        )
    )  # fmt: skip
    appended: list[tuple[float, int]] = []  # (when, how many results)
    append = agent.queue.append

    def timed_append(rows: Sequence[tuple[float, bytes]]) -> tuple[int, int]:
        appended.append((time.time(), len(rows)))
        return append(rows)

    monkeypatch.setattr(agent.queue, "append", timed_append)
    # Begin just after a tick, so every phase below falls in the same step. The
    # agent starts half-way through it: a timer of its own would flush half a
    # step late.
    await asyncio.sleep(until_tick(STEP, time.time()) + 0.01)
    step_end = (time.time() // STEP + 1) * STEP
    flusher = None
    try:
        for phase, starts in sorted([(p, False) for p in phases] + [(STEP / 2, True)]):
            await asyncio.sleep(max(0.0, step_end - STEP + phase - time.time()))
            if starts:
                flusher = asyncio.create_task(agent._flush_loop())
            else:
                agent._on_result(pb.Result(check="c", timestamp=time.time()))
        await asyncio.wait_for(agent.new_results.wait(), 2 * STEP)
    finally:
        if flusher is not None:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
        agent.queue.close()
    assert [n for _, n in appended] == [len(phases)], appended
    when = appended[0][0]
    assert step_end <= when < step_end + LATE, (when - step_end, phases)
