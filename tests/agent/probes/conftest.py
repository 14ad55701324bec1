"""Fixtures for the probe tests (defined in cert_fixtures so other suites can import them)."""

from collections.abc import Iterator

import pytest

from probemesh.agent import eventloop
from tests.agent.probes.cert_fixtures import (  # noqa: F401 - fixtures
    ca,
    ca_file,
    expired_cert,
    localhost_cert,
    other_host_cert,
    secrets_dir,
)
from tests.netem import DelayLine, netem_problem


@pytest.fixture
def delay_line() -> Iterator[DelayLine]:
    """Two namespaces joined by the userspace delay line (root only)."""
    problem = netem_problem()
    if problem:
        pytest.skip(f"userspace netem skipped: {problem}")
    line = DelayLine()
    try:
        line.start()
        yield line
    finally:
        line.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict:
    """Probe tests run on the agent's own event loop (uvloop), where the agent runs probes."""
    return {"agent loop": eventloop.new_event_loop}
