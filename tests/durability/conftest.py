"""Fixtures for the durability tests: fast reconnects, a TCP target, a mesh that
always cleans up its processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.durability.common import FAST_LINK_ENV, AgentRef, TcpSink, checks_yaml, closed_port
from tests.harness import Mesh, free_port


@pytest.fixture(autouse=True)
def fast_link(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAST_LINK_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def sink() -> Iterator[TcpSink]:
    server = TcpSink()
    yield server
    server.close()


@pytest.fixture
def targets(sink: TcpSink) -> tuple[str, str]:
    return f"127.0.0.1:{sink.port}", f"127.0.0.1:{closed_port()}"


@pytest.fixture
def mesh(tmp_path: Path, targets: tuple[str, str]) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, checks_yaml(*targets))
    try:
        yield mesh
    finally:
        mesh.stop()
        for proc in mesh.agents.values():  # belt and braces: nothing left running
            if proc.alive():
                proc.kill()
        if mesh.collector is not None and mesh.collector.alive():
            mesh.collector.kill()


StartAgent = Callable[..., AgentRef]


@pytest.fixture
def start_agent(mesh: Mesh) -> StartAgent:
    """Start (or restart, same state dir and metrics port) an agent on loopback."""
    ports: dict[str, int] = {}
    tokens: dict[str, str] = {}

    def start(
        agent_id: str,
        country: str = "DE",
        *extra: str,
        collectors: str | None = None,
        token: str | None = None,
    ) -> AgentRef:
        port = ports.setdefault(agent_id, free_port())
        if token is not None:
            tokens[agent_id] = token
        if agent_id not in tokens:
            tokens[agent_id] = mesh.token(agent_id, country)
        mesh.start_agent(
            agent_id,
            country,
            *extra,
            token=tokens[agent_id],
            collectors=collectors,
            metrics_port=port,
        )
        return AgentRef(
            agent_id, f"http://127.0.0.1:{port}/metrics", mesh.root / f"agent-{agent_id}"
        )

    return start
