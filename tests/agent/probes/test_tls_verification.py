"""Certificate verification: the probes' TLS engine is as strict as the ``ssl`` module.

The http and tls probes run TLS on pyOpenSSL (``tlsconn``); the tcp probe runs
it through asyncio on the ``ssl`` module. Every case below is probed by all
three against the same server, and all must give the expected verdict with the
same failure message: chain, validity dates, host names (wildcards, partial
wildcards, a name only in the subject CN, refused as Go does), IP addresses, missing
intermediates, the system trust store, insecure_skip_verify, TLS versions.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from probemesh.agent.probes.result import ProbeResult, Reason
from tests.agent.probes.probe_helpers import read_request, response, run, serve

NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Case:
    name: str
    names: tuple[str, ...]  # DNS names and IP addresses in the SAN; empty: no SAN
    server_name: str  # tls_config.server_name; empty: the target's IP address
    ok: bool
    common_name: str = "leaf"
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1)
    not_after: datetime.datetime = NOW + datetime.timedelta(days=30)
    other_ca: bool = False
    intermediate: str = ""  # "sent": the server sends it; "missing": it does not
    settings: tuple[tuple[str, object], ...] = ()  # more tls_config keys
    server_version: ssl.TLSVersion | None = None  # the server's only version
    # asyncio's TLS server hangs up on a version it refuses, without an alert
    reason: Reason = Reason.TLS


CASES = [
    Case("good", ("localhost",), "localhost", True),
    Case("expired", ("localhost",), "localhost", False, not_after=NOW - datetime.timedelta(1)),
    Case("not yet valid", ("localhost",), "localhost", False, not_before=NOW + datetime.timedelta(1)),
    Case("wrong host", ("elsewhere.example",), "localhost", False),
    Case("unknown CA", ("localhost",), "localhost", False, other_ca=True),
    Case("intermediate sent", ("localhost",), "localhost", True, intermediate="sent"),
    Case("intermediate missing", ("localhost",), "localhost", False, intermediate="missing"),
    Case("wildcard", ("*.example.test",), "a.example.test", True),
    Case("wildcard, two labels", ("*.example.test",), "a.b.example.test", False),
    Case("wildcard, bare domain", ("*.example.test",), "example.test", False),
    Case("partial wildcard", ("f*.example.test",), "foo.example.test", False),
    Case("case-insensitive name", ("LocalHost",), "localhost", True),
    Case("IP address in SAN", ("127.0.0.1",), "", True),
    Case("IP address not in SAN", ("localhost",), "", False),
    Case("IP address only as DNS name", ("localhost", "dns:127.0.0.1"), "", False),
    Case("name only in subject CN", (), "localhost", False, common_name="localhost"),
    Case("name in CN, SAN without it", ("other.example",), "localhost", False, "localhost"),
    Case("insecure_skip_verify", ("elsewhere.example",), "localhost", True, other_ca=True,
         settings=(("insecure_skip_verify", True),)),
    Case("system trust store", ("localhost",), "localhost", False, settings=(("ca_file", ""),)),
    Case("min_version above server", ("localhost",), "localhost", False,
         settings=(("min_version", "TLS13"),), server_version=ssl.TLSVersion.TLSv1_2,
         reason=Reason.CONNECT),
    Case("max_version below server", ("localhost",), "localhost", False,
         settings=(("max_version", "TLS12"),), server_version=ssl.TLSVersion.TLSv1_3,
         reason=Reason.CONNECT),
    Case("TLS 1.2 server", ("localhost",), "localhost", True,
         server_version=ssl.TLSVersion.TLSv1_2),
]  # fmt: skip


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject_cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    names: tuple[str, ...] = (),
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=30),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    sans: list[x509.GeneralName] = []
    for name in names:
        if name.startswith("dns:"):
            sans.append(x509.DNSName(name[4:]))
            continue
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> tuple[x509.Certificate, object, Path]:
    """A root CA and the secrets dir holding it as ca.pem."""
    key = _key()
    cert = _cert("probemesh test root", key, None, key, ca=True)
    secrets = tmp_path_factory.mktemp("verification")
    (secrets / "ca.pem").write_bytes(_pem(cert))
    return cert, key, secrets


def _server(case: Case, root: tuple[x509.Certificate, object, Path], tmp: Path) -> ssl.SSLContext:
    """A server context presenting the case's certificate chain."""
    root_cert, root_key = root[0], root[1]
    if case.other_ca:
        root_key = _key()
        root_cert = _cert("another root", root_key, None, root_key, ca=True)  # type: ignore[arg-type]
    chain: list[x509.Certificate] = []
    issuer, issuer_key = root_cert, root_key
    if case.intermediate:
        inter_key = _key()
        inter = _cert("intermediate", inter_key, root_cert, root_key, ca=True)  # type: ignore[arg-type]
        if case.intermediate == "sent":
            chain.append(inter)
        issuer, issuer_key = inter, inter_key
    key = _key()
    leaf = _cert(
        case.common_name,
        key,
        issuer,
        issuer_key,  # type: ignore[arg-type]
        ca=False,
        names=case.names,
        not_before=case.not_before,
        not_after=case.not_after,
    )
    (tmp / "chain.pem").write_bytes(_pem(leaf, *chain))
    (tmp / "key.pem").write_bytes(_key_pem(key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp / "chain.pem", tmp / "key.pem")
    if case.server_version:
        context.minimum_version = context.maximum_version = case.server_version
    return context


async def _http_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(response(200, b"ok"))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_all_tls_engines_agree(
    case: Case, root: tuple[x509.Certificate, object, Path], tmp_path: Path
) -> None:
    secrets = root[2]
    tls_config: dict[str, object] = {"ca_file": "ca.pem", "server_name": case.server_name}
    tls_config.update(dict(case.settings))
    tls_config = {key: value for key, value in tls_config.items() if value != ""}
    ip4 = {"preferred_ip_protocol": "ip4"}
    results: dict[str, ProbeResult] = {}
    async with serve(_http_ok, _server(case, root, tmp_path)) as port:
        results["tls (pyOpenSSL)"] = await run(
            "tls", f"127.0.0.1:{port}", {**ip4, "tls_config": tls_config}, secrets=secrets
        )
        results["http (pyOpenSSL)"] = await run(
            "http",
            f"https://127.0.0.1:{port}/",
            {**ip4, "tls_config": tls_config, "enable_http2": False},
            secrets=secrets,
        )
        results["tcp (ssl module)"] = await run(
            "tcp",
            f"127.0.0.1:{port}",
            {**ip4, "tls": True, "tls_config": tls_config},
            secrets=secrets,
        )
    for engine, result in results.items():
        if case.ok:
            assert result.success, f"{engine}: {result.message}"
        else:
            assert result.reason == case.reason, f"{engine}: {result.reason} {result.message}"
    messages = {engine: result.message for engine, result in results.items()}
    assert len(set(messages.values())) == 1, messages


async def test_sni_is_the_server_name_and_absent_for_ip_addresses(
    ca: trustme.CA, ca_file: str, secrets_dir: Path
) -> None:
    """Like Go and the ssl module: SNI carries the name, never an IP literal."""
    seen: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    context.sni_callback = lambda _obj, name, _ctx: seen.append(name)  # type: ignore[assignment,misc]
    tls = {"ca_file": ca_file}
    async with serve(_http_ok, context) as port:
        named = await run(
            "tls",
            f"127.0.0.1:{port}",
            {"tls_config": {**tls, "server_name": "localhost"}},
            secrets=secrets_dir,
        )
        by_address = await run("tls", f"127.0.0.1:{port}", {"tls_config": tls}, secrets=secrets_dir)
    assert named.success, named.message
    assert by_address.success, by_address.message
    assert seen == ["localhost", None]


async def test_verification_failure_names_the_cause(
    ca_file: str, other_host_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """OpenSSL's verify result is kept on the exception, as the ssl module keeps it."""
    from probemesh.agent.probes.net import connect, probe_context, resolve
    from probemesh.agent.probes.tlsconn import TLSConnection
    from probemesh.modules import TLSConfig
    from tests.agent.probes.probe_helpers import LOOPBACK_ENV, server_context

    async with serve(_http_ok, server_context(other_host_cert)) as port:
        resolved = await resolve("127.0.0.1", "ip4", False, LOOPBACK_ENV, ProbeResult())
        sock = await connect(resolved, port, LOOPBACK_ENV)
        from probemesh.agent.secrets import SecretFiles

        context = probe_context(TLSConfig(ca_file=ca_file), SecretFiles(secrets_dir))
        conn = TLSConnection(sock, context, "localhost")
        try:
            with pytest.raises(ssl.SSLCertVerificationError) as caught:
                await conn.handshake()
        finally:
            conn.close()
    assert caught.value.reason == "CERTIFICATE_VERIFY_FAILED"
    assert "hostname mismatch" in caught.value.verify_message.lower()
