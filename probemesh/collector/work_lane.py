"""The collector's heavy work, a few milliseconds of it per event-loop iteration.

asyncio runs every callback that is ready before it looks at timers or sockets
again. When heavy work ran in each task that wanted it (a stream decoding its
batch, ingest applying a slice, the outage round taking a step, the pre-render
rendering a slice), every piece that was ready ran in the same iteration: fifty
streams whose reads completed together decoded fifty batches at once, and an
iteration that also held an ingest slice, a pre-render slice and an outage step
added them all up. Every stream, timer, Ack and scrape waited for the sum.

The lane is the one place that work runs: callers hand it a computation in
steps (a generator that yields between two steps) and await its result. It
runs steps round robin, for at most ``budget`` seconds per loop iteration (at
least one step), then lets the loop go round. So no iteration holds more than
the budget plus one step of heavy work, whatever is queued, and the work still
gets the whole loop when nothing else is ready.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Generator
from typing import Any, TypeVar

from probemesh.v1 import mesh_pb2 as pb

_T = TypeVar("_T")

LANE_BYTES = 32 * 1024  # smaller messages are decoded on the spot
BUDGET = 0.001  # seconds of heavy work per loop iteration (docs/benchmarks.md)

Steps = Generator[None, None, _T]


class WorkLane:
    """Runs computations in steps, ``budget`` seconds per loop iteration at most."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._waiting: deque[tuple[Steps[Any], asyncio.Future[Any]]] = deque()
        self._scheduled = False

    async def run(self, steps: Steps[_T]) -> _T:
        """The computation's result, once the lane has run all its steps; raises
        what a step raises. A caller cancelled meanwhile stops it between two steps."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._waiting.append((steps, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain, loop)
        return await future

    async def decode(self, data: bytes) -> pb.AgentMessage:
        """The decoded message; raises what decoding raises (DecodeError).

        A 1,000-result batch takes one to two milliseconds: large messages are
        decoded in the lane, small ones (Hello, heartbeats, evidence) are
        cheaper to decode than to queue."""
        if len(data) < LANE_BYTES:
            return pb.AgentMessage.FromString(data)
        return await self.run(_decoding(data))

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = time.perf_counter() + self.budget
        waiting = self._waiting
        while waiting:  # at least one step per iteration, then while the budget lasts
            steps, future = waiting.popleft()
            if future.cancelled():  # its caller gave up (a stream ended, shutdown)
                steps.close()
                continue
            try:
                next(steps)
            except StopIteration as done:
                future.set_result(done.value)
            except Exception as exc:  # the caller's problem, not the lane's
                future.set_exception(exc)
            else:
                waiting.append((steps, future))  # round robin: the others step first
            if time.perf_counter() >= deadline:
                break
        if waiting:  # the rest after the loop has gone round (timers, I/O, other tasks)
            loop.call_soon(self._drain, loop)
        else:
            self._scheduled = False


def _decoding(data: bytes) -> Steps[pb.AgentMessage]:
    """Decoding as one step."""
    yield from ()
    return pb.AgentMessage.FromString(data)


def run_steps(steps: Steps[_T]) -> _T:
    """All of a stepped computation at once (tests, benches, callers off the loop)."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
