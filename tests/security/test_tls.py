"""gRPC TLS and mTLS between real agent and collector processes.

Every failure case must leave the agent disconnected with a clear line in its
log; TLS below 1.2 is refused by gRPC core on both sides.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from tests.harness import Mesh, Proc, total, wait_for
from tests.security.conftest import checks_yaml

SERVER_NAME = "collector.test"


class Pki:
    """A CA, a server certificate, client certificates and a stranger CA, on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = trustme.CA()
        self.ca_path = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_path = self._write("other-ca.pem", trustme.CA().cert_pem.bytes())
        self.server = self._leaf("server", self.ca.issue_cert(SERVER_NAME, "127.0.0.1"))
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        expired = self.ca.issue_cert(
            SERVER_NAME, not_before=past - datetime.timedelta(days=30), not_after=past
        )
        self.expired = self._leaf("expired", expired)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def _leaf(self, name: str, leaf: trustme.LeafCert) -> tuple[Path, Path]:
        cert = self._write(f"{name}.crt", b"".join(p.bytes() for p in leaf.cert_chain_pems))
        key = self._write(f"{name}.key", leaf.private_key_pem.bytes())
        return cert, key

    def client(self, agent_id: str) -> tuple[Path, Path]:
        return self._leaf(f"client-{agent_id}", self.ca.issue_cert(agent_id, common_name=agent_id))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _tls_mesh(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, *extra: str, expired: bool = False
) -> Mesh:
    mesh = Mesh(tmp_path_factory.mktemp("tls"), checks_yaml(2))
    cert, key = pki.expired if expired else pki.server
    mesh.start_collector("--tls-cert", str(cert), "--tls-key", str(key), *extra)
    return mesh


@pytest.fixture(scope="module")
def tls_mesh(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mesh]:
    mesh = _tls_mesh(tmp_path_factory, pki)
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def mtls_mesh(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Mesh]:
    mesh = _tls_mesh(tmp_path_factory, pki, "--tls-client-ca", str(pki.ca_path))
    yield mesh
    mesh.stop()


def _connected(mesh: Mesh, agent: str) -> bool:
    return total(mesh.metrics(), "probemesh_agent_connected", agent=agent) == 1


def _tls_args(ca: Path, client: tuple[Path, Path] | None = None) -> list[str]:
    args = ["--tls-ca", str(ca), "--tls-server-name", SERVER_NAME]
    if client:
        args += ["--tls-cert", str(client[0]), "--tls-key", str(client[1])]
    return args


def _refused(mesh: Mesh, agent: Proc, agent_id: str, *needles: str) -> None:
    """The agent logs one of needles and never connects."""
    wait_for(lambda: any(n in agent.log() for n in needles), 15, f"agent log with one of {needles}")
    assert not _connected(mesh, agent_id)
    agent.stop()


def _one_handshake_line(mesh: Mesh, cause: str) -> None:
    """gRPC core's dozens of SSL_ERROR_SSL lines became one line naming peer and cause."""
    log = mesh.collector.log() if mesh.collector else ""
    pattern = re.compile(r"TLS handshake with 127\.0\.0\.1:\d+ failed: " + re.escape(cause))
    lines = [line for line in log.splitlines() if pattern.search(line)]
    assert len(lines) == 1, log[-3000:]
    assert "SSL_ERROR_SSL" not in log and "ssl_transport_security" not in log


def test_good_ca_connects(tls_mesh: Mesh, pki: Pki) -> None:
    collector = tls_mesh.collector
    assert collector is not None
    agent = tls_mesh.start_agent("tls-good", "BR", *_tls_args(pki.ca_path))
    wait_for(lambda: _connected(tls_mesh, "tls-good"), 20, "TLS agent connected")
    collector_log = collector.log()
    assert "serving gRPC (TLS) on" in collector_log
    assert "agent tls-good (BR) connected from 127.0.0.1:" in collector_log
    assert "over TLS, version" in collector_log
    agent.stop()
    try:
        wait_for(
            lambda: "agent tls-good (BR) from 127.0.0.1:" in collector.log(),
            10,
            "the disconnect line",
        )
    except AssertionError as exc:  # a rare failure: show what each side logged
        raise AssertionError(
            f"{exc}\ncollector:\n{collector.log(20)}\nagent:\n{agent.log(20)}"
        ) from None


def test_wrong_ca_is_refused(tls_mesh: Mesh, pki: Pki) -> None:
    agent = tls_mesh.start_agent("tls-wrongca", "BR", *_tls_args(pki.other_ca_path))
    _refused(
        tls_mesh, agent, "tls-wrongca", "CERTIFICATE_VERIFY_FAILED", "certificate verify failed"
    )
    assert "is not signed by --tls-ca or has expired" in agent.log()


def test_plaintext_client_is_refused(tls_mesh: Mesh) -> None:
    agent = tls_mesh.start_agent("tls-plain", "BR")  # loopback: plaintext without --tls-ca
    _refused(tls_mesh, agent, "tls-plain", "UNAVAILABLE")
    assert "the collector speaks TLS: give --tls-ca" in agent.log()
    _one_handshake_line(tls_mesh, "plaintext client on a TLS port (the agent needs --tls-ca)")


def test_expired_server_certificate_is_refused(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki
) -> None:
    mesh = _tls_mesh(tmp_path_factory, pki, expired=True)
    try:
        agent = mesh.start_agent("tls-expired", "BR", *_tls_args(pki.ca_path))
        _refused(
            mesh,
            agent,
            "tls-expired",
            "CERTIFICATE_VERIFY_FAILED",
            "certificate has expired",
            "expired",
        )
    finally:
        mesh.stop()


def test_mtls_certificate_must_name_the_agent(mtls_mesh: Mesh, pki: Pki) -> None:
    good = mtls_mesh.start_agent("mtls-a", "BR", *_tls_args(pki.ca_path, pki.client("mtls-a")))
    # A valid certificate of the same CA, but for another agent id: PERMISSION_DENIED.
    thief = mtls_mesh.start_agent("mtls-b", "BR", *_tls_args(pki.ca_path, pki.client("mtls-a")))
    nocert = mtls_mesh.start_agent("mtls-c", "BR", *_tls_args(pki.ca_path))
    wait_for(lambda: _connected(mtls_mesh, "mtls-a"), 20, "mTLS agent connected")
    _refused(mtls_mesh, thief, "mtls-b", "PERMISSION_DENIED")
    assert "client certificate does not name agent 'mtls-b'" in thief.log()
    assert "the client certificate does not match the agent id" in thief.log()
    _refused(mtls_mesh, nocert, "mtls-c", "UNAVAILABLE")
    assert "the collector requires a client certificate: give --tls-cert/--tls-key" in nocert.log()
    _one_handshake_line(mtls_mesh, "client sent no certificate")
    collector_log = mtls_mesh.collector.log() if mtls_mesh.collector else ""
    assert "agent mtls-a (BR) connected from 127.0.0.1:" in collector_log
    assert "over mTLS, version" in collector_log
    assert "serving gRPC (mTLS, client certificates required)" in collector_log
    assert (
        total(mtls_mesh.metrics(), "probemesh_ingest_rejected_total", reason="cert_identity") >= 1
    )
    good.stop()


def test_client_certificate_rotation_while_the_agent_runs(
    mtls_mesh: Mesh, pki: Pki, tmp_path: Path
) -> None:
    """The agent re-reads its certificate files at each connect: a fix needs no restart."""
    cert, key = tmp_path / "agent.crt", tmp_path / "agent.key"
    wrong = pki.client("someone-else")  # valid, but names another agent: refused
    cert.write_bytes(wrong[0].read_bytes())
    key.write_bytes(wrong[1].read_bytes())
    agent = mtls_mesh.start_agent("mtls-rot", "BR", *_tls_args(pki.ca_path, (cert, key)))
    wait_for(lambda: "PERMISSION_DENIED" in agent.log(), 20, "first identity refused")
    assert not _connected(mtls_mesh, "mtls-rot")
    right = pki.client("mtls-rot")
    key.write_bytes(right[1].read_bytes())
    cert.write_bytes(right[0].read_bytes())
    wait_for(lambda: _connected(mtls_mesh, "mtls-rot"), 40, "agent connected after rotation")
    assert agent.alive()
    assert "collector TLS files changed" in agent.log()
    agent.stop()


def _handshake(port: int, version: ssl.TLSVersion) -> str:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        ctx.wrap_socket(sock) as tls,
    ):
        return tls.version() or ""


def test_collector_refuses_tls_below_1_2(tls_mesh: Mesh) -> None:
    assert _handshake(tls_mesh.grpc_port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, OSError)):
            _handshake(tls_mesh.grpc_port, old)


def test_agent_channel_refuses_tls_below_1_2(pki: Pki) -> None:
    """The agent's gRPC channel (same gRPC core and credentials) against a TLS 1.1-only server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_alpn_protocols(["h2"])
    ctx.load_cert_chain(*pki.server)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    outcome: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.append(f"negotiated {tls.version()}")
        except (ssl.SSLError, OSError) as exc:
            outcome.append(f"refused: {exc}")

    threading.Thread(target=serve, daemon=True).start()

    async def attempt() -> bool:
        creds = grpc.ssl_channel_credentials(pki.ca_path.read_bytes())
        options = [("grpc.ssl_target_name_override", SERVER_NAME)]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), 3)
                return True
            except TimeoutError:
                return False

    try:
        assert asyncio.run(attempt()) is False
        wait_for(lambda: outcome, 5, "server side of the handshake")
        assert outcome[0].startswith("refused"), outcome
    finally:
        listener.close()
