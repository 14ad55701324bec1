"""Shared helpers for the probe tests: a runner equivalent, sample lookup, loopback servers.

Everything listens on loopback with port 0. The runner here mirrors what
probemesh.agent.runner does around a probe (timeout, exception -> reason) so
the probe tests do not depend on the agent runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trustme

from probemesh.agent.probes import PROBERS
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.probes.result import ProbeResult, failure_from_exception
from probemesh.agent.safety import AddressPolicy
from probemesh.agent.secrets import SecretFiles
from probemesh.catalog import PROBE_METRICS
from probemesh.modules import parse_module

LOOPBACK_ENV = ProbeEnv(policy=AddressPolicy(allow_private=True))
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def run(
    prober: str,
    target: str,
    section: dict[str, Any] | None = None,
    module_timeout: float = 2.0,
    secrets: Path | None = None,
) -> ProbeResult:
    """Load a module like the collector does, then probe like the runner does.

    secrets is the agent's --secrets-dir; without it every file reference is refused.
    """
    raw: dict[str, Any] = {"prober": prober, "timeout": f"{module_timeout}s"}
    if section is not None:
        raw[prober] = section
    module = parse_module("test", raw)
    result = ProbeResult()
    try:
        async with asyncio.timeout(module.timeout):
            env = LOOPBACK_ENV
            if secrets is not None:
                env = ProbeEnv(policy=LOOPBACK_ENV.policy, secrets=SecretFiles(secrets))
            await PROBERS[prober](target, module.settings, env, result)
    except Exception as exc:
        result.fail(*failure_from_exception(exc))
    check_catalog(result)
    return result


def check_catalog(result: ProbeResult) -> None:
    """Every sample must pass the collector's catalog, or it would be dropped."""
    for name, labels, _ in result.samples:
        assert name in PROBE_METRICS, f"{name} is not in the catalog"
        assert PROBE_METRICS[name].labels_ok(labels), f"{name}{labels} has bad labels"


def value(result: ProbeResult, name: str, **labels: str) -> float:
    """The single sample called name with exactly these labels."""
    found = [v for n, lab, v in result.samples if n == name and lab == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {result.samples}"
    return found[0]


def has(result: ProbeResult, name: str) -> bool:
    return any(n == name for n, _, _ in result.samples)


@contextlib.asynccontextmanager
async def serve(
    handler: Handler, context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[int]:
    """A TCP (or TLS) server on loopback port 0 running handler per connection."""

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, host, 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """(method, path, lower-cased headers) of one HTTP/1.1 request; the body is drained."""
    line = (await reader.readline()).decode("latin-1")
    method, path, _ = line.split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := await reader.readline()) not in (b"\r\n", b""):
        key, _, val = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = val.strip()
    if length := int(headers.get("content-length", "0")):
        await reader.readexactly(length)
    return method, path, headers


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with Content-Length."""
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    """A server SSLContext presenting cert (with its chain); optionally requiring client certs."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def write_pair(cert: trustme.LeafCert, directory: Path, prefix: str = "client") -> tuple[str, str]:
    """Write cert chain and key into directory; returns their names (cert_file, key_file)."""
    cert_file, key_file = directory / f"{prefix}.pem", directory / f"{prefix}-key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file.name, key_file.name


ZONE = {
    ("example.test.", "A"): ["192.0.2.1", "192.0.2.2"],
    ("example.test.", "SOA"): ["ns.example.test. admin.example.test. 2024010101 3600 600 86400 60"],
    ("example.test.", "TXT"): ['"v=spf1 -all"', '"hello"'],
}


class Zone:
    """Answers from ZONE; remembers the RD flag of the last query."""

    def __init__(self) -> None:
        self.last_rd: bool | None = None

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        self.last_rd = bool(query.flags & dns.flags.RD)
        reply = dns.message.make_response(query)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        if (name, rdtype) in ZONE:
            reply.answer.append(dns.rrset.from_text(name, 300, "IN", rdtype, *ZONE[(name, rdtype)]))
            reply.additional.append(
                dns.rrset.from_text("ns.example.test.", 300, "IN", "A", "192.0.2.53")
            )
        elif any(key[0] == name for key in ZONE):
            soa = ZONE[("example.test.", "SOA")]
            reply.authority.append(dns.rrset.from_text("example.test.", 60, "IN", "SOA", *soa))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()


@contextlib.asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[int]:
    """UDP and TCP on the same loopback port."""
    loop = asyncio.get_running_loop()

    class UDP(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(zone.answer(data), addr)  # type: ignore[attr-defined]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = zone.answer(await reader.readexactly(length))
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await loop.create_datagram_endpoint(UDP, local_addr=("127.0.0.1", port))
    try:
        yield port
    finally:
        transport.close()
        server.close()
