"""Evidence: a closer look at a check that failed, for the collector's diagnosis.

A probe says *that* it failed; evidence says what the network did. Like OONI's
web_connectivity, it measures each layer on its own: the agent's resolver's
answer, a TCP connect to every address, the TLS handshake, one GET, and a
traceroute. The collector compares this with the evidence of agents where the
check succeeds (see collector/diagnosis.py).

Nothing here runs while probes succeed. The gatherer is rate-limited per
check: a failure gets evidence when none was gathered for the check within
``every`` seconds, or when the failure changed (another reason or message);
a traceroute runs at most once per check per ``path_every`` seconds, and a
failure its last traceroute does not speak of (one that follows a recovery,
or fails another way), or the collector's request, gets one once
``PATH_FLOOR`` seconds have passed since the last: the collector judges a
failure only by a traceroute taken during it. Every
address goes through the agent's address policy first, so neither evidence
nor a traceroute reaches a target the SSRF guard refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.rcode
import dns.resolver
from cryptography import x509

from probemesh.agent.probes.net import ProbeEnv, client_context, distinguished_name
from probemesh.agent.probes.result import ProbeFailure
from probemesh.agent.runner import PreparedCheck
from probemesh.agent.traceroute import trace
from probemesh.modules import TLSConfig
from probemesh.targets import split_host_port
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

EVIDENCE_EVERY = 60.0
PATH_EVERY = 300.0
PATH_FLOOR = 60.0  # seconds between two traceroutes of a check, whatever asks for them
SIGNATURE_FLOOR = 5.0  # a changed failure is looked at again, but not more often than this
MAX_ADDRESSES = 4
MAX_BODY = 1 << 20
MIN_BUDGET = 2.0  # seconds per step, even for checks with a shorter timeout
# Advanced tunables, environment only: tests shorten the rate limits.
ENV_EVERY = "PROBEMESH_EVIDENCE_EVERY"
ENV_PATH_EVERY = "PROBEMESH_TRACEROUTE_EVERY"
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_ICMP_CODES = {errno.ENETUNREACH: 0, errno.EHOSTUNREACH: 1}


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", name, raw, default)
        return default
    return value if value >= 0 else default


@dataclass(frozen=True)
class Endpoint:
    """Where a check connects: host, port, whether TLS runs, the HTTP URL if any."""

    host: str
    port: int
    tls: bool
    url: str = ""
    server_name: str = ""
    tls_config: TLSConfig = field(default_factory=TLSConfig)


def endpoint_of(prepared: PreparedCheck) -> Endpoint | None:
    """The endpoint of an http, tcp, tls or grpc check; None for probers without one."""
    check, settings = prepared.check, prepared.settings
    if settings is None:
        return None
    tls_config = getattr(settings, "tls_config", TLSConfig())
    if check.prober == "http":
        parts = urlsplit(check.target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        is_tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if is_tls else 80)
        except ValueError:
            return None
        return Endpoint(
            parts.hostname, port, is_tls, check.target, tls_config.server_name, tls_config
        )
    if check.prober in ("tcp", "tls", "grpc"):
        try:
            host, port = split_host_port(check.target)
        except ValueError:
            return None
        is_tls = check.prober == "tls" or bool(getattr(settings, "tls", False))
        return Endpoint(host, port, is_tls, "", tls_config.server_name, tls_config)
    return None


class Gatherer:
    """Decides when to gather evidence for a check, and gathers it."""

    def __init__(self, env: ProbeEnv) -> None:
        self.env = env
        self.every = _env_seconds(ENV_EVERY, EVIDENCE_EVERY)
        self.path_every = _env_seconds(ENV_PATH_EVERY, PATH_EVERY)
        self._last: dict[str, tuple[float, str]] = {}  # check -> (when, failure signature)
        self._path_at: dict[str, float] = {}  # check -> when its last traceroute ran
        self._path_due: dict[str, float] = {}  # check -> when its next one may run
        self.clock = time.monotonic  # of the traceroutes' rate limit

    def wants(self, check: str, signature: str, now: float) -> bool:
        """Whether a failure with this signature deserves evidence now (and note it)."""
        last = self._last.get(check)
        if last is not None:
            at, previous = last
            if now - at < self.every and (signature == previous or now - at < SIGNATURE_FLOOR):
                return False
            if signature != previous:
                self.trace_sooner(check)
        self._last[check] = (now, signature)
        return True

    def trace_sooner(self, check: str) -> None:
        """A failure of the check that its last traceroute does not speak of (it
        follows a recovery, or fails another way), or the collector asks for one:
        the next traceroute may run once PATH_FLOOR has passed since the last."""
        at = self._path_at.get(check)
        if at is not None:
            self._path_due[check] = min(self._path_due[check], at + PATH_FLOOR)

    def forget(self, keep: set[str]) -> None:
        """Drop rate-limit state of checks no longer assigned."""
        for table in (self._last, self._path_at, self._path_due):
            for name in [n for n in table if n not in keep]:
                del table[name]

    async def gather(
        self, prepared: PreparedCheck, probe_success: bool, want_path: bool = True
    ) -> pb.Evidence | None:
        """Evidence for one check, or None when its prober has no endpoint."""
        endpoint = endpoint_of(prepared)
        if endpoint is None:
            return None
        budget = max(prepared.check.timeout_seconds or MIN_BUDGET, MIN_BUDGET)
        evidence = pb.Evidence(timestamp=time.time(), probe_success=probe_success)
        addresses = await self._resolve(endpoint.host, budget, evidence)
        allowed = [a for a in addresses if self.env.policy.refusal(a) is None][:MAX_ADDRESSES]
        socks = await asyncio.gather(
            *(self._connect(a, endpoint.port, budget, evidence) for a in allowed)
        )
        connected = [(a, s) for a, s in zip(allowed, socks, strict=True) if s is not None]
        try:
            if connected:
                address, sock = connected[0]
                await self._session(endpoint, address, sock, budget, evidence)
        finally:
            for _, sock in connected:
                sock.close()
        if want_path and allowed:
            await self._path(prepared.name, endpoint.port, evidence, allowed)
        return evidence

    async def _resolve(self, host: str, budget: float, evidence: pb.Evidence) -> list[str]:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            return [host]
        except OSError:
            pass
        dns_ev = evidence.dns
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.exception.DNSException as exc:
            dns_ev.rcode, dns_ev.error = "ERROR", f"no resolver configured: {exc}"
            return []
        resolver.lifetime = budget
        dns_ev.resolver = str(resolver.nameservers[0]) if resolver.nameservers else ""
        answers = await asyncio.gather(
            *(_query(resolver, host, rdtype) for rdtype in ("A", "AAAA"))
        )
        (rcode_a, addrs_a, error_a), (rcode_aaaa, addrs_aaaa, _) = answers
        dns_ev.addresses.extend(addrs_a + addrs_aaaa)
        # The A answer speaks for the name unless only AAAA resolved.
        if addrs_a or not addrs_aaaa:
            dns_ev.rcode, dns_ev.error = rcode_a, error_a
        else:
            dns_ev.rcode = rcode_aaaa
        return list(dns_ev.addresses)

    async def _connect(
        self, address: str, port: int, budget: float, evidence: pb.Evidence
    ) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        entry = evidence.tcp.add(address=address, port=port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        start = time.perf_counter()
        try:
            if self.env.source_address and (":" in self.env.source_address) == (":" in address):
                sock.bind((self.env.source_address, 0))
            async with asyncio.timeout(budget):
                await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except TimeoutError:
            entry.outcome = "timeout"
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                entry.outcome = "refused"
            elif exc.errno == errno.ETIMEDOUT:
                entry.outcome = "timeout"
            elif exc.errno in _ICMP_CODES:
                entry.outcome, entry.icmp_code = "unreachable", _ICMP_CODES[exc.errno]
            else:
                entry.outcome = "error"
        else:
            entry.outcome = "established"
            entry.seconds = round(time.perf_counter() - start, 6)
            return sock
        sock.close()
        return None

    async def _session(
        self,
        endpoint: Endpoint,
        address: str,
        sock: socket.socket,
        budget: float,
        evidence: pb.Evidence,
    ) -> None:
        """TLS (when the check uses it) then one GET (for HTTP checks) on the first connection."""
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 16)
        try:
            if endpoint.tls:
                name = endpoint.server_name or endpoint.host
                tls = evidence.tls
                tls.address, tls.server_name = address, name
                try:
                    context = client_context(endpoint.tls_config, self.env.secrets)
                except ProbeFailure as exc:  # the agent's own tls_config problem
                    tls.outcome, tls.error = "failed", exc.message
                    return
                try:
                    async with asyncio.timeout(budget):
                        await writer.start_tls(context, server_hostname=name)
                except (ssl.SSLError, ssl.CertificateError, OSError, TimeoutError) as exc:
                    tls.outcome = "failed"
                    tls.error = _tls_error(exc)
                    if isinstance(exc, ConnectionResetError):
                        _mark_reset(evidence, address)
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        tls.name_matches = "hostname mismatch" not in tls.error.lower()
                        await self._unverified_leaf(address, endpoint.port, name, budget, tls)
                    return
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                tls.outcome = "ok"
                if der:
                    tls.leaf_sha256 = hashlib.sha256(der).hexdigest()
                    info: dict[str, Any] = ssl_object.getpeercert() or {}
                    tls.issuer = distinguished_name(x509.load_der_x509_certificate(der).issuer)
                    tls.name_matches = bool(info) and ssl_object.context.check_hostname
            if endpoint.url:
                await _get(endpoint, reader, writer, budget, evidence, address)
        finally:
            writer.transport.abort()

    async def _unverified_leaf(
        self, address: str, port: int, name: str, budget: float, tls: pb.TlsEvidence
    ) -> None:
        """Fetch the leaf that failed verification, to compare its fingerprint with the control's."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(budget):
                _, writer = await asyncio.open_connection(
                    address, port, ssl=context, server_hostname=name
                )
            try:
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                if der:
                    tls.leaf_sha256 = hashlib.sha256(der).hexdigest()
            finally:
                writer.transport.abort()

    async def _path(
        self, check: str, port: int, evidence: pb.Evidence, addresses: list[str]
    ) -> None:
        now = self.clock()
        if now < self._path_due.get(check, now):
            return
        self._path_at[check], self._path_due[check] = now, now + self.path_every
        failed = [t.address for t in evidence.tcp if t.outcome != "established"]
        destination = (failed or addresses)[0]
        try:
            path = await asyncio.to_thread(trace, destination, port, self.env.source_address)
        except OSError as exc:
            path = pb.PathEvidence(
                destination=destination, unavailable_reason=f"traceroute failed: {exc.strerror}"
            )
        evidence.path.CopyFrom(path)


async def _query(
    resolver: dns.asyncresolver.Resolver, host: str, rdtype: str
) -> tuple[str, list[str], str]:
    """(rcode name, addresses, error detail) of one query."""
    try:
        answer = await resolver.resolve(host, rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        return "NXDOMAIN", [], "name does not exist"
    except dns.resolver.NoAnswer:
        return "NOERROR", [], "no address of this type"
    except dns.resolver.NoNameservers as exc:
        return "SERVFAIL", [], str(exc)[:200]
    except dns.resolver.LifetimeTimeout:
        return "TIMEOUT", [], "no answer from the resolver"
    except dns.exception.DNSException as exc:
        return "ERROR", [], str(exc)[:200]
    rcode = dns.rcode.to_text(answer.response.rcode())
    return rcode, [str(r.address) for r in answer], ""


async def _get(
    endpoint: Endpoint,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    budget: float,
    evidence: pb.Evidence,
    address: str,
) -> None:
    """One GET of the check's URL; records status, body length, title and header names."""
    parts = urlsplit(endpoint.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.netloc.rsplit("@", 1)[-1]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: probemesh\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    )
    http = evidence.http
    data = b""
    try:
        async with asyncio.timeout(budget):
            writer.write(request.encode("latin-1"))
            while len(data) < MAX_BODY + (1 << 16):
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                data += chunk
    except ConnectionResetError:
        _mark_reset(evidence, address)
        http.error = "connection reset by peer"
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        http.error = f"{type(exc).__name__}: {exc}"[:200]
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2) if lines and lines[0] else []
    if not sep or len(status) < 2 or not status[1].isdigit():
        http.error = http.error or "no complete response head"
        return
    http.status = int(status[1])
    names = {line.partition(":")[0].strip().lower() for line in lines[1:] if ":" in line}
    http.header_names.extend(sorted(names))
    if "transfer-encoding" in names and b"chunked" in head.lower():
        body = _dechunk(body)
    http.body_truncated = len(body) > MAX_BODY
    body = body[:MAX_BODY]
    http.body_length = len(body)
    match = _TITLE.search(body)
    if match:
        http.title = " ".join(match.group(1).decode("utf-8", "replace").split())[:200]


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


def _mark_reset(evidence: pb.Evidence, address: str) -> None:
    for entry in evidence.tcp:
        if entry.address == address and entry.outcome == "established":
            entry.outcome = "reset"


def _tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"[:200]
