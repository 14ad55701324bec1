"""promtool check metrics on the collector's and the agent's /metrics prints nothing.

Real processes through the CLI: a collector whose remote write points at a
closed port (so its own remote-write metrics move), two agents with their
/metrics endpoints, an HTTP check that succeeds and a TCP check that fails.
promtool's lint findings (missing help text, counters without _total, ...)
are what every Prometheus user sees, so not even a warning may appear.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from probemesh.collector.exposition import FAILURE_REASONS
from probemesh.collector.ingest import REJECT_REASONS
from probemesh.collector.samples import REASONS as SAMPLE_REASONS
from probemesh.collector.service import REJECT_REASONS as STREAM_REASONS
from tests.harness import Mesh, free_port, http_get, scrape, total, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)"
)
AGENTS = {"vps-de-1": "DE", "vps-jp-1": "JP"}


def promtool_output(body: str) -> tuple[int, str]:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[Mesh, dict[str, int]]]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    web_port = free_port()
    server = subprocess.Popen(
        ["python3", "-m", "http.server", str(web_port), "--bind", "127.0.0.1", "-d", str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checks = f"""
modules:
  http_2xx: {{prober: http, timeout: 2s, http: {{preferred_ip_protocol: ip4}}}}
  tcp_connect: {{prober: tcp, timeout: 1s, tcp: {{preferred_ip_protocol: ip4}}}}
checks:
  - {{name: web, target: "http://127.0.0.1:{web_port}/", module: http_2xx, interval: 500ms}}
  - {{name: closed-port, target: "127.0.0.1:{free_port()}", module: tcp_connect, interval: 500ms}}
"""
    mesh = Mesh(tmp_path, checks)
    metrics_ports = {agent: free_port() for agent in AGENTS}
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{web_port}/"), 10, "the web server")
        mesh.start_collector(
            "--remote-write-url", f"http://127.0.0.1:{free_port()}/api/v1/write",
            "--remote-write-interval", "1s", "--external-label", "collector=test",
        )  # fmt: skip
        for agent, country in AGENTS.items():
            mesh.start_agent(agent, country, metrics_port=metrics_ports[agent])
        yield mesh, metrics_ports
    finally:
        if mesh.collector is not None:
            mesh.collector.kill()  # its remote write has no receiver: a clean stop waits 5 s
        mesh.stop()
        server.terminate()
        server.wait(5)


def test_promtool_accepts_collector_and_agent_metrics(mesh: tuple[Mesh, dict[str, int]]) -> None:
    mesh_, metrics_ports = mesh

    def ready() -> bool:
        samples = mesh_.metrics()
        reporting = {
            (dict(labels)["agent"], dict(labels)["check"])
            for (name, labels), _ in samples.items()
            if name == "probe_success"
        }
        pairs = {(agent, check) for agent in AGENTS for check in ("web", "closed-port")}
        return reporting == pairs and (
            total(samples, "probemesh_remote_write_failed_samples_total") > 0
        )

    wait_for(ready, 40, "both agents reporting both checks, and a failed remote write")
    body = http_get(mesh_.metrics_url)
    assert promtool_output(body) == (0, "")

    samples = scrape(mesh_.metrics_url)
    rejected = {
        dict(labels)["reason"]
        for (name, labels), _ in samples.items()
        if name == "probemesh_ingest_rejected_total"
    }
    assert rejected == {*STREAM_REASONS, *REJECT_REASONS, *SAMPLE_REASONS, "cardinality"}, (
        "every reason from the start, at 0 until counted"
    )
    for agent in AGENTS:
        reasons = {
            dict(labels)["reason"]
            for (name, labels), _ in samples.items()
            if name == "probemesh_probe_failures_total" and ("agent", agent) in labels
            and ("check", "web") in labels
        }  # fmt: skip
        assert reasons == set(FAILURE_REASONS), f"{agent}: every reason of a succeeding check"
    for name in (
        "probemesh_remote_write_samples_total",
        "probemesh_remote_write_dropped_samples_total",
        "probemesh_remote_write_pending_requests",
    ):
        assert any(n == name for n, _ in samples), f"{name} on /metrics"

    for agent, port in metrics_ports.items():
        url = f"http://127.0.0.1:{port}/metrics"
        wait_for(lambda u=url: total(scrape(u), "probemesh_agent_results_acked_total") > 0, 20,
                 f"{agent} acked results")  # fmt: skip
        assert promtool_output(http_get(url)) == (0, ""), agent
