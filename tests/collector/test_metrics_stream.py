"""/metrics streams the cached text a piece at a time, as one consistent snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from probemesh.collector.exporter import MeshExporter, RestView
from probemesh.collector.http import collector_metrics
from probemesh.v1 import mesh_pb2 as pb
from tests.collector.test_exposition import apply, build, parse_strict
from tests.harness import free_port


def newer_results(exporter: MeshExporter, timestamp: float) -> None:
    state = exporter.state
    for agent_id in ("a-br", "a-de"):
        result = pb.Result(
            check="web", timestamp=timestamp, success=True, duration_seconds=timestamp,
            samples=[pb.Sample(name="probe_http_status_code", value=timestamp)],
        )  # fmt: skip
        apply(exporter.ingest, state.agents[agent_id], result)


@pytest.mark.parametrize("size", [1, 100, 300, 1 << 20])
def test_pieces_join_to_the_whole_body(tmp_path: Path, size: int) -> None:
    _, exporter = build(tmp_path)
    newer_results(exporter, 2.0)
    whole = exporter.render_bulk(b"# tail\n")
    pieces = list(exporter.render_batches(b"# tail\n", size=size))
    assert b"".join(pieces) == whole
    assert max(map(len, pieces)) < max(size, 2000), "pieces are about size bytes (or one chunk)"
    if len(whole) <= size:
        assert pieces == [whole], "small parts (headers, short families) go out together"


def test_the_body_is_the_state_when_the_scrape_began(tmp_path: Path) -> None:
    """Results applied (and pre-rendered) while a slow client reads do not leak in."""
    _, exporter = build(tmp_path)
    before = exporter.render_bulk()
    pieces = exporter.render_batches(size=1)
    first = next(pieces)
    newer_results(exporter, 3.0)
    exporter.prerender()
    assert first + b"".join(pieces) == before
    after = exporter.render_bulk()
    assert after != before and b"probe_http_status_code" in after
    assert b"} 3.0\n" in after and b"} 3.0\n" not in before


async def test_metrics_over_http_is_the_rendered_body(tmp_path: Path) -> None:
    """The real handler, a real socket: a body of many pieces arrives whole and parses."""
    _, exporter = build(tmp_path)
    exporter.piece_bytes = 300  # many pieces, so many writes
    rest = CollectorRegistry(auto_describe=False)
    rest.register(RestView(exporter))
    app = web.Application()
    app.router.add_get("/metrics", collector_metrics(exporter, rest))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as session:
            for timestamp in (2.0, 5.0):
                newer_results(exporter, timestamp)
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
                    body = await response.read()
                expected = exporter.render_bulk(generate_latest(rest))
                strip = b"probemesh_scrape_duration_seconds "  # the one line that differs
                lines = [line for line in body.split(b"\n") if not line.startswith(strip)]
                assert lines == [
                    line for line in expected.split(b"\n") if not line.startswith(strip)
                ]
                parse_strict(body.decode())
                assert f"}} {timestamp!r}\n".encode() in body
            # The scrape lets the loop run between pieces: a task that counts the
            # loop's turns advances while the body is built.
            turns = 0

            async def count_turns() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await asyncio.sleep(0)

            counter = asyncio.create_task(count_turns())
            await asyncio.sleep(0)
            pieces = len(list(exporter.render_batches(generate_latest(rest))))
            before = turns
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                await response.read()
            counter.cancel()
            assert turns - before >= pieces, (turns - before, pieces)
            # HEAD answers the headers alone, and the connection stays usable.
            async with session.head(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200 and b"probe_success" in await response.read()
            # A client that goes away without reading leaves the server fine.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.read(10)
            writer.close()
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200 and await response.read()
    finally:
        await runner.cleanup()
