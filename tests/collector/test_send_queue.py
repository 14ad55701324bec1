"""A stream's send queue: order, wake-ups, cancellation, and what it keeps."""

from __future__ import annotations

import asyncio

import pytest

from probemesh.collector.sessions import _COMPACT_AT, SendQueue
from probemesh.v1 import mesh_pb2 as pb


def ack(seq: int) -> pb.CollectorMessage:
    return pb.CollectorMessage(ack=pb.Ack(last_seq=seq))


async def test_messages_come_out_in_order_and_a_waiting_reader_wakes() -> None:
    queue = SendQueue()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not reader.done()
    queue.put(ack(1))
    queue.put(ack(2))
    queue.put(None)
    first = await asyncio.wait_for(reader, 1)
    assert first is not None and first.ack.last_seq == 1
    second = await queue.get()
    assert second is not None and second.ack.last_seq == 2
    assert await queue.get() is None
    assert len(queue) == 0


async def test_a_cancelled_reader_leaves_the_queue_usable() -> None:
    queue = SendQueue()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put(ack(7))
    message = await asyncio.wait_for(queue.get(), 1)
    assert message is not None and message.ack.last_seq == 7


@pytest.mark.parametrize("backlog", [1, _COMPACT_AT - 1, _COMPACT_AT, 5 * _COMPACT_AT + 3])
async def test_a_queue_that_never_empties_still_lets_go_of_what_it_sent(backlog: int) -> None:
    """A stream that always has more to send: the list does not grow with
    everything ever sent, and no message is lost or repeated."""
    queue = SendQueue()
    sent = 0
    for seq in range(backlog):
        queue.put(ack(seq))
    received = []
    for seq in range(backlog, backlog + 20 * _COMPACT_AT):
        queue.put(ack(seq))
        message = await queue.get()
        assert message is not None
        received.append(message.ack.last_seq)
        sent += 1
        assert len(queue._items) <= 2 * (backlog + 1) + _COMPACT_AT
    assert received == list(range(sent))
    assert len(queue) == backlog
