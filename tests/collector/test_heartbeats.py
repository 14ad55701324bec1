"""The collector's heartbeats: on schedule while Acks flow, and a silent agent's end.

Each heartbeat is a clock probe, so it goes out every heartbeat_interval
whatever else the stream carries; an agent that sends nothing for dead_after
is presumed dead when a heartbeat falls due, and its stream ends with
UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from probemesh.collector.main import CollectorApp, CollectorOptions
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.harness import free_port
from tests.security.conftest import checks_yaml
from tests.security.test_rotation import wait_ready

INTERVAL = 0.1
DEAD_AFTER = 0.35


def test_heartbeats_go_out_while_acks_flow_and_a_silent_agent_is_presumed_dead(
    tmp_path: Path,
) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(checks_yaml(1))
    options = CollectorOptions(
        checks, grpc_listen=f"127.0.0.1:{free_port()}", http_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
    )  # fmt: skip

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

        async with grpc.aio.insecure_channel(options.grpc_listen) as channel:
            call = channel.stream_stream(
                SERVICE_METHOD,
                request_serializer=pb.AgentMessage.SerializeToString,
                response_deserializer=pb.CollectorMessage.FromString,
            )(messages(), metadata=(("authorization", f"Bearer {token}"),))
            try:
                async with asyncio.timeout(10):
                    async for message in call:
                        received.append((message.WhichOneof("payload"), time.monotonic()))
                        if message.HasField("checks"):
                            assigned.set()
                status = "OK"
            except grpc.aio.AioRpcError as exc:
                status = f"{exc.code().name}: {exc.details()}"
            except TimeoutError:
                status = "still open after 10 s"
                call.cancel()
            ended = time.monotonic()
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
