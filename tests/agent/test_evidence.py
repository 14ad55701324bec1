"""Evidence gathering on real loopback sockets: TCP outcomes, TLS, HTTP, the
address policy, the rate limits, and the traceroute with and without CAP_NET_RAW."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from probemesh.agent import evidence as evidence_module
from probemesh.agent.evidence import PATH_EVERY, PATH_FLOOR, Gatherer
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.runner import PreparedCheck, prepare
from probemesh.agent.safety import AddressPolicy
from probemesh.agent.scheduler import Scheduler
from probemesh.agent.secrets import SecretFiles
from probemesh.agent.traceroute import trace
from probemesh.v1 import mesh_pb2 as pb
from tests.agent.probes.cert_fixtures import ca, ca_file, secrets_dir  # noqa: F401 - fixtures
from tests.harness import free_port

PAGE = b"<html><head><title>  Social\n Home </title></head><body>hello</body></html>"
PRIVATE = ProbeEnv(policy=AddressPolicy(allow_private=True))


def http_check(target: str, settings: dict[str, object] | None = None) -> PreparedCheck:
    check = pb.Check(
        name="web",
        target=target,
        prober="http",
        interval_seconds=1,
        timeout_seconds=1,
        settings_json=json.dumps(settings or {}),
    )
    return prepare(check, 0.1)


async def serve(handler_tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Origin-Node: o1\r\n"
            + f"Content-Length: {len(PAGE)}\r\n\r\n".encode()
            + PAGE
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=handler_tls)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def web() -> AsyncIterator[int]:
    server, port = await serve()
    async with server:
        yield port


async def test_http_evidence_on_a_working_server(web: int) -> None:
    ev = await Gatherer(PRIVATE).gather(http_check(f"http://127.0.0.1:{web}/"), True, False)
    assert ev is not None and ev.probe_success
    assert not ev.HasField("dns")  # an IP literal needs no resolver
    [tcp] = ev.tcp
    assert (tcp.address, tcp.port, tcp.outcome) == ("127.0.0.1", web, "established")
    assert ev.http.status == 200 and ev.http.body_length == len(PAGE)
    assert ev.http.title == "Social Home"
    assert list(ev.http.header_names) == ["content-length", "content-type", "x-origin-node"]
    assert not ev.HasField("path")


async def test_refused_connect_and_no_request() -> None:
    port = free_port()
    ev = await Gatherer(PRIVATE).gather(http_check(f"http://127.0.0.1:{port}/"), False, False)
    assert ev is not None
    assert [t.outcome for t in ev.tcp] == ["refused"]
    assert not ev.HasField("http")


async def test_address_policy_refuses_evidence_and_traceroute(web: int) -> None:
    """An agent without --allow-private-targets neither connects to nor traces loopback."""
    ev = await Gatherer(ProbeEnv()).gather(http_check(f"http://127.0.0.1:{web}/"), False, True)
    assert ev is not None
    assert not ev.tcp and not ev.HasField("http") and not ev.HasField("path")


@pytest.mark.parametrize("server_name, verified", [("localhost", True), ("elsewhere.test", False)])
async def test_tls_evidence(
    ca: trustme.CA,  # noqa: F811 - fixture
    ca_file: str,  # noqa: F811 - fixture
    secrets_dir: Path,  # noqa: F811 - fixture
    server_name: str,
    verified: bool,
) -> None:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server, port = await serve(context)
    settings = {"tls_config": {"ca_file": ca_file, "server_name": server_name}}
    env = ProbeEnv(policy=AddressPolicy(allow_private=True), secrets=SecretFiles(secrets_dir))
    async with server:
        ev = await Gatherer(env).gather(
            http_check(f"https://127.0.0.1:{port}/", settings), False, False
        )
    assert ev is not None
    leaf = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    assert ev.tls.leaf_sha256 == hashlib.sha256(leaf).hexdigest(), ev.tls
    assert ev.tls.server_name == server_name
    if verified:
        assert ev.tls.outcome == "ok" and ev.tls.name_matches
        assert ev.tls.issuer and ev.http.status == 200
    else:
        assert ev.tls.outcome == "failed" and not ev.tls.name_matches
        assert "hostname mismatch" in ev.tls.error.lower()
        assert not ev.HasField("http")


def test_rate_limit_per_check_and_signature() -> None:
    gatherer = Gatherer(PRIVATE)
    gatherer.every = 60.0
    assert gatherer.wants("web", "timeout", 100.0)
    assert not gatherer.wants("web", "timeout", 130.0)  # same failure, within the minute
    assert not gatherer.wants("web", "refused", 102.0)  # changed, but within the floor
    assert gatherer.wants("web", "refused", 110.0)  # changed failure: look again
    assert gatherer.wants("api", "refused", 110.0)  # per check
    assert gatherer.wants("web", "refused", 171.0)  # the minute passed


def test_a_failure_its_last_traceroute_does_not_speak_of_is_traced_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once per check per PATH_EVERY; a failure after a recovery, a failure of
    another kind, or the collector's request is traced once PATH_FLOOR has
    passed since the last traceroute (the collector judges a failure only by
    a traceroute taken during it), and never sooner, however often asked."""
    traced: list[str] = []

    def fake_trace(destination: str, port: int, source: str | None = None) -> pb.PathEvidence:
        traced.append(destination)
        return pb.PathEvidence(available=True, destination=destination, reached=True)

    monkeypatch.setattr(evidence_module, "trace", fake_trace)
    gatherer = Gatherer(PRIVATE)
    now = [1000.0]
    gatherer.clock = lambda: now[0]
    check = http_check(f"http://127.0.0.1:{free_port()}/")  # refused at once

    def traces_at(seconds: float) -> bool:
        now[0] = 1000.0 + seconds
        ev = asyncio.run(gatherer.gather(check, False, True))
        assert ev is not None
        return ev.HasField("path")

    assert traces_at(0)
    assert not traces_at(30)
    for _ in range(3):  # a flapping check: never more than one a PATH_FLOOR
        gatherer.trace_sooner(check.name)
        assert not traces_at(PATH_FLOOR - 1)
    assert traces_at(PATH_FLOOR + 1)
    assert not traces_at(200)  # the same failure goes on: PATH_EVERY
    assert traces_at(PATH_FLOOR + 1 + PATH_EVERY)
    # another kind of failure: the evidence it gets is traced once the floor passed
    last = PATH_FLOOR + 1 + PATH_EVERY
    gatherer.wants(check.name, "timeout:", last)
    gatherer.wants(check.name, "refused:", last + 10)
    assert not traces_at(last + 10)
    assert traces_at(last + PATH_FLOOR)
    assert len(traced) == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need CAP_NET_RAW (CI runs as root)")
def test_traceroute_reaches_a_local_port_and_is_rate_limited(web: int) -> None:
    path = trace("127.0.0.1", web)
    assert path.available and path.reached
    assert [(h.ttl, h.address) for h in path.hops] == [(1, "127.0.0.1")]
    assert path.protocol == f"tcp-syn/{web}"

    async def twice() -> tuple[pb.Evidence | None, pb.Evidence | None]:
        gatherer = Gatherer(PRIVATE)
        check = http_check(f"http://127.0.0.1:{free_port()}/")
        return await gatherer.gather(check, False, True), await gatherer.gather(check, False, True)

    first, second = asyncio.run(twice())
    assert first is not None and first.path.reached  # a closed port answers RST
    assert second is not None and not second.HasField("path")  # once per check per PATH_EVERY


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop CAP_NET_RAW from a child")
def test_traceroute_without_cap_net_raw_is_unavailable() -> None:
    code = (
        "from probemesh.agent.traceroute import trace; p = trace('127.0.0.1', 9); "
        "print(p.available, p.unavailable_reason)"
    )
    out = subprocess.run(
        [
            "setpriv",
            "--bounding-set",
            "-net_raw",
            "--inh-caps",
            "-net_raw",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == "False needs CAP_NET_RAW"


async def test_scheduler_gathers_only_after_failures(web: int) -> None:
    reports: list[pb.EvidenceReport] = []
    results: list[pb.Result] = []
    scheduler = Scheduler(PRIVATE, results.append, 0.1, 8)
    scheduler.on_report = reports.append
    closed = free_port()
    checks = [
        pb.Check(name="up", target=f"http://127.0.0.1:{web}/", prober="http",
                 interval_seconds=0.2, timeout_seconds=1, settings_json="{}"),
        pb.Check(name="down", target=f"http://127.0.0.1:{closed}/", prober="http",
                 interval_seconds=0.2, timeout_seconds=1, settings_json="{}"),
    ]  # fmt: skip
    scheduler.update(checks)
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if reports and sum(r.check == "up" for r in results) >= 3:
                break
    finally:
        await scheduler.stop()
    assert {r.check for r in reports} == {"down"}  # nothing at all for the succeeding check
    assert not reports[0].evidence.probe_success
    assert [t.outcome for t in reports[0].evidence.tcp] == ["refused"]
    # one failure signature: one gathering per EVIDENCE_EVERY, whatever the rounds
    assert len(reports) == 1


async def test_recovery_is_reported_once() -> None:
    """A check that fails then succeeds sends one `recovered` report, then nothing more."""
    reports: list[pb.EvidenceReport] = []
    scheduler = Scheduler(PRIVATE, lambda _: None, 0.1, 8)
    scheduler.on_report = reports.append
    server, port = await serve()
    await server.start_serving()
    server.close()  # listening socket closed: connections refused
    await server.wait_closed()
    scheduler.update([pb.Check(name="web", target=f"http://127.0.0.1:{port}/", prober="http",
                               interval_seconds=0.2, timeout_seconds=1, settings_json="{}")])  # fmt: skip
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if reports:
                break
        assert [r.recovered for r in reports] == [False]  # the failure's evidence
        again, _ = await serve_on(port)
        async with again:
            for _ in range(100):
                await asyncio.sleep(0.05)
                if any(r.recovered for r in reports):
                    break
            await asyncio.sleep(0.6)  # a few more successful rounds
    finally:
        await scheduler.stop()
    assert [r.recovered for r in reports] == [False, True]
    assert not reports[1].HasField("evidence")


async def serve_on(port: int) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, port
