"""Shared helpers for the probe tests: a runner equivalent, sample lookup, loopback servers.

Everything listens on loopback with port 0. The runner here mirrors what
probemesh.agent.runner does around a probe (timeout, exception -> reason) so
the probe tests do not depend on the agent runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trustme

from probemesh.agent.probes import PROBERS
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.probes.result import ProbeResult, failure_from_exception
from probemesh.agent.safety import AddressPolicy
from probemesh.catalog import PROBE_METRICS
from probemesh.modules import parse_module

LOOPBACK_ENV = ProbeEnv(policy=AddressPolicy(allow_private=True))
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def run(
    prober: str, target: str, section: dict[str, Any] | None = None, module_timeout: float = 2.0
) -> ProbeResult:
    """Load a module like the collector does, then probe like the runner does."""
    raw: dict[str, Any] = {"prober": prober, "timeout": f"{module_timeout}s"}
    if section is not None:
        raw[prober] = section
    module = parse_module("test", raw)
    result = ProbeResult()
    try:
        async with asyncio.timeout(module.timeout):
            await PROBERS[prober](target, module.settings, LOOPBACK_ENV, result)
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


def write_pair(cert: trustme.LeafCert, directory: Path) -> tuple[str, str]:
    """Write cert chain and key to files; returns (cert_file, key_file)."""
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)
