"""Revocation and rotation as an operator lives them, with real processes.

A revoked token makes the agent back off with growing delays and log one line
per window (and the collector one refused-stream line per agent per minute);
writing a new token into --token-file reconnects the agent with no restart;
``token list`` shows the last activity, written at most once a minute.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from probemesh.collector import service as service_module
from probemesh.collector import tokens as tokens_module
from probemesh.collector.main import CollectorApp
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.harness import Mesh, run_cli, total, wait_for
from tests.security.conftest import checks_yaml, in_process_options


def _connected(mesh: Mesh, agent: str) -> bool:
    return total(mesh.metrics(), "probemesh_agent_connected", agent=agent) == 1


def test_revoked_token_backs_off_then_a_new_token_file_reconnects(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, checks_yaml(2))
    mesh.start_collector()
    token_file = tmp_path / "agent.token"
    token_file.write_text(mesh.token("rot1", "BR") + "\n")
    try:
        agent = mesh.start_agent("rot1", "BR", "--token-file", str(token_file), token="unused")
        wait_for(lambda: _connected(mesh, "rot1"), 20, "rot1 connected")
        run_cli("token", "revoke", "--data-dir", str(mesh.data_dir), "rot1")
        wait_for(lambda: "refused this agent" in agent.log(), 10, "the agent's refusal line")
        refused_at = time.monotonic()
        time.sleep(12)
        rejected = total(
            mesh.metrics(), "probemesh_ingest_rejected_total", reason="unauthenticated"
        )
        lines = [line for line in agent.log().splitlines() if "refused this agent" in line]
        # Delays of 2.5-5 s, then 5-10 s: at most 3 attempts in 12 s, one line.
        assert 1 <= rejected <= 3, rejected
        assert len(lines) == 1, lines
        assert "token was revoked" in lines[0] and str(token_file) in lines[0]
        assert "next attempt in" in lines[0]
        collector_log = mesh.collector.log() if mesh.collector else ""
        refused = [line for line in collector_log.splitlines() if "refused stream of" in line]
        assert len(refused) == 1 and "token revoked" in refused[0], refused
        assert "disconnected after" in collector_log and "token revoked" in collector_log
        assert "serving gRPC (plaintext) on" in collector_log
        assert "agent rot1 (BR) connected from 127.0.0.1:" in collector_log
        assert "over plaintext, version" in collector_log

        token_file.write_text(mesh.token("rot1", "BR") + "\n")
        wait_for(lambda: _connected(mesh, "rot1"), 5, "reconnected with the new token")
        assert time.monotonic() - refused_at < 12 + 5 + 3, "waited for the backoff, not the file"
        assert "token changed" in agent.log()
        assert agent.alive()
    finally:
        mesh.stop()


def test_unknown_token_says_so() -> None:
    from probemesh.agent.credentials import TokenSource, refusal_hint

    hint = refusal_hint(grpc.StatusCode.UNAUTHENTICATED, "unknown token", TokenSource("x"))
    assert "does not know this token" in hint and "--token" in hint
    hint = refusal_hint(
        grpc.StatusCode.PERMISSION_DENIED,
        "client certificate does not name agent 'a' (CN or SAN)",
        TokenSource(path=Path("/etc/t")),
    )
    assert "does not match the agent id" in hint and "--tls-cert/--tls-key" in hint


def test_token_list_shows_last_activity_written_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process collector; the touch interval shrunk from 60 s to 0.5 s, and
    the time touches gather before they are written from 5 s to 0.2 s."""
    monkeypatch.setattr(service_module, "TOKEN_TOUCH_EVERY", 0.5)
    monkeypatch.setattr(tokens_module, "TOUCH_EVERY", 0.2)
    options = in_process_options(tmp_path, 1)

    async def scenario() -> tuple[float, int]:
        app = CollectorApp(options)
        token = app.tokens.create("touch1", "BR")
        writes: list[float] = []
        touch = app.tokens.touch
        monkeypatch.setattr(app.tokens, "touch", lambda t: (writes.append(time.time()), touch(t)))
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)

        async def messages():  # type: ignore[no-untyped-def]
            yield pb.AgentMessage(hello=pb.Hello(agent_id="touch1", country="BR"))
            for _ in range(40):  # 2 s of heartbeats every 50 ms
                await asyncio.sleep(0.05)
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time()))

        async with grpc.aio.insecure_channel(options.grpc_listen) as channel:
            call = channel.stream_stream(
                SERVICE_METHOD,
                request_serializer=pb.AgentMessage.SerializeToString,
                response_deserializer=pb.CollectorMessage.FromString,
            )(messages(), metadata=(("authorization", f"Bearer {token}"),))
            opened = time.time()
            await call.read()
            await asyncio.sleep(2.3)
            call.cancel()
        (info,) = app.tokens.list()
        stop.set()
        await server
        assert info.last_used is not None
        return info.last_used - opened, len(writes)

    behind, writes = asyncio.run(scenario())
    assert behind > 1.0, "last used stayed at the time the stream opened"
    assert 3 <= writes <= 6, f"{writes} writes for 40 messages in 2 s at most every 0.5 s"


async def wait_ready(app: CollectorApp) -> None:
    for _ in range(100):
        if app.ready:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("collector not ready")
