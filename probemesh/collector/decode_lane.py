"""Decoding of large agent messages, a few milliseconds of it per event-loop iteration.

A 1,000-result batch takes one to two milliseconds to decode. gRPC completes
the reads of many streams at once, so when the decoding ran in each stream's
own task, fifty ingest streams decoded fifty batches in the same loop
iteration: 100 ms during which no timer, Ack, scrape or API call could run.
Streams hand their large messages to this lane instead; it decodes in arrival
order for at most ``budget`` seconds, then lets the loop go round before it
continues. Small messages (Hello, heartbeats, evidence) are cheaper to decode
than to queue and are decoded by the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from probemesh.v1 import mesh_pb2 as pb

LANE_BYTES = 32 * 1024  # smaller messages are decoded on the spot
BUDGET = 0.002  # seconds of decoding per loop iteration


class DecodeLane:
    """Decodes AgentMessages FIFO, ``budget`` seconds per loop iteration at most."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.budget = budget
        self._waiting: deque[tuple[bytes, asyncio.Future[pb.AgentMessage]]] = deque()
        self._scheduled = False

    async def decode(self, data: bytes) -> pb.AgentMessage:
        """The decoded message; raises what decoding raises (DecodeError)."""
        if len(data) < LANE_BYTES:
            return pb.AgentMessage.FromString(data)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[pb.AgentMessage] = loop.create_future()
        self._waiting.append((data, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain, loop)
        return await future

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        deadline = time.perf_counter() + self.budget
        waiting = self._waiting
        while waiting:  # at least one per iteration, then while the budget lasts
            data, future = waiting.popleft()
            if future.cancelled():  # its stream ended meanwhile
                continue
            try:
                future.set_result(pb.AgentMessage.FromString(data))
            except Exception as exc:  # bytes that do not parse: the stream's problem
                future.set_exception(exc)
            if time.perf_counter() >= deadline:
                break
        if waiting:  # the rest after the loop has gone round (timers, I/O, other tasks)
            loop.call_soon(self._drain, loop)
        else:
            self._scheduled = False
