"""One-line enrollment against a real TLS collector with trustme certificates.

The join string pins the collector's CA. A node that joins with the right pin
connects; a wrong pin, an impostor with its own CA, and an impostor that sends
the real (public) CA certificate after its own leaf are all refused, and the
state dir is left unwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from probemesh.enroll import PREFIX, JoinString
from tests.harness import ROOT, Mesh, Proc, run_cli, total, wait_for
from tests.security.conftest import checks_yaml


class Collector:
    """A TLS collector whose certificate file holds the server certificate then its CA."""

    def __init__(self, root: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert(*names)
        self.cert = root / "server-chain.pem"
        self.cert.write_bytes(leaf.cert_chain_pems[0].bytes() + self.ca.cert_pem.bytes())
        self.key = root / "server.key"
        self.key.write_bytes(leaf.private_key_pem.bytes())
        self.ca_path = root / "ca.pem"
        self.ca_path.write_bytes(self.ca.cert_pem.bytes())
        self.mesh = Mesh(root / "mesh", checks_yaml(2))
        self.mesh.root.mkdir()
        self.mesh.start_collector("--tls-cert", str(self.cert), "--tls-key", str(self.key))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.mesh.grpc_port}"

    @property
    def ca_pin(self) -> str:
        der = ssl.PEM_cert_to_DER_cert(self.ca.cert_pem.bytes().decode())
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def join_string(self, agent_id: str, *extra: str, collector: str = "") -> str:
        result = run_cli(
            "token", "create", "--data-dir", str(self.mesh.data_dir),
            "--agent-id", agent_id, "--country", "BR",
            "--collector-url", collector or self.address, *extra,
        )  # fmt: skip
        token, join = result.stdout.strip().splitlines()
        assert token.startswith("pm_")
        return join


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    c = Collector(tmp_path_factory.mktemp("enroll"))
    yield c
    c.mesh.stop()


def _connected(collector: Collector, agent: str) -> bool:
    return total(collector.mesh.metrics(), "probemesh_agent_connected", agent=agent) == 1


def _edited(join: str, **fields: object) -> str:
    """The join string with some fields replaced, as an attacker or a typo would."""
    payload = join.removeprefix(PREFIX)
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(fields)
    return PREFIX + base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def _join_fails(join: str, state_dir: Path) -> str:
    result = run_cli("agent", "join", join, "--state-dir", str(state_dir), check=False)
    assert result.returncode == 2, result
    assert not state_dir.exists(), "a refused join must write nothing"
    return result.stderr.strip().splitlines()[-1]


def test_join_string_carries_the_ca_pin(collector: Collector) -> None:
    fetched = JoinString.decode(collector.join_string("pin-a"))
    from_file = JoinString.decode(
        collector.join_string("pin-b", "--pin-cert", str(collector.ca_path))
    )
    assert fetched.pin == from_file.pin == collector.ca_pin
    assert fetched.collectors == (collector.address,)
    assert (fetched.agent_id, fetched.country) == ("pin-a", "BR")
    assert fetched.token.startswith("pm_")


def test_join_with_the_right_pin_enrolls_and_runs(collector: Collector, tmp_path: Path) -> None:
    state = tmp_path / "node"
    join = collector.join_string("node-1")
    agent = Proc(["agent", "join", join, "--state-dir", str(state)], tmp_path / "join.log").start()
    try:
        wait_for(lambda: _connected(collector, "node-1"), 30, "joined agent connected")
        assert "collector certificate matches the pin" in agent.log()
        token = state / "token"
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        assert token.read_text().strip() == JoinString.decode(join).token
        assert (state / "collector-ca.pem").read_bytes() == collector.ca.cert_pem.bytes()
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        assert agent.stop() == 0
    # Afterwards the state dir alone is enough.
    again = Proc(["agent", "--state-dir", str(state)], tmp_path / "again.log").start()
    try:
        wait_for(lambda: _connected(collector, "node-1"), 30, "agent from its state dir")
    finally:
        again.stop()
    # A second join into the same directory is refused and changes nothing.
    before = (state / "agent.yml").read_text()
    result = run_cli("agent", "join", join, "--state-dir", str(state), check=False)
    assert result.returncode == 1 and "enrolled already" in result.stderr
    assert (state / "agent.yml").read_text() == before


def test_wrong_pin_is_refused_and_nothing_written(collector: Collector, tmp_path: Path) -> None:
    join = _edited(collector.join_string("wrong-pin"), pin="sha256:" + "0" * 64)
    line = _join_fails(join, tmp_path / "node")
    assert f"collector {collector.address}: no certificate it presents has the pinned hash" in line


class Impostor:
    """A TLS server on loopback answering with its own certificate chain (a man in the middle)."""

    def __init__(self, root: Path, chain_pem: bytes, key_pem: bytes) -> None:
        cert, key = root / "impostor.pem", root / "impostor.key"
        cert.write_bytes(chain_pem)
        key.write_bytes(key_pem)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.set_alpn_protocols(["h2"])
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    def close(self) -> None:
        self.listener.close()


def test_man_in_the_middle_is_refused(collector: Collector, tmp_path: Path) -> None:
    """The real join string, but the node's traffic reaches an impostor."""
    join = collector.join_string("mitm-1")
    stranger = trustme.CA()
    leaf = stranger.issue_cert("127.0.0.1")
    key = leaf.private_key_pem.bytes()
    # With its own CA, the pin matches nothing it presents.
    impostor = Impostor(tmp_path, leaf.cert_chain_pems[0].bytes() + stranger.cert_pem.bytes(), key)
    try:
        line = _join_fails(_edited(join, collectors=[impostor.address]), tmp_path / "node-a")
        assert "no certificate it presents has the pinned hash" in line
    finally:
        impostor.close()
    # The real CA certificate is public: an impostor may send it after its own
    # leaf. The hash then matches, but the chain does not verify against it.
    copied = leaf.cert_chain_pems[0].bytes() + collector.ca.cert_pem.bytes()
    impostor = Impostor(tmp_path, copied, key)
    try:
        line = _join_fails(_edited(join, collectors=[impostor.address]), tmp_path / "node-b")
        assert "does not verify against the pinned one" in line
    finally:
        impostor.close()


def test_certificate_for_another_name_needs_tls_server_name(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A collector reached by IP whose certificate names only collector.test."""
    named = Collector(tmp_path_factory.mktemp("named"), names=("collector.test",))
    try:
        result = run_cli(
            "token", "create", "--data-dir", str(named.mesh.data_dir), "--agent-id", "named-1",
            "--country", "BR", "--collector-url", named.address, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "its certificate does not name 127.0.0.1 (IP address mismatch" in result.stderr
        assert "--tls-server-name" in result.stderr
        join = named.join_string("named-1", "--tls-server-name", "collector.test")
        assert JoinString.decode(join).server_name == "collector.test"
        line = _join_fails(_edited(join, server_name="other.test"), tmp_path / "unnamed")
        assert "its certificate does not name other.test (Hostname mismatch" in line
        state = tmp_path / "node"
        assert run_cli("agent", "join", join, "--state-dir", str(state), "--no-run").returncode == 0
        assert "tls-server-name: collector.test" in (state / "agent.yml").read_text()
        agent = Proc(["agent", "--state-dir", str(state)], tmp_path / "agent.log").start()
        try:
            wait_for(lambda: _connected(named, "named-1"), 30, "agent verifying collector.test")
        finally:
            agent.stop()
    finally:
        named.mesh.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the install script runs as root (runuser)")
def test_install_script_enrolls_and_writes_the_unit(collector: Collector, tmp_path: Path) -> None:
    """deploy/install-agent.sh with this venv, root as the service user and --no-start."""
    units, state = tmp_path / "units", tmp_path / "state"

    def install(join: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(ROOT / "deploy" / "install-agent.sh"), "--venv", sys.prefix,
             "--state-dir", str(state), "--user", "root", "--unit-dir", str(units), "--no-start"],
            env={**os.environ, "PROBEMESH_JOIN": join}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    join = collector.join_string("installed-1")
    bad = install(_edited(join, pin="sha256:" + "1" * 64))
    assert bad.returncode == 2 and "no certificate it presents has the pinned hash" in bad.stderr
    assert not state.exists() and not units.exists()
    good = install(join)
    assert good.returncode == 0, good.stderr
    unit = (units / "probemesh-agent.service").read_text()
    assert (
        f"ExecStart={sys.prefix}/bin/probemesh agent --state-dir {state} --metrics-listen 127.0.0.1:7445"
        in unit
    )
    assert "AmbientCapabilities=CAP_NET_RAW" in unit and "User=root" in unit
    assert stat.S_IMODE((state / "token").stat().st_mode) == 0o600
    agent = Proc(["agent", "--state-dir", str(state)], tmp_path / "agent.log").start()
    try:
        wait_for(lambda: _connected(collector, "installed-1"), 30, "installed agent connected")
    finally:
        agent.stop()
    again = install("")  # a re-run keeps the enrollment
    assert again.returncode == 0 and "enrolled already" in again.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello", "expected it to start with 'pmjoin1_'"),
        (PREFIX + "!!!", "damaged"),
        (PREFIX + base64.urlsafe_b64encode(b'{"pin": "x"}').decode(), "missing collectors"),
    ],
)
def test_damaged_join_string_is_a_clear_error(text: str, expected: str, tmp_path: Path) -> None:
    assert expected in _join_fails(text, tmp_path / "node")
