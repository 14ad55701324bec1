"""Series of an agent that has gone away expire after --series-ttl."""

from __future__ import annotations

import signal
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


def test_removed_check_counters_linger_then_expire(tmp_path: Path) -> None:
    """A removed check's counters stay while late results may arrive, then expire."""
    target = f"127.0.0.1:{free_port()}"
    line = '{name: %s, target: "%s", module: tcp, interval: 200ms}'
    checks = (
        "modules: {tcp: {prober: tcp, timeout: 1s, tcp: {preferred_ip_protocol: ip4}}}\n"
        f"checks: [{line % ('kept', target)}, {line % ('gone', target)}]\n"
    )
    mesh = Mesh(tmp_path, checks, collector_args=["--series-ttl", "3s"])
    mesh.start_collector()
    try:
        mesh.start_agent("solo", "DE")
        wait_for(
            lambda: total(mesh.metrics(), "probemesh_probe_results_total", check="gone") > 0,
            20,
            "results of both checks",
        )
        assert mesh.collector is not None
        mesh.checks_path.write_text(checks.replace(", " + line % ("gone", target), ""))
        mesh.collector.signal(signal.SIGHUP)
        wait_for(lambda: "revision 2" in mesh.collector.log(), 10, "the reload")  # type: ignore[union-attr]
        samples = mesh.metrics()
        assert total(samples, "probemesh_probe_results_total", check="gone") > 0, "lingers"
        assert total(samples, "probe_success", check="gone") == 0
        assert not any(n == "probe_success" and ("check", "gone") in lab for n, lab in samples)
        wait_for(
            lambda: not any(("check", "gone") in lab for _, lab in mesh.metrics()),
            20,
            "the removed check's series to expire after --series-ttl",
        )
        assert total(mesh.metrics(), "probemesh_probe_results_total", check="kept") > 0
    finally:
        mesh.stop()
