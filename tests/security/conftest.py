"""Fixtures of the security tests: real collectors started through the CLI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from probemesh.collector.main import CollectorOptions
from tests.harness import Mesh, free_port

N_CHECKS = 30


def checks_yaml(n: int = N_CHECKS, interval: str = "30s") -> str:
    lines = ["modules:", "  tcp_connect: {prober: tcp, timeout: 1s}", "checks:"]
    for i in range(n):
        lines.append(
            f"  - {{name: c{i:02d}, target: '127.0.0.1:9', module: tcp_connect, "
            f"interval: {interval}}}"
        )
    return "\n".join(lines) + "\n"


def in_process_options(tmp_path: Path, checks: int) -> CollectorOptions:
    """Options of a plaintext collector run in the test's process: gRPC on a free
    loopback port, HTTP on any, its data and a checks file of `checks` checks in tmp_path."""
    path = tmp_path / "checks.yaml"
    path.write_text(checks_yaml(checks))
    return CollectorOptions(
        path, grpc_listen=f"127.0.0.1:{free_port()}", http_listen="127.0.0.1:0",
        data_dir=tmp_path / "data",
    )  # fmt: skip


def fuzz_examples(default: int) -> int:
    """Hypothesis examples per fuzz test; PROBEMESH_FUZZ_EXAMPLES raises it for long runs."""
    return int(os.environ.get("PROBEMESH_FUZZ_EXAMPLES", default))


@pytest.fixture(scope="module")
def limited_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A plaintext loopback collector with small, test-sized limits."""
    root: Path = tmp_path_factory.mktemp("limited")
    mesh = Mesh(root, checks_yaml())
    mesh.start_collector(
        "--max-batch-results", "1000",
        "--max-message-bytes", "65536",
        "--rate-limit", "1000", "--rate-burst", "20000",
        "--max-series-per-agent", "40",
    )  # fmt: skip
    yield mesh
    mesh.stop()


def collector_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")
