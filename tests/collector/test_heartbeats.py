"""The collector's heartbeats: on schedule while Acks flow, and a silent agent's end.

Each heartbeat is a clock probe, so it goes out every heartbeat_interval
whatever else the stream carries; an agent that sends nothing for dead_after
is presumed dead when a heartbeat falls due, and its stream ends with
UNAVAILABLE; not while the collector itself leaves the stream unread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from probemesh.collector.ingest import IngestLimits, _Item
from probemesh.collector.main import CollectorApp
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.security.conftest import in_process_options
from tests.security.test_rotation import wait_ready

INTERVAL = 0.1
DEAD_AFTER = 0.35


async def converse(
    target: str,
    token: str,
    messages: AsyncIterator[pb.AgentMessage],
    heard: Callable[[pb.CollectorMessage], None],
) -> tuple[str, float]:
    """One agent stream, each collector message handed to heard, until it ends or
    10 s pass: its final status, and when it ended (time.monotonic)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            SERVICE_METHOD,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )(messages, metadata=(("authorization", f"Bearer {token}"),))
        try:
            async with asyncio.timeout(10):
                async for message in call:
                    heard(message)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            status = "still open after 10 s"
            call.cancel()
        return status, time.monotonic()


def test_heartbeats_go_out_while_acks_flow_and_a_silent_agent_is_presumed_dead(
    tmp_path: Path,
) -> None:
    options = in_process_options(tmp_path, 1)

    async def scenario() -> tuple[list[tuple[str, float]], float, float, str]:
        app = CollectorApp(options)
        app.service.heartbeat_interval = INTERVAL
        app.service.dead_after = DEAD_AFTER
        token = app.tokens.create("hb1", "DE")
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        received: list[tuple[str, float]] = []  # (kind, when)
        assigned = asyncio.Event()
        silent_from = 0.0

        async def messages() -> AsyncIterator[pb.AgentMessage]:
            nonlocal silent_from
            yield pb.AgentMessage(hello=pb.Hello(agent_id="hb1", country="DE"))
            await assigned.wait()
            revision = app.revision
            for seq in range(1, 41):  # a one-result batch every 20 ms: an Ack each
                result = pb.Result(check="c00", revision=revision, timestamp=time.time(),
                                   success=True, duration_seconds=0.01)  # fmt: skip
                yield pb.AgentMessage(
                    results=pb.ResultBatch(first_seq=seq, last_seq=seq, results=[result])
                )
                silent_from = time.monotonic()  # written when the stream asks for the next
                await asyncio.sleep(0.02)
            await asyncio.sleep(30)  # silent, the stream left open

        def heard(message: pb.CollectorMessage) -> None:
            received.append((message.WhichOneof("payload"), time.monotonic()))
            if message.HasField("checks"):
                assigned.set()

        status, ended = await converse(options.grpc_listen, token, messages(), heard)
        stop.set()
        await server
        return received, silent_from, ended, status

    received, silent_from, ended, status = asyncio.run(scenario())
    kinds = [kind for kind, _ in received]
    assert kinds[:2] == ["welcome", "checks"]
    assert kinds.count("ack") == 40
    acks = [at for kind, at in received if kind == "ack"]
    during = [at for kind, at in received if kind == "heartbeat" and acks[0] < at < acks[-1]]
    assert len(during) >= 2, f"heartbeats while acks flowed: {kinds}"
    assert status == "UNAVAILABLE: no message from agent; presumed dead"
    assert ended - silent_from >= DEAD_AFTER
    after = [at for kind, at in received if kind == "heartbeat" and at > silent_from]
    assert after, "heartbeats go on until the agent is presumed dead"


def test_a_stream_held_back_by_a_full_ingest_queue_is_not_presumed_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the ingest queue is full the collector does not read the stream:
    that silence is the collector's, so the agent is not presumed dead for it."""
    options = replace(in_process_options(tmp_path, 1), limits=IngestLimits(queue_batches=1))

    async def scenario() -> tuple[list[str], str]:
        app = CollectorApp(options)
        app.service.heartbeat_interval = INTERVAL
        app.service.dead_after = DEAD_AFTER
        token = app.tokens.create("hb2", "DE")
        release = asyncio.Event()
        apply_group = app.ingest._apply_group

        async def held(items: list[_Item]) -> None:  # the applier stalls, as on a slow disk
            await release.wait()
            await apply_group(items)

        monkeypatch.setattr(app.ingest, "_apply_group", held)
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        kinds: list[str] = []
        assigned = asyncio.Event()

        async def messages() -> AsyncIterator[pb.AgentMessage]:
            yield pb.AgentMessage(hello=pb.Hello(agent_id="hb2", country="DE"))
            await assigned.wait()
            # The applier takes one or two, one waits in the queue, the stream holds the next.
            for seq in range(1, 6):
                result = pb.Result(check="c00", revision=app.revision, timestamp=time.time(),
                                   success=True, duration_seconds=0.01)  # fmt: skip
                yield pb.AgentMessage(
                    results=pb.ResultBatch(first_seq=seq, last_seq=seq, results=[result])
                )
            await asyncio.sleep(3 * DEAD_AFTER)  # held back all along
            release.set()
            while kinds.count("ack") < 5:
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time()))
                await asyncio.sleep(0.05)

        def heard(message: pb.CollectorMessage) -> None:
            kinds.append(message.WhichOneof("payload"))
            if message.HasField("checks"):
                assigned.set()

        status, _ = await converse(options.grpc_listen, token, messages(), heard)
        release.set()
        stop.set()
        await server
        return kinds, status

    kinds, status = asyncio.run(scenario())
    assert kinds.count("ack") == 5, (kinds, status)
    assert status == "OK"
