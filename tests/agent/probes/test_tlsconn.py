"""The http probe's own TLS connection: big bodies both ways, EOFs, and descriptors reused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from probemesh.agent.probes.result import ProbeResult, Reason
from tests.agent.probes.probe_helpers import (
    read_request,
    response,
    run,
    serve,
    server_context,
    value,
)

BIG = 4 << 20  # far more than a socket buffer takes at once


def _local(ca_file: str) -> dict:
    """localhost as IPv4 from /etc/hosts: no AAAA query leaves the machine."""
    return {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": ca_file}}


async def test_big_request_and_response_bodies_over_tls(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """A 4 MiB POST leaves in pieces as the socket drains; a 4 MiB answer arrives whole."""
    received: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.2)  # the client's send buffer fills meanwhile
        _, _, headers = await read_request(reader)
        received.append(int(headers["content-length"]))
        writer.write(response(200, b"x" * BIG))

    async with serve(handler, server_context(localhost_cert)) as port:
        result = await run(
            "http",
            f"https://localhost:{port}/",
            {"method": "POST", "body": "y" * BIG, **_local(ca_file)},
            module_timeout=10,
            secrets=secrets_dir,
        )
    assert result.success, result.message
    assert received == [BIG]
    assert value(result, "probe_http_content_length") == BIG
    assert value(result, "probe_http_uncompressed_body_length") == BIG


async def test_close_during_the_handshake_is_a_connect_failure() -> None:
    """A server that hangs up on the ClientHello: reason connect, as with asyncio's TLS."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    async with serve(handler) as port:
        result = await run("http", f"https://localhost:{port}/", {"preferred_ip_protocol": "ip4"})
    assert result.reason == Reason.CONNECT, result.message


async def test_body_cut_without_close_notify_ends_like_a_tcp_close(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """No Content-Length, then TCP closed without close_notify: the body read so far counts."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nsome body")
        await writer.drain()
        writer.transport.abort()

    async with serve(handler, server_context(localhost_cert)) as port:
        result = await run(
            "http",
            f"https://localhost:{port}/",
            _local(ca_file),
            secrets=secrets_dir,
        )
    assert result.success, result.message
    assert value(result, "probe_http_uncompressed_body_length") == len(b"some body")


@pytest.mark.parametrize("cut_after", [0.2, 0.35, 0.5])
async def test_timed_out_probes_leave_no_stale_wait_on_reused_descriptors(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path, cut_after: float
) -> None:
    """Probes cut by their timeout mid-read, while new sockets take their descriptors.

    A read still registered for a closed descriptor would break the next
    socket given that number (a stalled or failed probe) instead of being
    dropped. The new probes start around the cut, at several timeouts;
    bench/tls_close_soak.py repeats this.
    """

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the probe hangs up

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))

    async def later(delay: float, url: str) -> ProbeResult:
        await asyncio.sleep(delay)
        return await run("http", url, settings, 2.0, secrets_dir)

    settings = _local(ca_file)
    async with (
        serve(silent, server_context(localhost_cert)) as slow_port,
        serve(ok, server_context(localhost_cert)) as ok_port,
    ):
        slow = [
            run("http", f"https://localhost:{slow_port}/", settings, cut_after, secrets_dir)
            for _ in range(10)
        ]
        fast = [
            later(cut_after - 0.05 + i * 0.004, f"https://localhost:{ok_port}/") for i in range(40)
        ]
        results = await asyncio.gather(*slow, *fast)
    assert all(r.reason == Reason.TIMEOUT for r in results[:10])
    assert all(r.success for r in results[10:]), [r.message for r in results[10:] if not r.success]
