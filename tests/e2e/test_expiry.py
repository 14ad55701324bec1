"""Series of an agent that has gone away expire after --series-ttl."""

from __future__ import annotations

from pathlib import Path

from tests.harness import Mesh, free_port, total, wait_for


def test_gone_agent_series_expire(tmp_path: Path) -> None:
    checks = f"""
modules: {{tcp: {{prober: tcp, timeout: 1s, tcp: {{preferred_ip_protocol: ip4}}}}}}
checks: [{{name: closed, target: "127.0.0.1:{free_port()}", module: tcp, interval: 200ms}}]
"""
    mesh = Mesh(tmp_path, checks, collector_args=["--series-ttl", "2s"])
    mesh.start_collector()
    try:
        mesh.start_agent("stays", "DE")
        leaver = mesh.start_agent("leaves", "FR")
        wait_for(lambda: total(mesh.metrics(), "probe_success", agent="leaves") == 0
                 and total(mesh.metrics(), "probe_duration_seconds", agent="leaves") > 0, 20, "agent series")  # fmt: skip
        leaver.stop()
        wait_for(
            lambda: (
                not any(
                    dict(lab).get("agent") == "leaves"
                    for name, lab in mesh.metrics()
                    if name.startswith("probe_")
                )
            ),
            20,
            "the gone agent's probe series to expire",
        )
        samples = mesh.metrics()
        assert total(samples, "probemesh_agent_connected", agent="leaves") == 0
        assert total(samples, "probe_duration_seconds", agent="stays") > 0
        # Counters stay: they are exact accounting, persisted across restarts.
        assert total(samples, "probemesh_probe_results_total", agent="leaves") > 0
    finally:
        mesh.stop()
