"""Two collectors on one PostgreSQL share the agents' tokens: a token created with
``probemesh token create --database`` admits an agent at either collector, and
``probemesh token revoke --database`` cuts its live stream wherever it is served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Mesh, free_port, run_cli, total, wait_for

CHECKS = f"""
modules:
  tcp_connect: {{prober: tcp, timeout: 1s, tcp: {{preferred_ip_protocol: ip4}}}}
checks:
  - {{name: closed-port, target: "127.0.0.1:{free_port()}", module: tcp_connect, interval: 500ms}}
"""


@pytest.fixture
def meshes(tmp_path: Path, postgres_url: str) -> Iterator[tuple[Mesh, Mesh]]:
    pair = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        pair.append(Mesh(tmp_path / name, CHECKS, database=postgres_url))
    try:
        yield pair[0], pair[1]
    finally:
        for mesh in pair:
            mesh.stop()


def test_a_token_is_valid_at_every_collector_and_revoked_at_all(
    meshes: tuple[Mesh, Mesh], postgres_url: str
) -> None:
    first, second = meshes
    first.start_collector()
    second.start_collector()
    token = first.token("vps-de-1", "DE")  # written through the CLI into PostgreSQL
    second.start_agent("vps-de-1", "DE", token=token)

    def connected() -> float:
        return total(second.metrics(), "probemesh_agent_connected", agent="vps-de-1")

    wait_for(connected, 20, "the agent admitted by the other collector")
    assert (
        "revoked 1 token(s)"
        in run_cli("token", "revoke", "--database", postgres_url, "vps-de-1").stdout
    )
    wait_for(lambda: connected() == 0, 10, "the revoked agent's stream cut")
    assert second.collector is not None
    wait_for(lambda: "token revoked" in (second.agents["vps-de-1"].log()), 10, "the agent told why")
