"""The link's drain on stop: it waits for Acks, it does not spin for them.

An agent told to stop asks the collector for the Acks it holds back, sends
what is queued and waits up to drain_timeout for the collector's Acks. That
wait shares the host with the collector the Acks come from: a loop that spun
until the deadline took a core from it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from probemesh.agent.link import CollectorLink, Identity, LinkSettings, _Session
from probemesh.agent.queue import DurableQueue
from probemesh.v1 import mesh_pb2 as pb


class SilentCall:
    """A stream to a collector that takes every message and never answers."""

    def __init__(self) -> None:
        self.sent: list[pb.AgentMessage | bytes] = []

    async def write(self, message: pb.AgentMessage | bytes) -> None:
        self.sent.append(message)


class CountedReports(asyncio.Queue[pb.EvidenceReport]):
    """The link's report queue, which it looks at once per turn of its send loop."""

    looks = 0

    def empty(self) -> bool:
        self.looks += 1
        return super().empty()


async def test_a_drain_without_acks_waits_for_its_deadline_without_spinning(
    tmp_path: Path,
) -> None:
    queue = DurableQueue(tmp_path / "results.sqlite3")
    queue.append([(time.time(), f"r{i}".encode()) for i in range(5)])
    link = CollectorLink(
        ["127.0.0.1:1"], Identity("ag", "DE"), "token", queue, asyncio.Event(), lambda _: None,
        LinkSettings(drain_timeout=0.3),
    )  # fmt: skip
    reports = link.reports = CountedReports(maxsize=64)
    call = SilentCall()
    session = _Session(call, time.monotonic())  # type: ignore[arg-type]
    session.max_batch = 2
    reader = asyncio.create_task(asyncio.Event().wait())  # the collector sends nothing
    stop = asyncio.Event()
    stop.set()
    try:
        await link._send(session, stop, reader)
    finally:
        reader.cancel()
        queue.close()
    ask, *batches = call.sent
    assert isinstance(ask, pb.AgentMessage) and ask.heartbeat.ack_now  # the held Acks, now
    assert len(batches) == 3  # the five results, in batches of two, sent before the wait
    assert sorted(session.inflight) == [1, 3, 5]  # none acked
    # Three turns send, then the loop sleeps until the deadline: a few turns, not
    # one per event-loop iteration for 0.3 s.
    assert reports.looks <= 10, reports.looks
