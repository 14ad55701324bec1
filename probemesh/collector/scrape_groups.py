"""The groups of families a /metrics scrape may select, as node_exporter's
``collect[]`` and ``exclude[]`` select its collectors.

A collector that remote-writes its results is scraped for its own health
only; without a selection it would render and send every probe series at each
scrape (tens of MiB at 20,000 pairs) for the scraper to drop. A group is
named by what its series are per: a check x agent pair, a check x country,
an agent, or nothing (the collector itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

PROBES = "probes"
"""Per check x agent: probe_* gauges, probemesh_check_not_runnable and the
probemesh_probe_{results,failures,refused}_total counters."""
HISTOGRAMS = "histograms"
"""Per check x country: probemesh_probe_duration_seconds and
probemesh_probe_phase_duration_seconds."""
OUTAGES = "outages"
"""The evaluator's verdicts: probemesh_outage, probemesh_country_reachability_ratio,
probemesh_country_diagnosis."""
AGENTS = "agents"
"""Per agent: connected, last seen, info, clock and local-problem gauges."""
COLLECTOR = "collector"
"""The collector's own health: ingest, streams, loop lag, leases, database,
outage round, remote write, notifications."""

GROUPS = (PROBES, HISTOGRAMS, OUTAGES, AGENTS, COLLECTOR)
ALL = frozenset(GROUPS)
PARAMETERS = ("collect[]", "exclude[]")

# Families of the registry part of /metrics (the rest are the collector's own).
_REGISTRY_GROUPS = {
    "probemesh_outage": OUTAGES,
    "probemesh_country_reachability_ratio": OUTAGES,
    "probemesh_country_diagnosis": OUTAGES,
    "probemesh_agent_local_problem": AGENTS,
}


class SelectionError(ValueError):
    """A parameter or group the scrape may not name; the message names it."""


def selection(query: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The groups a scrape's query parameters select (every group without any).

    ``collect[]=G`` (repeated) keeps only those groups, ``exclude[]=G`` leaves
    those out; the two together are refused, as node_exporter refuses them.
    """
    given: dict[str, set[str]] = {}
    for name, value in query:
        if name not in PARAMETERS:
            raise SelectionError(f"unknown parameter {name!r}; known: {', '.join(PARAMETERS)}")
        if value not in ALL:
            raise SelectionError(f"unknown group {value!r} in {name}; groups: {', '.join(GROUPS)}")
        given.setdefault(name, set()).add(value)
    if len(given) > 1:
        raise SelectionError("collect[] and exclude[] cannot be used together")
    if "collect[]" in given:
        return frozenset(given["collect[]"])
    return ALL - given.get("exclude[]", set())


def registry_group(name: str) -> str:
    """The group of a family of the registry part of /metrics."""
    return _REGISTRY_GROUPS.get(name, COLLECTOR)


class _Selected(Collector):
    def __init__(self, registry: CollectorRegistry, groups: frozenset[str]) -> None:
        self.registry = registry
        self.groups = groups

    def collect(self) -> Iterator[Metric]:
        groups = self.groups
        return (f for f in self.registry.collect() if registry_group(f.name) in groups)


def selected(registry: CollectorRegistry, groups: frozenset[str]) -> CollectorRegistry:
    """registry itself for every group, else a registry of its families in groups."""
    if groups == ALL:
        return registry
    view = CollectorRegistry(auto_describe=False)
    view.register(_Selected(registry, groups))
    return view
