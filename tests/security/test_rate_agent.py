"""How a real agent lives with the collector's rate limit: it backs off and keeps
every result on disk, then catches up once the limit allows; nothing is lost."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Mesh, free_port, scrape, total, wait_for
from tests.security.conftest import checks_yaml


def test_rate_limited_agent_buffers_and_catches_up(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, checks_yaml(40, interval="1s"))
    mesh.start_collector("--rate-limit", "10", "--rate-burst", "100", "--max-batch-results", "100")
    metrics_port = free_port()
    agent_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        token = mesh.token("rl1", "BR")
        agent = mesh.start_agent("rl1", "BR", token=token, metrics_port=metrics_port)
        wait_for(lambda: "RESOURCE_EXHAUSTED" in agent.log(), 20, "agent told RESOURCE_EXHAUSTED")
        assert "rate limit" in agent.log()
        wait_for(
            lambda: total(scrape(agent_url), "probemesh_agent_queue_depth") > 40,
            15,
            "agent buffering",
        )
        assert total(mesh.metrics(), "probemesh_ingest_rejected_total", reason="rate_limited") > 0
        # Lift the limit: the same collector data, no rate limit.
        assert mesh.collector is not None
        mesh.collector.stop()
        mesh.start_collector("--rate-limit", "0", "--max-batch-results", "100")
        wait_for(
            lambda: total(scrape(agent_url), "probemesh_agent_queue_depth") < 40,
            60,
            "backlog drained",
        )
        agent_samples = scrape(agent_url)
        assert total(agent_samples, "probemesh_agent_results_dropped_total") == 0
        acked = total(agent_samples, "probemesh_agent_results_acked_total")
        applied = total(mesh.metrics(), "probemesh_probe_results_total", agent="rl1")
        assert applied >= acked > 0, (applied, acked)
    finally:
        mesh.stop()
