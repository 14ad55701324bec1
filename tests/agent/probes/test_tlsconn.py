"""The http probe's own TLS connection: big bodies both ways, EOFs, and descriptors reused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import trustme

from probemesh.agent.probes.result import Reason
from tests.agent.probes.probe_helpers import (
    read_request,
    response,
    run,
    serve,
    server_context,
    value,
)

BIG = 4 << 20  # far more than a socket buffer takes at once


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
            {"method": "POST", "body": "y" * BIG, "tls_config": {"ca_file": ca_file}},
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
        result = await run("http", f"https://localhost:{port}/")
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
            {"tls_config": {"ca_file": ca_file}},
            secrets=secrets_dir,
        )
    assert result.success, result.message
    assert value(result, "probe_http_uncompressed_body_length") == len(b"some body")


async def test_timed_out_probes_leave_no_stale_wait_on_reused_descriptors(
    ca_file: str, localhost_cert: trustme.LeafCert, secrets_dir: Path
) -> None:
    """Probes cut by their timeout mid-read, while new sockets take their descriptors.

    A read still registered for a closed descriptor would break the next
    socket given that number (a stalled or failed probe) instead of being dropped.
    """

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))

    settings = {"tls_config": {"ca_file": ca_file}}
    async with (
        serve(silent, server_context(localhost_cert)) as slow_port,
        serve(ok, server_context(localhost_cert)) as ok_port,
    ):
        slow = [
            run("http", f"https://localhost:{slow_port}/", settings, 0.3, secrets_dir)
            for _ in range(10)
        ]
        fast = [
            run("http", f"https://localhost:{ok_port}/", settings, 2.0, secrets_dir)
            for _ in range(40)
        ]
        results = await asyncio.gather(*slow, *_staggered(fast))
    assert all(r.reason == Reason.TIMEOUT for r in results[:10])
    assert all(r.success for r in results[10:]), [r.message for r in results[10:] if not r.success]


def _staggered(probes: list) -> list:
    async def later(index: int, probe: object) -> object:
        await asyncio.sleep(0.25 + index * 0.005)  # around the slow probes' timeouts
        return await probe  # type: ignore[misc]

    return [later(i, p) for i, p in enumerate(probes)]
