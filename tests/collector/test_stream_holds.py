"""What an agent's stream keeps while it waits: no message.

A stream lives as long as its agent is connected, so whatever it holds between
two messages is paid for every connected agent: the Checks message (about 1 KB
of protobuf's C heap a check), the last batch read (about 5 KB for one parsed
result), the last Ack or heartbeat sent.
"""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path

import grpc

from probemesh.collector.main import CollectorApp
from probemesh.collector.sessions import HEARTBEAT_DUE
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.security.conftest import in_process_options
from tests.security.test_rotation import wait_ready


def live_messages() -> dict[int, str]:
    """The protobuf messages alive in this process (the client's are bytes), by payload."""
    gc.collect()
    return {
        id(o): f"{type(o).__name__}.{o.WhichOneof('payload')}"
        for o in gc.get_objects()
        if isinstance(o, pb.AgentMessage | pb.CollectorMessage) and o is not HEARTBEAT_DUE
    }


def encode(**payload: object) -> bytes:
    """An AgentMessage's bytes: the test keeps no message object of its own."""
    return pb.AgentMessage(**payload).SerializeToString()  # type: ignore[arg-type]


def test_a_waiting_stream_holds_no_message(tmp_path: Path) -> None:
    options = in_process_options(tmp_path, 3)

    async def read(call: grpc.aio.StreamStreamCall, kind: str) -> pb.CollectorMessage:
        """The next message of that kind, as bytes parsed here (the caller drops it)."""
        while True:
            data = await asyncio.wait_for(call.read(), 5)
            assert isinstance(data, bytes), data
            message = pb.CollectorMessage.FromString(data)
            if message.WhichOneof("payload") == kind:
                return message

    async def scenario() -> tuple[list[str], list[str]]:
        before = live_messages()  # what earlier tests in this process left
        app = CollectorApp(options)
        token = app.tokens.create("held1", "DE")
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        async with grpc.aio.insecure_channel(options.grpc_listen) as channel:
            call = channel.stream_stream(SERVICE_METHOD)(
                metadata=(("authorization", f"Bearer {token}"),)
            )
            await call.write(encode(hello=pb.Hello(agent_id="held1", country="DE")))
            revision = (await read(call, "checks")).checks.revision
            await asyncio.sleep(0.1)
            after_checks = [m for i, m in live_messages().items() if i not in before]
            result = pb.Result(check="c00", revision=revision, timestamp=time.time(),
                               success=True, duration_seconds=0.01)  # fmt: skip
            await call.write(
                encode(results=pb.ResultBatch(first_seq=1, last_seq=1, results=[result]))
            )
            await read(call, "ack")
            await call.write(encode(heartbeat=pb.Heartbeat(timestamp=time.time())))
            await asyncio.sleep(0.1)
            after_ack = [m for i, m in live_messages().items() if i not in before]
            call.cancel()
        stop.set()
        await server
        return after_checks, after_ack

    after_checks, after_ack = asyncio.run(scenario())
    assert after_checks == []
    assert after_ack == []
