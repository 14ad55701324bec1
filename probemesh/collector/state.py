"""The collector's in-memory view of the mesh: agents, latest results, counters.

Plain data structures, updated by the ingest applier and read by the exporter
and the API. Counters and histograms count every result, late ones included;
the "latest" result per check x agent only moves forward in probe time.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from probemesh.catalog import HTTP_PHASE_ORDER
from probemesh.v1 import mesh_pb2 as pb

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REASON_NAMES = {
    value: pb.FailureReason.Name(value).removeprefix("FAILURE_REASON_").lower()
    for value in pb.FailureReason.values()
}
CounterKey = tuple[str, ...]


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


class Tally:
    """Counters of one check on one agent, with its country's histograms.

    One object per check x agent keeps the per-result work on the ingest hot
    path to a single dict lookup; the exporter and the store see flat keys.
    """

    __slots__ = ("agent", "check", "country", "failure", "hist_keys", "hists", "lines", "reasons", "success")

    def __init__(self, check: str, agent: str, country: str, state: MeshState) -> None:
        self.check, self.agent, self.country = check, agent, country
        self.success = 0
        self.failure = 0
        self.reasons: dict[str, int] = {}
        self.lines: dict[str, str] | None = None  # exposition cache, reset on change
        self.hist_keys: list[CounterKey] = [("duration", check, country)]
        if ("phase", check, country, HTTP_PHASE_ORDER[0]) in state.histograms:
            self.add_phases(state)
        self.hists = [state.histogram(key) for key in self.hist_keys]

    def add_phases(self, state: MeshState) -> None:
        """HTTP checks also get one histogram per phase (created on first use)."""
        country = self.country
        self.hist_keys[1:] = [("phase", self.check, country, phase) for phase in HTTP_PHASE_ORDER]
        self.hists = [state.histogram(key) for key in self.hist_keys]

    def counters(self) -> Iterator[tuple[CounterKey, int]]:
        base = (self.check, self.agent, self.country)
        if self.success:
            yield ("results", *base, "success"), self.success
        if self.failure:
            yield ("results", *base, "failure"), self.failure
        for reason, count in self.reasons.items():
            yield ("failures", *base, reason), count


@dataclass
class Latest:
    """The newest result of one check on one agent."""

    result: pb.Result
    country: str
    region: str
    # Catalog-validated (name, label items, value) triples, filled on first export.
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]] | None = None
    # Rendered exposition lines per family; reset whenever result changes.
    lines: dict[str, str] | None = None


@dataclass
class DirtySnapshot:
    """What changed since the last commit, as the store writes it."""

    tallies: set[Tally]
    counters: list[tuple[CounterKey, int]]
    histograms: list[tuple[CounterKey, list[float]]]


class MeshState:
    """Everything the exporter and API read."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}
        self.latest: dict[tuple[str, str], Latest] = {}
        self.tallies: dict[tuple[str, str], Tally] = {}
        # ("duration", check, country) and ("phase", check, country, phase)
        self.histograms: dict[CounterKey, Histogram] = {}
        self.dirty: set[Tally] = set()
        # Changed since their exposition lines were last rendered (see MeshExporter.prerender).
        self.unrendered: set[tuple[str, str]] = set()
        self.unrendered_tallies: set[Tally] = set()

    def histogram(self, key: CounterKey) -> Histogram:
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram()
        return hist

    def restore(self, counters: dict[CounterKey, int], histograms: dict[CounterKey, list[float]]) -> None:
        """Load persisted counters and histograms at start-up."""
        for key, state in histograms.items():
            self.histograms[key] = Histogram(state)
        for key, value in counters.items():
            kind, check, agent, country, label = key
            tally = self._tally(check, agent, country)
            if kind == "failures":
                tally.reasons[label] = value
            elif label == "success":
                tally.success = value
            else:
                tally.failure = value

    def _tally(self, check: str, agent: str, country: str) -> Tally:
        tally = self.tallies.get((check, agent))
        if tally is None:
            tally = self.tallies[(check, agent)] = Tally(check, agent, country, self)
        return tally

    def apply(self, agent: AgentInfo, result: pb.Result) -> None:
        """Count one validated, not-yet-applied result and maybe make it the latest."""
        check = result.check
        agent_id = agent.agent_id
        tally = self.tallies.get((check, agent_id)) or self._tally(check, agent_id, agent.country)
        hists = tally.hists
        tally.lines = None
        if result.success:
            tally.success += 1
            phases = result.http_phase_seconds
            if phases:
                if len(hists) == 1:
                    tally.add_phases(self)
                    hists = tally.hists
                for hist, seconds in zip(hists[1:], phases, strict=False):
                    if seconds >= 0:  # NaN and negatives compare False: never histogrammed
                        hist.observe(seconds)
        else:
            tally.failure += 1
            reason = REASON_NAMES[result.reason]
            tally.reasons[reason] = tally.reasons.get(reason, 0) + 1
        hists[0].observe(result.duration_seconds)
        self.dirty.add(tally)
        self.unrendered_tallies.add(tally)
        timestamp = result.timestamp
        key = (check, agent_id)
        current = self.latest.get(key)
        if current is None:
            self.latest[key] = Latest(result, agent.country, agent.region)
            self.unrendered.add(key)
        elif timestamp >= current.result.timestamp:  # "latest" only moves forward in time
            current.result, current.region, current.samples, current.lines = result, agent.region, None, None
            self.unrendered.add(key)
        if timestamp > agent.last_seen:
            agent.last_seen = min(timestamp, time.time())

    def counters(self) -> Iterator[tuple[CounterKey, int]]:
        """Every counter as (("results"|"failures", check, agent, country, label), value)."""
        for tally in self.tallies.values():
            yield from tally.counters()

    def take_dirty(self) -> DirtySnapshot:
        """Counters and histograms changed since the last call, for persisting."""
        tallies, self.dirty = self.dirty, set()
        counters = [item for tally in tallies for item in tally.counters()]
        keys = {key: hist for tally in tallies for key, hist in zip(tally.hist_keys, tally.hists, strict=True)}
        return DirtySnapshot(tallies, counters, [(key, hist.state()) for key, hist in keys.items()])

    def requeue(self, snapshot: DirtySnapshot) -> None:
        """A commit failed: write these again with the next one."""
        self.dirty |= snapshot.tallies

    def forget_checks(self, keep: set[str]) -> None:
        """Drop latest results of checks that are no longer configured.

        Rendered lines embed the check's target, which a reload may change.
        """
        for key in [k for k in self.latest if k[0] not in keep]:
            del self.latest[key]
        for latest in self.latest.values():
            latest.lines = None

    def forget_agent(self, agent_id: str) -> None:
        """Drop the gauges of an agent gone longer than the TTL.

        Its counters stay: they are persisted, and dropping them from memory
        would make a returning agent's counters restart below the stored value.
        """
        self.agents.pop(agent_id, None)
        for key in [k for k in self.latest if k[1] == agent_id]:
            del self.latest[key]
