"""The agent's own /metrics: produced, acked, dropped and queue depth.

Values come straight from the durable queue's persisted counters, so they keep
counting across agent restarts and always agree with what is on disk.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from probemesh.agent.queue import DurableQueue


class AgentMetrics(Collector):
    """Exports the queue's counters; registered on a registry passed in."""

    def __init__(self, queue: DurableQueue, agent_id: str, country: str) -> None:
        self.queue = queue
        self.labels = {"agent": agent_id, "country": country}
        self.connected = False
        self.checks = 0

    def collect(self) -> Iterator[Metric]:
        c = self.queue.counters
        keys = list(self.labels)
        values = list(self.labels.values())
        for name, help_text, value in (
            ("probemesh_agent_results_produced", "Results persisted to the queue", c.produced),
            ("probemesh_agent_results_acked", "Results acknowledged by a collector", c.acked),
            (
                "probemesh_agent_results_dropped",
                "Results dropped by the bounded queue",
                self.queue.dropped_total,
            ),
        ):
            counter = CounterMetricFamily(name, help_text, labels=keys)
            counter.add_metric(values, value)
            yield counter
        for name, help_text, value in (
            ("probemesh_agent_queue_depth", "Results on disk awaiting an Ack", self.queue.depth),
            ("probemesh_agent_last_seq", "Highest sequence number produced", c.last_seq),
            (
                "probemesh_agent_collector_connected",
                "1 while a collector session is up",
                self.connected,
            ),
            ("probemesh_agent_checks", "Checks currently assigned", self.checks),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=keys)
            gauge.add_metric(values, float(value))
            yield gauge
