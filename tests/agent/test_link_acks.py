"""The link reads an Ack that answers several batches (held back by the collector)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc

from probemesh.agent.link import ACK_HOLD, CollectorLink, Identity, LinkSettings, _Session
from probemesh.agent.queue import DEFAULT_MAX_RESULTS, DurableQueue
from probemesh.v1 import mesh_pb2 as pb


class AnsweringCall:
    """A stream to a collector that sends the given messages, then ends."""

    def __init__(self, messages: list[pb.CollectorMessage]) -> None:
        self.messages = messages

    async def read(self) -> pb.CollectorMessage | grpc.aio.EOFType:
        return self.messages.pop(0) if self.messages else grpc.aio.EOF


def six_results(tmp_path: Path) -> tuple[DurableQueue, CollectorLink]:
    """A queue of six results (seq 1..6) and a link that drains it."""
    queue = DurableQueue(tmp_path / "results.sqlite3")
    queue.append([(time.time(), f"r{i}".encode()) for i in range(6)])
    link = CollectorLink(
        ["127.0.0.1:1"], Identity("ag", "DE"), "token", queue, asyncio.Event(), lambda _: None,
        LinkSettings(),
    )  # fmt: skip
    return queue, link


async def test_one_ack_frees_every_batch_it_answers(tmp_path: Path) -> None:
    queue, link = six_results(tmp_path)
    more = [pb.AckedBatch(first_seq=3, last_seq=4), pb.AckedBatch(first_seq=5, last_seq=6)]
    ack = pb.Ack(seq=6, first_seq=1, last_seq=2, more=more)
    call = AnsweringCall([pb.CollectorMessage(ack=ack)])
    session = _Session(call, time.monotonic())  # type: ignore[arg-type]
    session.inflight = {1: 2, 3: 2, 5: 2}
    try:
        await link._read(session)
        assert session.inflight == {} and session.acked.is_set()
        assert queue.depth == 0 and queue.counters.acked == 6
    finally:
        queue.close()


def test_an_agent_allows_a_third_of_its_dead_peer_window_at_most() -> None:
    """A held Ack never makes a live collector look dead to the agent."""
    assert LinkSettings(dead_after=30.0).ack_hold(DEFAULT_MAX_RESULTS) == ACK_HOLD == 10.0
    assert LinkSettings(dead_after=3.0).ack_hold(DEFAULT_MAX_RESULTS) == 1.0


def test_an_agent_whose_buffer_cannot_hold_its_window_allows_no_hold() -> None:
    """Its bound would drop sent results whose Acks the collector holds: results
    the collector applied, counted again as dropped."""
    settings = LinkSettings(window=8, batch_size=1000)
    assert settings.ack_hold(8000) == ACK_HOLD
    assert settings.ack_hold(7999) == 0.0


async def test_an_ack_naming_batches_never_sent_deletes_none_of_them(tmp_path: Path) -> None:
    """A hostile or confused collector's Ack.more cannot reach rows not in flight."""
    queue, link = six_results(tmp_path)
    more = [pb.AckedBatch(first_seq=3, last_seq=6)] * 100_000
    ack = pb.Ack(seq=0, first_seq=1, last_seq=2, more=more)
    session = _Session(AnsweringCall([pb.CollectorMessage(ack=ack)]), time.monotonic())  # type: ignore[arg-type]
    session.inflight = {1: 2}
    try:
        await link._read(session)
        assert session.inflight == {}
        assert queue.depth == 4 and [seq for seq, _ in queue.read(0, None, 10)] == [3, 4, 5, 6]
    finally:
        queue.close()
