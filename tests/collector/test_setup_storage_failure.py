"""A stream set-up whose assignment write fails ends with UNAVAILABLE and is counted.

The failure is real: the collector's SQLite file is write-locked by another
connection while the history writes the agent's spans, with the busy timeout
shortened so that SQLite gives up at once ("database is locked"), as it does
after 5 s when ingest commits hold the file at a high rate.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest

from probemesh.collector.assignments import Span
from probemesh.collector.main import CollectorApp, CollectorOptions
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.harness import free_port, scrape, total
from tests.security.conftest import checks_yaml
from tests.security.test_rotation import wait_ready


def test_failed_assignment_write_gives_unavailable_then_is_written_on_reconnect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = tmp_path / "checks.yaml"
    checks.write_text(checks_yaml(2))
    data_dir = tmp_path / "data"
    options = CollectorOptions(
        checks, grpc_listen=f"127.0.0.1:{free_port()}", http_listen="127.0.0.1:0",
        data_dir=data_dir,
    )  # fmt: skip
    database_file = data_dir / "collector.sqlite3"

    async def scenario() -> tuple[list[str], float, float, int]:
        app = CollectorApp(options)
        token = app.tokens.create("lock1", "DE")
        save_spans = app.store.save_spans
        failures = [1]  # the first write fails, the next ones go through

        def locked_once(agent_id: str, spans: Iterable[Span]) -> None:
            if not failures:
                return save_spans(agent_id, spans)
            failures.pop()
            holder = sqlite3.connect(database_file, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            raw = app.store.db.raw  # type: ignore[attr-defined]
            raw.execute("PRAGMA busy_timeout=50")
            try:
                return save_spans(agent_id, spans)
            finally:
                raw.execute("PRAGMA busy_timeout=5000")
                holder.execute("ROLLBACK")
                holder.close()

        monkeypatch.setattr(app.store, "save_spans", locked_once)
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        outcomes: list[str] = []
        async with grpc.aio.insecure_channel(options.grpc_listen) as channel:
            for _ in range(2):
                call = channel.stream_stream(
                    SERVICE_METHOD,
                    request_serializer=pb.AgentMessage.SerializeToString,
                    response_deserializer=pb.CollectorMessage.FromString,
                )(metadata=(("authorization", f"Bearer {token}"),))
                await call.write(pb.AgentMessage(hello=pb.Hello(agent_id="lock1", country="DE")))
                try:
                    kinds = [(await call.read()).WhichOneof("payload") for _ in range(2)]
                    outcomes.append("+".join(kinds))
                except grpc.aio.AioRpcError as exc:
                    outcomes.append(exc.code().name)
                call.cancel()
        metrics_url = f"http://127.0.0.1:{app.http_port}/metrics"
        samples = await asyncio.to_thread(scrape, metrics_url)
        stop.set()
        await server
        with sqlite3.connect(database_file) as db:
            (stored,) = db.execute(
                "SELECT COUNT(*) FROM assignments WHERE agent_id = 'lock1'"
            ).fetchone()
        return (
            outcomes,
            total(samples, "probemesh_ingest_rejected_total", reason="database"),
            total(samples, "probemesh_database_errors_total", kind="statement"),
            stored,
        )

    outcomes, rejected, errors, stored = asyncio.run(scenario())
    assert outcomes == ["UNAVAILABLE", "welcome+checks"], outcomes
    assert rejected == 1
    assert errors >= 1
    # The reconnect wrote what the failed write left in memory only.
    assert stored == 2, f"{stored} of the agent's 2 spans in the database"
