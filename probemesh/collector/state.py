"""The collector's in-memory view of the mesh: agents, latest results, counters.

Plain data structures, updated by the ingest applier and read by the exporter
and the API. Counters and histograms count every result, late ones included;
the "latest" result per check x agent only moves forward in probe time.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field

from probemesh.catalog import HTTP_PHASES
from probemesh.v1 import mesh_pb2 as pb

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REASON_NAMES = {
    value: pb.FailureReason.Name(value).removeprefix("FAILURE_REASON_").lower()
    for value in pb.FailureReason.values()
}
_PHASE_METRIC = "probe_http_duration_seconds"


@dataclass
class AgentInfo:
    """One agent as the collector knows it."""

    agent_id: str
    country: str
    region: str = ""
    city: str = ""
    asn: int = 0
    version: str = ""
    connected: bool = False
    last_seen: float = 0.0
    assigned: frozenset[str] = frozenset()
    ever_assigned: set[str] = field(default_factory=set)
    local_problem: bool = False


class Histogram:
    """Non-cumulative bucket counts plus sum; cumulated only when exported."""

    __slots__ = ("counts", "total")

    def __init__(self, state: list[float] | None = None) -> None:
        n = len(DURATION_BUCKETS) + 1
        if state and len(state) == n + 1:
            self.counts = [int(c) for c in state[:n]]
            self.total = float(state[n])
        else:
            self.counts = [0] * n
            self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(DURATION_BUCKETS, value)] += 1
        self.total += value

    def state(self) -> list[float]:
        return [*self.counts, self.total]


@dataclass
class Latest:
    """The newest result of one check on one agent."""

    result: pb.Result
    country: str
    region: str
    # Catalog-validated (name, label items, value) triples, filled on first export.
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]] | None = None


class MeshState:
    """Everything the exporter and API read, keyed by plain tuples."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}
        self.latest: dict[tuple[str, str], Latest] = {}
        # ("results", check, agent, country, "success"|"failure") and
        # ("failures", check, agent, country, reason) -> count
        self.counters: dict[tuple[str, ...], int] = {}
        # ("duration", check, country) and ("phase", check, country, phase)
        self.histograms: dict[tuple[str, ...], Histogram] = {}
        self.dirty_counters: set[tuple[str, ...]] = set()
        self.dirty_histograms: set[tuple[str, ...]] = set()

    def apply(self, agent: AgentInfo, result: pb.Result, is_http: bool) -> None:
        """Count one validated, not-yet-applied result and maybe make it the latest."""
        check = result.check
        country = agent.country
        success = result.success
        key = ("results", check, agent.agent_id, country, "success" if success else "failure")
        self.counters[key] = self.counters.get(key, 0) + 1
        self.dirty_counters.add(key)
        if not success:
            fkey = ("failures", check, agent.agent_id, country, REASON_NAMES[result.reason])
            self.counters[fkey] = self.counters.get(fkey, 0) + 1
            self.dirty_counters.add(fkey)
        hkey = ("duration", check, country)
        hist = self.histograms.get(hkey)
        if hist is None:
            hist = self.histograms[hkey] = Histogram()
        hist.observe(result.duration_seconds)
        self.dirty_histograms.add(hkey)
        if is_http and success:
            for sample in result.samples:
                if sample.name == _PHASE_METRIC:
                    phase = sample.labels.get("phase", "")
                    if phase in HTTP_PHASES and math.isfinite(sample.value) and sample.value >= 0:
                        pkey = ("phase", check, country, phase)
                        phist = self.histograms.get(pkey)
                        if phist is None:
                            phist = self.histograms[pkey] = Histogram()
                        phist.observe(sample.value)
                        self.dirty_histograms.add(pkey)
        lkey = (check, agent.agent_id)
        current = self.latest.get(lkey)
        if current is None or result.timestamp >= current.result.timestamp:
            self.latest[lkey] = Latest(result, country, agent.region)
        if result.timestamp > agent.last_seen:
            agent.last_seen = min(result.timestamp, time.time())

    def take_dirty(self) -> tuple[list[tuple[tuple[str, ...], int]], list[tuple[tuple[str, ...], list[float]]]]:
        """Counters and histograms changed since the last call, for persisting."""
        counters = [(key, self.counters[key]) for key in self.dirty_counters]
        histograms = [(key, self.histograms[key].state()) for key in self.dirty_histograms]
        self.dirty_counters.clear()
        self.dirty_histograms.clear()
        return counters, histograms

    def forget_checks(self, keep: set[str]) -> None:
        """Drop latest results of checks that are no longer configured."""
        for key in [k for k in self.latest if k[0] not in keep]:
            del self.latest[key]

    def forget_agent(self, agent_id: str) -> None:
        """Drop the gauges of an agent gone longer than the TTL.

        Its counters stay: they are persisted, and dropping them from memory
        would make a returning agent's counters restart below the stored value.
        """
        self.agents.pop(agent_id, None)
        for key in [k for k in self.latest if k[1] == agent_id]:
            del self.latest[key]
