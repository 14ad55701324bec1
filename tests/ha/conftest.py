"""Fixtures for the HA tests: fast agent reconnects, a TCP target, and a cluster
of collectors on one shared database that always cleans up its processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.durability.common import FAST_LINK_ENV, TcpSink, checks_yaml, closed_port
from tests.ha.cluster import Cluster


@pytest.fixture(autouse=True)
def fast_link(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAST_LINK_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def targets() -> Iterator[tuple[str, str]]:
    sink = TcpSink()
    yield f"127.0.0.1:{sink.port}", f"127.0.0.1:{closed_port()}"
    sink.close()


@pytest.fixture
def database_args(postgres_url: str) -> list[str]:
    """The collectors' shared database: a fresh one on the session's PostgreSQL."""
    return ["--database", postgres_url]


MakeCluster = Callable[[int], Cluster]


@pytest.fixture
def make_cluster(
    tmp_path: Path, targets: tuple[str, str], database_args: list[str]
) -> Iterator[MakeCluster]:
    """make_cluster(n): n collectors (not started yet) on the shared database."""
    made: list[Cluster] = []

    def make(size: int) -> Cluster:
        made.append(Cluster(tmp_path, checks_yaml(*targets), database_args, size))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()
        for proc in [*cluster.agents.values(), *(n.proc for n in cluster.collectors if n.proc)]:
            if proc.alive():
                proc.kill()
