"""A stalled disk never stalls an event loop: the collector keeps answering and the
agent keeps timing probes while their SQLite databases are locked.

The stall is real: the test holds a write transaction on the process's own
database file, so every write waits for SQLite's busy timeout (5 s) and then
fails, exactly as on a disk that stops answering. A write made on the event loop
would freeze it for those seconds; the assertions bound every loop's response
time well below that.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import Mesh, free_port, http_get, scrape, total, wait_for

STALL = 4.0  # seconds the database stays locked
MAX_RESPONSE = 1.0  # a loop blocked by one write would take >= 5 s


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on path (readers go on, as in WAL mode)."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def slowest_response(url: str, seconds: float) -> float:
    """Poll url for seconds; return the slowest answer's time."""
    slowest = 0.0
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        started = time.monotonic()
        http_get(url, timeout=10)
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    return slowest


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    web_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(web_port), "--bind", "127.0.0.1", "-d", str(www)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checks = f"""
modules:
  http_2xx: {{prober: http, timeout: 2s, http: {{preferred_ip_protocol: ip4}}}}
checks:
  - {{name: web, target: "http://127.0.0.1:{web_port}/", module: http_2xx, interval: 200ms}}
"""
    mesh = Mesh(tmp_path, checks)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{web_port}/"), 10, "the web server")
        mesh.start_collector()
        yield mesh
    finally:
        mesh.stop()
        server.terminate()
        server.wait(5)


def test_collector_answers_while_its_database_is_locked(mesh: Mesh) -> None:
    token = mesh.token("vps-de-1", "DE")  # created before the lock: token create writes
    with write_locked(mesh.data_dir / "collector.sqlite3"):
        started = time.monotonic()
        mesh.start_agent("vps-de-1", "DE", token=token)
        slowest = slowest_response(mesh.api("/healthz"), STALL)
        connected = total(mesh.metrics(), "probemesh_agent_connected", agent="vps-de-1")
        held = time.monotonic() - started
    assert held >= STALL
    assert slowest < MAX_RESPONSE, f"/healthz took {slowest:.2f}s while the database was locked"
    assert connected == 1.0, "the agent connects while the token's last use waits for the disk"
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_ingest_results_total") > 0,
        20,
        "results applied once the database is free",
    )


def test_agent_times_probes_while_its_queue_is_locked(mesh: Mesh) -> None:
    metrics_port = free_port()
    agent_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    mesh.start_agent("vps-de-1", "DE", metrics_port=metrics_port)
    wait_for(
        lambda: total(scrape(agent_metrics), "probemesh_agent_results_acked_total") > 0,
        20,
        "the agent's first acked results",
    )
    before = total(scrape(agent_metrics), "probemesh_agent_results_produced_total")
    with write_locked(mesh.root / "agent-vps-de-1" / "results.sqlite3"):
        slowest = slowest_response(agent_metrics, STALL)
    assert slowest < MAX_RESPONSE, f"agent /metrics took {slowest:.2f}s while its queue was locked"

    def caught_up() -> bool:
        agent = scrape(agent_metrics)
        produced = total(agent, "probemesh_agent_results_produced_total")
        # The probes run during the stall (one per 200 ms) reach the disk after it.
        return produced >= before + 10 and produced == total(
            agent, "probemesh_agent_results_acked_total"
        )

    wait_for(caught_up, 30, "every result persisted and acked after the stall")
    # Loopback probes take milliseconds; one that spanned a blocked loop would
    # take the whole stall. Every probe, including those run during it:
    samples = mesh.metrics()
    count = "probemesh_probe_duration_seconds_bucket"
    everything = total(samples, count, check="web", country="DE", le="+Inf")
    fast = total(samples, count, check="web", country="DE", le="0.5")
    assert everything >= before + 10
    assert fast == everything, f"{everything - fast:.0f} probes took over 0.5 s"
    assert total(samples, "probemesh_agent_results_dropped_total") == 0
