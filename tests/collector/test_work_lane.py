"""The work lane: heavy work in steps, round robin, a few milliseconds per loop iteration."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Generator

import pytest
from google.protobuf.message import DecodeError

from probemesh.collector.work_lane import LANE_BYTES, WorkLane, run_steps
from probemesh.v1 import mesh_pb2 as pb


def batch(first_seq: int, results: int = 1000) -> bytes:
    message = pb.AgentMessage(
        results=pb.ResultBatch(
            first_seq=first_seq,
            last_seq=first_seq + results - 1,
            results=[
                pb.Result(check="c", target="http://x/", message="m" * 300, timestamp=1.0)
                for _ in range(results)
            ],
        )
    )
    data = message.SerializeToString()
    assert len(data) >= LANE_BYTES
    return data


async def test_large_messages_are_spread_over_loop_iterations_in_order() -> None:
    lane = WorkLane(budget=0)  # no budget: one decode per loop iteration
    decoded_per_tick: list[int] = []
    done = False
    futures = [asyncio.ensure_future(lane.decode(batch(1 + 1000 * i))) for i in range(20)]

    async def ticker() -> None:
        while not done:
            await asyncio.sleep(0)
            decoded_per_tick.append(sum(f.done() for f in futures))

    tick = asyncio.create_task(ticker())
    messages = await asyncio.gather(*futures)
    done = True
    await tick
    assert [m.results.first_seq for m in messages] == [1 + 1000 * i for i in range(20)]
    steps = [b - a for a, b in itertools.pairwise(decoded_per_tick)]
    assert max(steps) <= 1, "the loop went round between two decodes"


async def test_bad_bytes_fail_only_their_own_caller() -> None:
    lane = WorkLane()
    garbage = b"\xff" * LANE_BYTES
    good, bad = await asyncio.gather(
        lane.decode(batch(1)), lane.decode(garbage), return_exceptions=True
    )
    assert isinstance(good, pb.AgentMessage) and good.results.first_seq == 1
    assert isinstance(bad, DecodeError)
    with pytest.raises(DecodeError):
        await lane.decode(b"\xff")  # small: decoded on the spot, same error


async def test_a_caller_that_gives_up_is_skipped() -> None:
    lane = WorkLane()
    gone = asyncio.ensure_future(lane.decode(batch(1)))
    await asyncio.sleep(0)
    gone.cancel()
    message = await lane.decode(batch(1001))
    assert message.results.first_seq == 1001


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def job(
    name: str, steps: int, trace: list[str], step_seconds: float = 0.0
) -> Generator[None, None, str]:
    for i in range(steps):
        busy(step_seconds)
        trace.append(f"{name}{i}")
        if i < steps - 1:
            yield
    return name


async def test_steps_run_round_robin_within_the_budget_per_iteration() -> None:
    lane = WorkLane(budget=0.004)
    trace: list[str] = []
    iterations: list[tuple[float, int]] = []  # (when, steps done so far)
    done = False

    async def ticker() -> None:
        while not done:
            started = time.perf_counter()
            await asyncio.sleep(0)
            iterations.append((time.perf_counter() - started, len(trace)))

    tick = asyncio.create_task(ticker())
    results = await asyncio.gather(
        lane.run(job("a", 20, trace, 0.001)), lane.run(job("b", 20, trace, 0.001))
    )
    done = True
    await tick
    assert results == ["a", "b"]
    assert trace[:4] == ["a0", "b0", "a1", "b1"], "the computations take turns"
    per_iteration = [b - a for (_, a), (_, b) in itertools.pairwise(iterations)]
    assert max(per_iteration) <= 5, "a budget and one step at most per iteration"
    assert len(iterations) >= 40 // 5


async def test_a_failing_step_fails_its_caller_only_and_a_cancelled_one_stops() -> None:
    lane = WorkLane(budget=0)
    trace: list[str] = []

    def failing() -> Generator[None, None, None]:
        yield
        raise ValueError("bad step")

    closed: list[bool] = []

    def endless() -> Generator[None, None, None]:
        try:
            while True:
                trace.append("e")
                yield
        finally:
            closed.append(True)

    gone = asyncio.ensure_future(lane.run(endless()))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    gone.cancel()
    good, bad = await asyncio.gather(
        lane.run(job("g", 3, trace)), lane.run(failing()), return_exceptions=True
    )
    assert good == "g" and isinstance(bad, ValueError)
    assert closed == [True], "the cancelled caller's computation was closed"
    steps = len(trace)
    await lane.run(job("h", 1, trace))
    assert len(trace) == steps + 1


def test_run_steps_runs_a_computation_at_once() -> None:
    trace: list[str] = []
    assert run_steps(job("x", 3, trace)) == "x" and trace == ["x0", "x1", "x2"]
