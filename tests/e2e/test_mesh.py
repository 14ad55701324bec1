"""The mesh end to end: a collector and three agent processes in different
countries probe a local HTTP server and a closed TCP port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Mesh, free_port, http_get, total, wait_for

AGENTS = {"vps-br-1": "BR", "vps-de-1": "DE", "vps-jp-1": "JP"}


def checks_yaml(http_port: int, closed_port: int, extra: str = "") -> str:
    return f"""
modules:
  http_2xx: {{prober: http, timeout: 2s, http: {{preferred_ip_protocol: ip4}}}}
  tcp_connect: {{prober: tcp, timeout: 1s, tcp: {{preferred_ip_protocol: ip4}}}}
checks:
  - {{name: web, target: "http://127.0.0.1:{http_port}/", module: http_2xx, interval: 500ms}}
  - {{name: closed-port, target: "127.0.0.1:{closed_port}", module: tcp_connect, interval: 500ms}}
{extra}"""


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("hello\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "-d",
            str(tmp_path / "www"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/"), 10, "demo web server")
    yield port
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def mesh(tmp_path: Path, web_server: int) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, checks_yaml(web_server, free_port()))
    mesh.start_collector()
    for agent_id, country in AGENTS.items():
        mesh.start_agent(agent_id, country)
    try:
        yield mesh
    finally:
        mesh.stop()


def series(mesh: Mesh, name: str, check: str) -> dict[str, float]:
    """agent -> value of one probe metric for one check."""
    out = {}
    for (n, labels), value in mesh.metrics().items():
        lab = dict(labels)
        if n == name and lab.get("check") == check:
            assert lab["country"] == AGENTS[lab["agent"]]
            out[lab["agent"]] = value
    return out


def test_probe_results_reach_metrics_with_agent_and_country_labels(mesh: Mesh) -> None:
    wait_for(
        lambda: len(series(mesh, "probe_success", "closed-port")) == 3, 30, "three agents reporting"
    )
    wait_for(
        lambda: len(series(mesh, "probe_success", "web")) == 3, 10, "three agents reporting web"
    )
    assert series(mesh, "probe_success", "web") == dict.fromkeys(AGENTS, 1.0)
    assert series(mesh, "probe_success", "closed-port") == dict.fromkeys(AGENTS, 0.0)
    assert set(series(mesh, "probe_http_status_code", "web").values()) == {200.0}
    samples = mesh.metrics()
    assert (
        total(samples, "probemesh_probe_failures_total", check="closed-port", reason="refused") > 0
    )
    assert total(samples, "probemesh_probe_results_total", check="web", result="success") >= 3
    for agent_id, country in AGENTS.items():
        assert total(samples, "probemesh_agent_connected", agent=agent_id, country=country) == 1.0


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)"
)
def test_exposition_passes_promtool(mesh: Mesh) -> None:
    wait_for(lambda: len(series(mesh, "probe_success", "web")) == 3, 30, "three agents reporting")
    body = http_get(mesh.metrics_url)
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, text=True
    )
    # Not a warning either: promtool's lint findings are what Prometheus users see.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_sighup_pushes_added_checks_and_drops_removed_gauges(mesh: Mesh, web_server: int) -> None:
    wait_for(
        lambda: len(series(mesh, "probe_success", "closed-port")) == 3, 30, "three agents reporting"
    )
    extra = f'  - {{name: web-again, target: "http://127.0.0.1:{web_server}/index.html", module: http_2xx, interval: 500ms, countries: [DE, JP]}}'
    text = checks_yaml(web_server, 1, extra).replace(
        "  - {name: closed-port", "  # removed: closed-port"
    )
    mesh.checks_path.write_text(text)
    assert mesh.collector is not None
    mesh.collector.signal(signal.SIGHUP)
    wait_for(
        lambda: set(series(mesh, "probe_success", "web-again")) == {"vps-de-1", "vps-jp-1"},
        20,
        "the added check to reach DE and JP agents",
    )
    assert series(mesh, "probe_success", "closed-port") == {}
    # Its counters stay for --series-ttl: results buffered before the edit still count.
    samples = mesh.metrics()
    assert total(samples, "probemesh_probe_results_total", check="closed-port") > 0


def test_invalid_reload_keeps_previous_checks(mesh: Mesh) -> None:
    wait_for(lambda: len(series(mesh, "probe_success", "web")) == 3, 30, "three agents reporting")
    mesh.checks_path.write_text("modules: {m: {prober: nope}}\nchecks: []\n")
    assert mesh.collector is not None
    mesh.collector.signal(signal.SIGHUP)
    wait_for(
        lambda: "reload failed, keeping the previous checks" in mesh.collector.log(),
        10,
        "reload error log",
    )
    assert "unknown prober 'nope'" in mesh.collector.log()
    assert mesh.collector.alive()
    assert len(series(mesh, "probe_success", "web")) == 3


def test_agents_reconnect_after_collector_restart(mesh: Mesh) -> None:
    wait_for(lambda: len(series(mesh, "probe_success", "web")) == 3, 30, "three agents reporting")
    before = total(mesh.metrics(), "probemesh_probe_results_total")
    assert mesh.collector is not None
    assert mesh.collector.stop() == 0
    mesh.start_collector()
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_agent_connected") == 3,
        40,
        "all agents to reconnect",
    )
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_probe_results_total") > before + 10,
        20,
        "results to flow again (counters continue from before the restart)",
    )
