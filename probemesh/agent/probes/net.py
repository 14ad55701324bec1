"""Resolution, connection and TLS helpers shared by the probes.

Every probe resolves afresh and opens a fresh socket: reusing either would
measure nothing. The helpers record the blackbox resolve metrics and enforce the
agent's address policy on the resolved address.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from probemesh.agent.probes.result import ProbeFailure, ProbeResult, Reason, Sample
from probemesh.agent.probes.tlsconn import ClientContext, TLSPeer, build_context
from probemesh.agent.safety import AddressPolicy
from probemesh.agent.secrets import SecretFiles
from probemesh.modules import TLSConfig

_TLS_VERSION_NAMES = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
}
_DER = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class ProbeEnv:
    """What a probe needs from the agent besides its target and settings."""

    source_address: str = ""
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    secrets: SecretFiles = field(default_factory=SecretFiles)


@dataclass(frozen=True)
class Resolved:
    """A resolved target address."""

    family: socket.AddressFamily
    address: str


async def resolve(
    host: str, preferred: str, fallback: bool, env: ProbeEnv, result: ProbeResult
) -> Resolved:
    """Resolve host like blackbox_exporter: preferred family first, then fallback.

    Records probe_dns_lookup_time_seconds and probe_ip_protocol, then applies
    the address policy to the chosen address.
    """
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    want = socket.AF_INET6 if preferred == "ip6" else socket.AF_INET
    families = [want] + (
        [socket.AF_INET if want == socket.AF_INET6 else socket.AF_INET6] if fallback else []
    )
    chosen: Resolved | None = None
    last_error: Exception | None = None
    try:
        literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        literal = None
    if literal is not None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family in families:
            chosen = Resolved(family, host)
    elif host.rstrip(".").lower().endswith(".invalid") or host.lower() == "invalid":
        # RFC 6761 6.4: never resolvable; answer at once without asking a server.
        last_error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    else:
        for family in families:
            try:
                infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                last_error = exc
                continue
            if infos:
                chosen = Resolved(family, str(infos[0][4][0]))
                break
    result.add("probe_dns_lookup_time_seconds", time.perf_counter() - start)
    if chosen is None:
        result.add("probe_ip_protocol", 0)
        detail = f": {last_error.strerror}" if isinstance(last_error, socket.gaierror) else ""
        raise ProbeFailure(
            Reason.DNS, f"cannot resolve {host!r} as {'/'.join(map(_fam, families))}{detail}"
        )
    result.add("probe_ip_protocol", 6 if chosen.family == socket.AF_INET6 else 4)
    refusal = env.policy.refusal(chosen.address)
    if refusal:
        raise ProbeFailure(Reason.POLICY, refusal)
    return chosen


def _fam(family: socket.AddressFamily) -> str:
    return "ip6" if family == socket.AF_INET6 else "ip4"


async def connect(target: Resolved, port: int, env: ProbeEnv) -> socket.socket:
    """Open a fresh non-blocking TCP connection, bound to the source address."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if env.source_address:
            sock.bind((env.source_address, 0))
        await loop.sock_connect(sock, (target.address, port))
    except BaseException:
        sock.close()
        raise
    return sock


# Built contexts by (kind, tls_config, ALPN, secrets dir), each with the stamps of
# its files when it was built: loading CAs costs milliseconds, a stat does not.
_CONTEXTS: dict[tuple, tuple[tuple | None, object]] = {}
_MAX_CONTEXTS = 256
_TLS_FILES = ("ca_file", "cert_file", "key_file")


def client_context(
    config: TLSConfig, secrets: SecretFiles, alpn: tuple[str, ...] = ()
) -> ssl.SSLContext:
    """The ``ssl`` context for a tls_config, rebuilt when a CA, certificate or key file changes.

    For the probes that run TLS through asyncio (tcp, dns, grpc) and for
    evidence; see ``_cached`` for rotation and the secrets dir.
    """

    def build(ca_path: Path | None, cert_path: Path | None, key_path: Path | None) -> object:
        context = ssl.create_default_context(cafile=ca_path)
        context.hostname_checks_common_name = False  # as Go: host names come from the SAN only
        if cert_path:
            context.load_cert_chain(cert_path, key_path)
        if config.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if config.min_version:
            context.minimum_version = _TLS_VERSIONS[config.min_version]
        if config.max_version:
            context.maximum_version = _TLS_VERSIONS[config.max_version]
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    context = _cached("ssl", config, secrets, alpn, build)
    assert isinstance(context, ssl.SSLContext)
    return context


def probe_context(
    config: TLSConfig, secrets: SecretFiles, alpn: tuple[str, ...] = ()
) -> ClientContext:
    """The ``TLSConnection`` context for a tls_config (http and tls probes), cached like ``client_context``."""

    def build(ca_path: Path | None, cert_path: Path | None, key_path: Path | None) -> object:
        return build_context(config, ca_path, cert_path, key_path, alpn)

    context = _cached("probe", config, secrets, alpn, build)
    assert isinstance(context, ClientContext)
    return context


def _cached(
    kind: str,
    config: TLSConfig,
    secrets: SecretFiles,
    alpn: tuple[str, ...],
    build: Callable[[Path | None, Path | None, Path | None], object],
) -> object:
    """A built context, rebuilt when a CA, certificate or key file changes.

    Like Prometheus, the files are checked at every use, so rotated material is
    picked up without a restart. Files resolve inside the agent's secrets dir
    only: a cached context is reused while each name still stats to the same
    file (device, inode, mtime, size), which one stat per file shows without
    resolving the path again; any change, a symlink swapped to another file
    included, resolves and checks the names afresh before anything is read.
    Unreadable files are the agent's configuration problem, reported as reason
    ``other``, never as the target being unreachable.
    """
    key = (kind, config, alpn, secrets.root)
    cached = _CONTEXTS.get(key)
    if cached is not None and cached[0] is not None and cached[0] == _name_stamps(config, secrets):
        return cached[1]
    paths = tls_paths(config, secrets)
    file_stamps(paths)  # a missing file fails the probe with its name
    stamp = _name_stamps(config, secrets)  # before loading: a change while loading rebuilds
    try:
        context = build(*paths)
    except (OSError, ssl.SSLError, SSL.Error) as exc:
        raise ProbeFailure(
            Reason.OTHER, f"tls_config: cannot load CA or client certificate: {exc}"
        ) from None
    if key not in _CONTEXTS and len(_CONTEXTS) >= _MAX_CONTEXTS:
        del _CONTEXTS[next(iter(_CONTEXTS))]
    _CONTEXTS[key] = (stamp, context)
    return context


def _name_stamps(config: TLSConfig, secrets: SecretFiles) -> tuple | None:
    """(device, inode, mtime, size) of each file a tls_config names, symlinks followed.

    Only called for a tls_config whose names were resolved inside the secrets
    dir; None when a file cannot be stat'ed, so the caller resolves afresh.
    """
    stamps: list[tuple[int, int, int, int] | None] = []
    for name in _TLS_FILES:
        value = getattr(config, name)
        if not value:
            stamps.append(None)
            continue
        if secrets.root is None:
            return None
        try:
            info = os.stat(os.path.join(secrets.root, value))
        except OSError:
            return None
        stamps.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
    return tuple(stamps)


def tls_paths(config: TLSConfig, secrets: SecretFiles) -> tuple[Path | None, ...]:
    """(ca, cert, key) of a tls_config resolved inside the secrets dir; None where unset."""
    return tuple(
        secrets.path(f"tls_config.{name}", getattr(config, name)) if getattr(config, name) else None
        for name in _TLS_FILES
    )


def file_stamps(paths: tuple[Path | None, ...]) -> tuple[tuple[int, int] | None, ...]:
    """(mtime, size) of each file, to notice rotation; a missing file fails the probe."""
    stamps: list[tuple[int, int] | None] = []
    for path in paths:
        if path is None:
            stamps.append(None)
            continue
        try:
            info = os.stat(path)
        except OSError as exc:
            raise ProbeFailure(
                Reason.OTHER, f"tls_config: cannot read {path.name}: {exc.strerror}"
            ) from None
        stamps.append((info.st_mtime_ns, info.st_size))
    return tuple(stamps)


# Certificate samples by the DER bytes of the presented and verified chains. They
# are a function of those bytes alone, so each distinct chain is decoded into
# Python once; OpenSSL still parses and verifies the chain in every handshake.
_CHAIN_SAMPLES: dict[tuple, list[Sample]] = {}
_MAX_CHAINS = 1024
_NAME_KEYS = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O", NameOID.COUNTRY_NAME: "C"}


def record_tls(peer: TLSPeer, result: ProbeResult) -> None:
    """Record blackbox's TLS metrics for a finished handshake.

    Like blackbox, probe_ssl_earliest_cert_expiry is the earliest notAfter of
    every certificate the server presented, and
    probe_ssl_last_chain_expiry_timestamp_seconds the earliest notAfter of the
    verified chain (up to the trust anchor), only when verification ran.
    """
    version = _TLS_VERSION_NAMES.get(peer.version)
    if version:
        result.add("probe_tls_version_info", 1, version=version)
    key = (peer.verified, peer.presented, peer.verified_chain)
    samples = _CHAIN_SAMPLES.get(key)
    if samples is None:
        sink = ProbeResult()
        _record_chain(peer, sink)
        samples = sink.samples
        if len(_CHAIN_SAMPLES) >= _MAX_CHAINS:
            del _CHAIN_SAMPLES[next(iter(_CHAIN_SAMPLES))]
        _CHAIN_SAMPLES[key] = samples
    result.samples.extend(samples)


def ssl_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSPeer:
    """The ``TLSPeer`` of an ``ssl``-module connection (the probes that use asyncio's TLS).

    Python 3.11 exposes both chains only on the private ``_sslobj``; when it is
    missing the leaf alone is used.
    """
    verified = ssl_object.context.verify_mode != ssl.CERT_NONE
    version = ssl_object.version() or ""
    raw = getattr(ssl_object, "_sslobj", None)
    try:
        if raw is not None:
            presented = tuple(c.public_bytes(_DER) for c in raw.get_unverified_chain() or ())
            chain = tuple(c.public_bytes(_DER) for c in raw.get_verified_chain() or ())
            if presented:
                return TLSPeer(version, verified, presented, chain if verified else ())
    except (AttributeError, ssl.SSLError, ValueError):
        pass
    leaf = ssl_object.getpeercert(binary_form=True)
    presented = (leaf,) if leaf else ()
    return TLSPeer(version, verified, presented, presented if verified else ())


def _record_chain(peer: TLSPeer, result: ProbeResult) -> None:
    if not peer.presented:
        return
    presented = [x509.load_der_x509_certificate(der) for der in peer.presented]
    verified = [x509.load_der_x509_certificate(der) for der in peer.verified_chain]
    result.add("probe_ssl_earliest_cert_expiry", min(_not_after(cert) for cert in presented))
    if verified:
        result.add(
            "probe_ssl_last_chain_expiry_timestamp_seconds",
            min(_not_after(cert) for cert in verified),
        )
    leaf = presented[0]
    result.add(
        "probe_ssl_last_chain_info",
        1,
        fingerprint_sha256=hashlib.sha256(peer.presented[0]).hexdigest(),
        subject=distinguished_name(leaf.subject),
        issuer=distinguished_name(leaf.issuer),
    )


def _not_after(cert: x509.Certificate) -> float:
    return cert.not_valid_after_utc.timestamp()


def distinguished_name(name: x509.Name) -> str:
    """Render a certificate name like Go's pkix.Name.String() (CN, O and C)."""
    parts = [
        f"{_NAME_KEYS[attr.oid]}={attr.value!s}"
        for rdn in name.rdns
        for attr in rdn
        if attr.oid in _NAME_KEYS
    ]
    return ",".join(reversed(parts))[:128]
