"""The decode lane: large messages decoded in order, a few milliseconds per loop iteration."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from google.protobuf.message import DecodeError

from probemesh.collector.work_lane import LANE_BYTES, WorkLane
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
