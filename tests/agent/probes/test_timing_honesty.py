"""Timing honesty: delays injected by a userspace TCP proxy land in the right HTTP phase.

The proxy accepts, waits CONNECT_DELAY before dialling the upstream server, then
holds the first response byte for FIRST_BYTE_DELAY. Userspace cannot delay a
TCP handshake on loopback (the kernel answers the SYN before accept(), and this
kernel has no netem), so the honest expectation is: the probe's ``connect``
phase stays at its baseline, and both delays land in ``processing`` (time from
request sent to first byte). Each phase must be within 5 ms of baseline plus
what was injected into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import AsyncIterator

from tests.agent.probes.probe_helpers import read_request, response, run, serve, value

CONNECT_DELAY = 0.080
FIRST_BYTE_DELAY = 0.120
TOLERANCE = 0.005


async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(response(200, b"ok"))


@contextlib.asynccontextmanager
async def delay_proxy(upstream: int) -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(CONNECT_DELAY)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
            first = True
            while data := await src.read(65536):
                if first and delay:
                    await asyncio.sleep(delay)
                first = False
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pump(reader, up_writer, 0.0),
            pump(up_reader, writer, FIRST_BYTE_DELAY),
            return_exceptions=True,
        )

    async with serve(handle) as port:
        yield port


async def phases(port: int) -> tuple[float, float]:
    """Median connect and processing over a few probes (robust to one scheduling hiccup)."""
    connects, processings = [], []
    for _ in range(5):
        result = await run("http", f"http://127.0.0.1:{port}/")
        assert result.success, result.message
        connects.append(value(result, "probe_http_duration_seconds", phase="connect"))
        processings.append(value(result, "probe_http_duration_seconds", phase="processing"))
    return statistics.median(connects), statistics.median(processings)


async def test_injected_delays_land_in_the_right_phase() -> None:
    async with serve(ok) as server_port:
        base_connect, base_processing = await phases(server_port)
        async with delay_proxy(server_port) as proxy_port:
            connect, processing = await phases(proxy_port)
    assert abs(connect - base_connect) <= TOLERANCE, (connect, base_connect)
    expected = base_processing + CONNECT_DELAY + FIRST_BYTE_DELAY
    # The proxy's own upstream connect and copying add well under a millisecond on loopback.
    assert abs(processing - expected) <= TOLERANCE, (processing, expected)
