"""A raw client for the Connect stream: sends bytes exactly as given.

Security tests use it to speak to a real collector as an attacker would, with
no help from the agent's link: any token, any Hello, any bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD


@dataclass
class Outcome:
    """What the collector answered on one stream."""

    code: grpc.StatusCode
    details: str
    messages: list[pb.CollectorMessage] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [m.WhichOneof("payload") or "" for m in self.messages]

    def assigned(self) -> list[str]:
        return [c.name for m in self.messages if m.HasField("checks") for c in m.checks.checks]


def hello(agent_id: str, country: str, **extra: Any) -> bytes:
    message = pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, country=country, **extra))
    return message.SerializeToString()


def batch(first_seq: int, results: list[pb.Result]) -> bytes:
    message = pb.AgentMessage(
        results=pb.ResultBatch(
            first_seq=first_seq, last_seq=first_seq + len(results) - 1, results=results
        )
    )
    return message.SerializeToString()


def result(check: str, **fields: object) -> pb.Result:
    base: dict[str, object] = {
        "check": check,
        "timestamp": time.time(),
        "success": True,
        "duration_seconds": 0.01,
    }
    base.update(fields)
    return pb.Result(**base)  # type: ignore[arg-type]


def _paced(messages: Iterable[bytes], gap: float, linger: float) -> Iterator[bytes]:
    for message in messages:
        yield message
        if gap:
            time.sleep(gap)
    if linger:
        time.sleep(linger)


def connect(
    target: str,
    messages: Iterable[bytes],
    token: str | None = None,
    *,
    timeout: float = 5.0,
    gap: float = 0.0,
    linger: float = 0.3,
    credentials: grpc.ChannelCredentials | None = None,
    options: list[tuple[str, object]] | None = None,
) -> Outcome:
    """Open one stream, send messages, half-close after linger, collect the answer."""
    opts = [("grpc.enable_retries", 0), *(options or [])]
    channel = (
        grpc.secure_channel(target, credentials, options=opts)
        if credentials
        else grpc.insecure_channel(target, options=opts)
    )
    with channel:
        method = channel.stream_stream(
            SERVICE_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=pb.CollectorMessage.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        call = method(_paced(messages, gap, linger), metadata=metadata, timeout=timeout)
        received: list[pb.CollectorMessage] = []
        try:
            for message in call:
                received.append(message)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", received)  # type: ignore[attr-defined]
        return Outcome(call.code(), call.details() or "", received)
