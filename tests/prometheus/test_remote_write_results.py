"""Every result reaches the TSDB once, at the probe's time, a backlog included.

Real processes against a real receiver: VictoriaMetrics, and Prometheus with
--web.enable-remote-write-receiver (and an out-of-order window, which a replayed
backlog needs). Two agents probe three checks twice a second; the collector is
stopped for a few seconds while they buffer on disk, then restarted, and the
agents replay their backlog at its original timestamps. After the agents stop
and the journal drains, the receiver holds exactly one probe_success sample per
result: for each agent and check, as many as the collector counted, and per
agent as many as the agent produced.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.durability.common import FAST_LINK_ENV, queue_counters
from tests.harness import Mesh, free_port, scrape, total, wait_for
from tests.prometheus.mesh import Targets
from tests.prometheus.promserver import MISSING_REASON as PROMETHEUS_MISSING
from tests.prometheus.promserver import PROMETHEUS, run_prometheus
from tests.prometheus.victoria import MISSING_REASON as VM_MISSING
from tests.prometheus.victoria import VICTORIA_METRICS, run_victoria_metrics

pytestmark = pytest.mark.slow

CHECKS = """
modules:
  http_2xx: {{prober: http, timeout: 1s}}
checks:
  - {{name: up, target: "{http}/ok", module: http_2xx, interval: 500ms}}
  - {{name: down, target: "{http}/fail", module: http_2xx, interval: 500ms}}
  - {{name: mixed, target: "{http}/mixed", module: http_2xx, interval: 500ms}}
"""
AGENTS = (("de-1", "DE", "127.0.0.2"), ("us-1", "US", "127.0.0.3"))

Query = Callable[[str], list[dict[str, Any]]]


@contextlib.contextmanager
def receiver(kind: str, workdir: Path) -> Iterator[tuple[str, Query]]:
    if kind == "victoria-metrics":
        if VICTORIA_METRICS is None:
            pytest.skip(VM_MISSING)
        with run_victoria_metrics(workdir) as vm:
            yield vm.write_url, vm.query
    else:
        if PROMETHEUS is None:
            pytest.skip(PROMETHEUS_MISSING)
        with run_prometheus(workdir, remote_write_receiver=True) as prom:
            yield f"{prom.url}/api/v1/write", prom.query


@pytest.mark.parametrize("kind", ["victoria-metrics", "prometheus"])
def test_every_result_lands_once_at_its_probe_time(kind: str, tmp_path: Path) -> None:
    targets = Targets(tmp_path, failing_sources={"127.0.0.3"})
    mesh = Mesh(tmp_path, CHECKS.format(http=targets.http_url))
    metrics_ports = {agent_id: free_port() for agent_id, _, _ in AGENTS}
    try:
        with receiver(kind, tmp_path / kind) as (write_url, query):
            collector_args = (
                "--remote-write-url", write_url, "--remote-write-interval", "1s",
                "--external-label", "collector=c1",
            )  # fmt: skip
            mesh.start_collector(*collector_args)
            for agent_id, country, source in AGENTS:
                mesh.start_agent(
                    agent_id, country, "--source-address", source,
                    metrics_port=metrics_ports[agent_id], env=FAST_LINK_ENV,
                )  # fmt: skip

            def agent_metrics(agent_id: str) -> dict[Any, float]:
                return scrape(f"http://127.0.0.1:{metrics_ports[agent_id]}/metrics")

            def all_delivering() -> bool:
                return all(
                    total(agent_metrics(a), "probemesh_agent_results_acked_total") > 0
                    for a, _, _ in AGENTS
                )

            # Every agent has its checks before the cut, so each buffers during it.
            wait_for(all_delivering, 30, "every agent's first acked results")
            assert mesh.collector is not None
            mesh.collector.stop()  # the agents buffer on disk meanwhile
            time.sleep(3)
            backlog = {
                a: total(agent_metrics(a), "probemesh_agent_results_produced_total")
                for a, _, _ in AGENTS
            }
            mesh.start_collector(*collector_args)

            # The backlog is delivered once everything produced before the restart is
            # acked. (The depth is seldom 0 for both agents at once: they go on probing.)
            def drained() -> bool:
                return all(
                    total(agent_metrics(a), "probemesh_agent_results_acked_total") >= backlog[a]
                    for a, _, _ in AGENTS
                )

            wait_for(drained, 60, f"the agents' backlog {backlog} to be acked")

            def enough() -> bool:  # results after the cut too, however fast the replay
                samples = scrape(mesh.metrics_url)
                return all(
                    total(samples, "probemesh_probe_results_total", agent=a, check=c) > 10
                    for a, _, _ in AGENTS
                    for c in ("up", "down", "mixed")
                )

            wait_for(enough, 30, "more than 10 results of every check from every agent")
            for proc in mesh.agents.values():
                proc.stop()  # drains what is in flight: the counts are final after this
            produced = {}
            for agent_id, _, _ in AGENTS:
                counters = queue_counters(tmp_path / f"agent-{agent_id}")
                assert counters["depth"] == counters.get("dropped", 0) == 0, counters
                produced[agent_id] = counters["produced"]

            def journal_empty() -> bool:
                samples = scrape(mesh.metrics_url)
                return (
                    total(samples, "probemesh_remote_write_pending_requests", stream="results") == 0
                )

            wait_for(journal_empty, 30, "the remote-write journal to drain")
            counted = scrape(mesh.metrics_url)

            def stored() -> dict[tuple[str, str], int]:
                rows = query("count_over_time(probe_success[1h])")
                return {(r["metric"]["agent"], r["metric"]["check"]): int(float(r["value"][1]))
                        for r in rows}  # fmt: skip

            expected = {
                (agent_id, check): int(
                    total(counted, "probemesh_probe_results_total", agent=agent_id, check=check)
                )
                for agent_id, _, _ in AGENTS
                for check in ("up", "down", "mixed")
            }
            assert all(n > 10 for n in expected.values()), expected
            wait_for(lambda: stored() == expected, 20, f"{kind} to hold {expected}")
            assert stored() == expected
            for agent_id, _, _ in AGENTS:
                assert (
                    sum(n for (a, _), n in expected.items() if a == agent_id) == produced[agent_id]
                )
            assert total(counted, "probemesh_remote_write_dropped_samples_total") == 0
            # Delivered journal entries' waits (journaled -> accepted) are exported.
            assert total(counted, "probemesh_remote_write_result_delay_seconds_count") > 0
            # Every sample sits at its probe time: none in the collector's outage is missing.
            assert query('probe_success{check="mixed",agent="us-1"} == 0')
            mesh.stop()  # while the receiver is up: a stopping collector drains to it
    finally:
        mesh.stop()
        targets.close()
