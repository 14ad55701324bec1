"""A hostile collector pushes file references; a real agent must read none outside --secrets-dir.

The collector here is the test's own gRPC servicer: it skips the real
collector's load-time validation and pushes raw settings naming files outside
the agent's secrets dir (absolute paths, ``..``, a symlink leading out) in
every file setting. The targets record every request. Outside the secrets dir
lie a canary file (its text must never reach a target) and FIFOs: opening a
FIFO for reading blocks until a writer comes, so an agent that ever opened
one would stall and stop reporting. A legitimate file inside the dir proves
the mechanism is live: its token does reach the target.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme

from probemesh.v1 import mesh_pb2 as pb
from probemesh.v1 import mesh_pb2_grpc
from tests.harness import Mesh, Proc, http_get, wait_for

CANARY = "CANARY-7f3a-must-never-leave-the-agent"
REFUSED_SETTINGS = 8  # hostile checks below, each with one distinct file reference


class HostileCollector(mesh_pb2_grpc.ProbeMeshServicer):
    """Welcomes any agent, pushes the given checks, keeps every result and Hello."""

    def __init__(self, checks: list[pb.Check]) -> None:
        self.checks = checks
        self.hellos: list[pb.Hello] = []
        self.results: list[pb.Result] = []

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CollectorMessage]:
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "hello":
                self.hellos.append(message.hello)
                yield pb.CollectorMessage(welcome=pb.Welcome(heartbeat_interval_seconds=10))
                yield pb.CollectorMessage(checks=pb.Checks(revision=1, checks=self.checks))
            elif kind == "results":
                batch = message.results
                self.results.extend(batch.results)
                yield pb.CollectorMessage(
                    ack=pb.Ack(
                        seq=batch.last_seq, first_seq=batch.first_seq, last_seq=batch.last_seq
                    )
                )


def _check(name: str, target: str, settings: dict) -> pb.Check:
    return pb.Check(
        name=name,
        target=target,
        prober="http",
        interval_seconds=0.5,
        timeout_seconds=2,
        settings_json=json.dumps({"preferred_ip_protocol": "ip4", **settings}),
    )


async def test_pushed_file_references_never_leave_the_secrets_dir(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    outside = tmp_path / "outside"
    secrets.mkdir()
    outside.mkdir()
    (outside / "token").write_text(CANARY)
    os.mkfifo(outside / "pipe")
    (secrets / "link").symlink_to(outside / "token")
    (secrets / "pipe-link").symlink_to(outside / "pipe")
    (secrets / "good-token").write_text("inside-token\n")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(outside / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(outside / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(outside / "key.pem"))

    seen: list[bytes] = []
    client_certs: list[bool] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        while (line := await reader.readline()) not in (b"\r\n", b""):
            head += line
        seen.append(head)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            client_certs.append(ssl_object.getpeercert() is not None)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    tls_server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(tls_server)
    ca.configure_trust(tls_server)
    tls_server.verify_mode = ssl.CERT_OPTIONAL
    plain = await asyncio.start_server(record, "127.0.0.1", 0)
    secure = await asyncio.start_server(record, "127.0.0.1", 0, ssl=tls_server)
    http_url = f"http://127.0.0.1:{plain.sockets[0].getsockname()[1]}/"
    https_url = f"https://localhost:{secure.sockets[0].getsockname()[1]}/"
    absolute = str(outside / "token")
    climbing = "../outside/token"
    checks = [
        _check("bearer-absolute", http_url, {"bearer_token_file": absolute}),
        _check("bearer-dotdot", http_url, {"bearer_token_file": climbing}),
        _check("bearer-symlink", http_url, {"bearer_token_file": "link"}),
        _check("bearer-fifo", http_url, {"bearer_token_file": "pipe-link"}),
        _check(
            "password-absolute",
            http_url,
            {"basic_auth": {"username": "u", "password_file": str(outside / "pipe")}},
        ),
        _check("ca-file", https_url, {"tls_config": {"ca_file": str(outside / "ca.pem")}}),
        _check(
            "client-cert",
            https_url,
            {
                "tls_config": {
                    "insecure_skip_verify": True,
                    "cert_file": "../outside/cert.pem",
                    "key_file": "../outside/key.pem",
                }
            },
        ),
        _check("ca-fifo", https_url, {"tls_config": {"ca_file": "pipe-link"}}),
        _check("good", http_url + "good", {"bearer_token_file": "good-token"}),
    ]
    collector = HostileCollector(checks)
    server = grpc.aio.server()
    mesh_pb2_grpc.add_ProbeMeshServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent = Proc(
        [
            "agent",
            "--collector",
            f"127.0.0.1:{port}",
            "--agent-id",
            "victim",
            "--country",
            "DE",
            "--token",
            "t",
            "--state-dir",
            str(tmp_path / "state"),
            "--allow-private-targets",
            "--min-interval",
            "100ms",
            "--secrets-dir",
            str(secrets),
        ],
        tmp_path / "agent.log",
    ).start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        # Three rounds of every check: an agent stalled on a FIFO would never get there.
        while loop.time() < deadline:
            names = [r.check for r in collector.results]
            if all(names.count(c.name) >= 3 for c in checks):
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail(f"agent stopped reporting: {names}\n{agent.log(lines=30)}")
    finally:
        agent.stop()
        await server.stop(None)
        plain.close()
        secure.close()
    log = agent.log()
    assert collector.hellos and collector.hellos[0].secrets_dir_configured
    by_check: dict[str, list[pb.Result]] = {}
    for result in collector.results:
        by_check.setdefault(result.check, []).append(result)
    expected_setting = {
        "bearer-absolute": "bearer_token_file",
        "bearer-dotdot": "bearer_token_file",
        "bearer-symlink": "bearer_token_file",
        "bearer-fifo": "bearer_token_file",
        "password-absolute": "password_file",
        "ca-file": "tls_config.ca_file",
        "client-cert": "tls_config.cert_file",
        "ca-fifo": "tls_config.ca_file",
    }
    for name, setting in expected_setting.items():
        for result in by_check[name]:
            assert not result.success, name
            assert result.reason == pb.FAILURE_REASON_OTHER, (name, result.message)
            assert setting in result.message and "secrets-dir" in result.message, result.message
    assert all(r.success for r in by_check["good"]), by_check["good"][0].message
    # Nothing of the canary reached any target; the legitimate token did.
    assert seen and not any(CANARY.encode() in head for head in seen)
    assert any(b"Authorization: Bearer inside-token" in head for head in seen)
    # The only credentials any target saw are the legitimate ones. (A failed
    # check may still be looked at by the agent's evidence gathering, which
    # sends a plain GET without credentials.)
    with_auth = [head for head in seen if b"\nAuthorization:" in head]
    assert all(b"Authorization: Bearer inside-token\r\n" in head for head in with_auth)
    # Every one of them is the good check's request; the agent's stop may cut off
    # the result of a last one after its request went out.
    assert all(head.startswith(b"GET /good ") for head in with_auth), with_auth[:3]
    assert len(with_auth) >= len(by_check["good"]) > 0
    assert not any(client_certs)
    # Each refusal is logged once, however many rounds ran: at load (absolute
    # paths, "..") or at the first probe (symlinks out).
    refusals = [
        line
        for line in log.splitlines()
        if "refusing a file named in pushed settings" in line or "invalid settings" in line
    ]
    assert len(refusals) == REFUSED_SETTINGS, "\n".join(refusals)


def _connected(mesh: Mesh, agent_id: str) -> bool:
    agents = json.loads(http_get(mesh.api("/api/v1/agents")))["agents"]
    return any(a["agent"] == agent_id and a["connected"] for a in agents)


def test_collector_warns_when_an_agent_cannot_read_a_checks_files(tmp_path: Path) -> None:
    """An honest collector tells its operator which agents will refuse a check's files."""
    checks = (
        "modules:\n"
        "  api: {prober: http, timeout: 1s, http: {bearer_token_file: api-token}}\n"
        "checks:\n"
        "  - {name: api, target: 'http://127.0.0.1:9/', module: api, interval: 30s}\n"
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    mesh = Mesh(tmp_path / "mesh", checks)
    mesh.root.mkdir()
    try:
        collector = mesh.start_collector()
        mesh.start_agent("without", "DE")
        mesh.start_agent("with", "DE", "--secrets-dir", str(secrets))
        wait_for(
            lambda: "agent without has no --secrets-dir" in collector.log(),
            20,
            "collector warning for the agent without a secrets dir",
        )
        wait_for(lambda: _connected(mesh, "with"), 20, "the agent with a secrets dir connected")
    finally:
        mesh.stop()
    log = collector.log()
    assert log.count("check api names files (bearer_token_file)") == 1, log[-2000:]
    assert "agent with has no" not in log
