"""Acks held back for agents that allow it: one Ack answers several batches.

An agent that announces Hello.ack_hold_seconds gets its Acks at most that
long (and ACK_HOLD_MAX) after the first batch they answer, or as soon as they
answer ACK_BATCHES_HELD batches; an agent that does not (an older agent), or
one that shuts down and asks for them (Heartbeat.ack_now), gets one per batch
at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probemesh.collector.main import CollectorApp
from probemesh.collector.sessions import ACK_BATCHES_HELD, ACK_HOLD_MAX, Session
from probemesh.collector.state import AgentInfo
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.test_heartbeats import converse
from tests.security.conftest import in_process_options
from tests.security.test_rotation import wait_ready


def now() -> float:
    return asyncio.get_running_loop().time()


def session(hold: float) -> Session:
    return Session(AgentInfo("vps-1", "DE", ack_hold=hold), "token")


def sent(s: Session) -> list[tuple[int, list[tuple[int, int]]]]:
    """The Acks queued so far: (mark, [(first, last) of each batch answered])."""
    acks = []
    while len(s.outbox):
        message = s.outbox._items[s.outbox._head]
        s.outbox._head += 1
        assert message is not None and message.WhichOneof("payload") == "ack"
        ack = message.ack
        batches = [(ack.first_seq, ack.last_seq), *((b.first_seq, b.last_seq) for b in ack.more)]
        acks.append((ack.seq, batches))
    return acks


async def test_an_agent_that_does_not_allow_it_gets_an_ack_per_batch_at_once() -> None:
    s = session(hold=0.0)
    s.acknowledge(2, 1, 2, now())
    s.acknowledge(2, 5, 6, now())
    assert sent(s) == [(2, [(1, 2)]), (2, [(5, 6)])]
    assert s.ack_timer is None


async def test_held_acks_go_out_together_once_they_answer_enough_batches() -> None:
    s = session(hold=5.0)
    batches = [(n * 10 + 1, n * 10 + 2) for n in range(ACK_BATCHES_HELD)]
    for mark, (first, last) in enumerate(batches[:-1], 1):
        s.acknowledge(mark, first, last, now())
    assert sent(s) == []
    s.acknowledge(9, *batches[-1], now())
    assert sent(s) == [(9, batches)]  # the latest mark, every batch in the order applied
    assert s.ack_timer is None  # the hold's timer went with them
    s.acknowledge(9, 51, 52, now())  # the next one starts a new hold
    assert sent(s) == [] and s.ack_timer is not None
    s.stop_timers()


async def test_a_held_ack_goes_out_when_its_hold_is_over() -> None:
    s = session(hold=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    s.acknowledge(2, 1, 2, now())
    s.acknowledge(4, 3, 4, now())
    assert sent(s) == []
    assert s.ack_timer is not None and s.ack_timer.when() <= started + 0.3
    while not len(s.outbox):
        assert loop.time() < started + 5, "the held Acks never went out"
        await asyncio.sleep(0.02)
    assert sent(s) == [(4, [(1, 2), (3, 4)])]


async def test_the_hold_counts_from_the_batchs_arrival_not_its_commit() -> None:
    """A batch that waited in a full ingest queue for its hold is acked at once,
    with those held before it; the agent's wait stays within what it allowed."""
    s = session(hold=5.0)
    s.acknowledge(2, 1, 2, now())
    assert sent(s) == []
    s.acknowledge(4, 3, 4, now() - 5.0)
    assert sent(s) == [(4, [(1, 2), (3, 4)])]
    assert s.ack_timer is None


async def test_an_ended_stream_gets_what_is_held_before_it_ends_and_nothing_after() -> None:
    """Whyever the stream ends, what its held Acks answer is durable: they go
    out ahead of the end; an Ack applied later would never be written."""
    s = session(hold=5.0)
    s.acknowledge(2, 1, 2, now())
    s.end(None, "the agent closed the stream")
    s.acknowledge(4, 3, 4, now())
    assert s.outbox._items[s.outbox._head + 1 :] == [None]
    s.outbox._items.pop()
    assert sent(s) == [(2, [(1, 2)])]
    assert s.ack_timer is None


async def test_the_hold_is_capped_whatever_the_agent_allows() -> None:
    s = session(hold=3600.0)
    loop = asyncio.get_running_loop()
    s.acknowledge(2, 1, 2, now())
    assert s.ack_timer is not None and s.ack_timer.when() <= loop.time() + ACK_HOLD_MAX
    s.stop_timers()


async def test_an_agent_that_shuts_down_gets_what_is_held_and_every_later_ack_at_once() -> None:
    s = session(hold=5.0)
    s.acknowledge(2, 1, 2, now())
    s.ack_now = True  # Heartbeat.ack_now, as the stream's reader takes it
    s.send_held_acks()
    s.acknowledge(4, 3, 4, now())
    assert sent(s) == [(2, [(1, 2)]), (4, [(3, 4)])]
    assert s.ack_timer is None


@pytest.mark.parametrize(
    ("heartbeat_interval", "ack_now"),
    [(0.2, False), (30.0, True)],
    ids=["silent-for-the-heartbeat-interval", "agent-shutting-down"],
)
def test_held_acks_go_out_early_for_a_silent_stream_and_an_agent_that_asks(
    tmp_path: Path, heartbeat_interval: float, ack_now: bool
) -> None:
    """The heartbeat timer sends what is held rather than a heartbeat (an Ack
    proves the collector alive as well, and the agent deletes sooner); an
    agent that shuts down asks for what is held with Heartbeat.ack_now."""
    options = in_process_options(tmp_path, 1)

    async def scenario() -> list[tuple[str, float]]:
        app = CollectorApp(options)
        app.service.heartbeat_interval = heartbeat_interval
        token = app.tokens.create("held", "DE")
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        heard: list[tuple[str, float]] = []
        assigned, acked = asyncio.Event(), asyncio.Event()

        async def messages() -> AsyncIterator[pb.AgentMessage]:
            yield pb.AgentMessage(hello=pb.Hello(agent_id="held", country="DE", ack_hold_seconds=5))
            await assigned.wait()
            result = pb.Result(check="c00", revision=app.revision, timestamp=time.time(),
                               success=True, duration_seconds=0.01)  # fmt: skip
            heard.append(("batch", time.monotonic()))
            yield pb.AgentMessage(results=pb.ResultBatch(first_seq=1, last_seq=1, results=[result]))
            if ack_now:
                await asyncio.sleep(0.3)  # the batch is applied and its Ack held meanwhile
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time(), ack_now=True))
            await acked.wait()

        def hear(message: pb.CollectorMessage) -> None:
            kind = message.WhichOneof("payload")
            heard.append((kind, time.monotonic()))
            if kind == "checks":
                assigned.set()
            elif kind == "ack":
                acked.set()

        await converse(options.grpc_listen, token, messages(), hear)
        stop.set()
        await server
        return heard

    heard = asyncio.run(scenario())
    kinds = [kind for kind, _ in heard]
    assert kinds[:4] == ["welcome", "checks", "batch", "ack"], kinds
    (_, sent), (_, ack) = heard[2:4]
    assert ack - sent < 2.5, "the Ack waited for its hold"
