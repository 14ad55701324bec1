"""The collector's in-memory view of the mesh: agents, latest results, counters.

Plain data structures, written by ingest only and read by the exporter, the
outage evaluator and the API; docs/architecture.md lists who owns what.
Counters and histograms count every result, late ones included; the "latest"
result per check x agent only moves forward in probe time, and only results
of the agent's current assignment (check and target) move it. A reader that
needs to know what changed gets a ChangeFeed of its own: MeshState fills it,
only that reader drains it.
"""

from __future__ import annotations

import logging
import sys
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from probemesh.agent.safety import policy_rule
from probemesh.catalog import HTTP_PHASE_ORDER
from probemesh.collector.clock import ClockEstimate
from probemesh.collector.evidence import EvidenceBook
from probemesh.collector.samples import KeptSamples, SampleFilter, SeriesKey
from probemesh.v1 import mesh_pb2 as pb

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REASON_NAMES = {
    value: pb.FailureReason.Name(value).removeprefix("FAILURE_REASON_").lower()
    for value in pb.FailureReason.values()
}
POLICY_REASON = REASON_NAMES[pb.FAILURE_REASON_POLICY]
CounterKey = tuple[str, ...]
NO_REASONS: dict[str, int] = {}  # every tally's reasons until it fails; never written

log = logging.getLogger(__name__)
_FILTER = SampleFilter()  # for apply() callers that did not filter (ingest always does)


@dataclass(slots=True)
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
    # check -> target, as last sent to the agent, at revision
    assigned: dict[str, str] = field(default_factory=dict)
    revision: int = 0
    queue_max_age: float = 0.0  # announced in Hello; 0 when the agent does not say
    features: tuple[str, ...] = ()  # protocol features announced in Hello
    ack_hold: float = 0.0  # seconds its Acks may be held back, announced in Hello
    clock: ClockEstimate = field(default_factory=ClockEstimate)
    # Results whose timestamp ingest moved onto the collector's clock: by the
    # estimated offset ("corrected"), or back to the arrival time because it
    # was still in the future ("clamped").
    clock_corrected: int = 0
    clock_clamped: int = 0
    last_result: float = 0.0  # newest result timestamp, on the collector's clock
    secrets_dir: bool = False  # announced in Hello: it reads files named in checks
    # The policy announced in Hello: interval floor (0: not said) and whether
    # private targets are allowed (None: not said).
    min_interval: float = 0.0
    allow_private_targets: bool | None = None
    # check -> why the agent refuses (or refused) it by policy, predicted from
    # the Hello or reported; the latest result tells whether it still does
    refusals: dict[str, str] = field(default_factory=dict)


class Histogram:
    """Non-cumulative bucket counts plus sum; cumulated only when exported.

    MeshState.record observes inline (no method call per observation): it is
    the ingest hot path, six observations per HTTP result.

    Several collectors add to the same (check, country) histogram, each for
    the agents it holds, so the database gets this collector's changes since
    the last commit (delta) added to what it has, and memory then takes the
    sum back (merge): the other collectors' observations included.
    """

    __slots__ = ("counts", "saved", "total")

    def __init__(self, state: list[float] | None = None) -> None:
        n = len(DURATION_BUCKETS) + 1
        if state and len(state) == n + 1:
            self.counts = [int(c) for c in state[:n]]
            self.total = float(state[n])
        else:
            self.counts = [0] * n
            self.total = 0.0
        self.saved = self.state()  # as last committed or loaded

    def state(self) -> list[float]:
        return [*self.counts, self.total]

    def delta(self) -> list[float] | None:
        """What this collector observed since the last commit; None if nothing."""
        current = self.state()
        if current == self.saved:
            return None
        return [now - then for now, then in zip(current, self.saved, strict=True)]

    def merge(self, stored: list[float]) -> None:
        """Take the database's sum, which includes the delta just committed."""
        n = len(self.counts)
        self.counts = [int(c) for c in stored[:n]]
        self.total = float(stored[n])
        self.saved = self.state()


HistogramSet = tuple[tuple[CounterKey, ...], tuple[Histogram, ...], tuple[Histogram, ...]]


class Tally:
    """Counters of one check on one agent, with its country's histograms and latest result.

    One object per check x agent keeps the per-result work on the ingest hot
    path to a single dict lookup; the exporter and the store see flat keys.
    The collector holds one per check x agent, so everything a tally can share
    is shared, and what it can read from what it shares is not stored again:
    its (check, agent) key tuple (every dict keyed by the pair uses this one;
    check and agent are read from it), the histogram set of its check and
    country, and an empty reasons dict until its first failure.
    """

    __slots__ = (
        "country", "failure", "histogram_set", "latest", "pair", "reasons", "refused", "success",
    )  # fmt: skip

    def __init__(self, pair: tuple[str, str], country: str, state: MeshState) -> None:
        self.pair = pair
        self.country = country
        self.success = 0
        self.failure = 0
        self.refused = 0  # results the agent refused by policy: no probe ran
        self.reasons = NO_REASONS  # failure reason -> count; replaced by its own dict when written
        self.latest: Latest | None = None  # the same object as MeshState.latest[pair]
        phases = ("phase", pair[0], country, HTTP_PHASE_ORDER[0]) in state.histograms
        self.histogram_set = state.histogram_set(pair[0], country, phases)

    @property
    def check(self) -> str:
        return self.pair[0]

    @property
    def agent(self) -> str:
        return self.pair[1]

    @property
    def hist_keys(self) -> tuple[CounterKey, ...]:
        """The keys of its duration histogram and, for HTTP, its phase histograms."""
        return self.histogram_set[0]

    @property
    def hists(self) -> tuple[Histogram, ...]:
        return self.histogram_set[1]

    @property
    def phase_hists(self) -> tuple[Histogram, ...]:
        return self.histogram_set[2]

    def add_phases(self, state: MeshState) -> None:
        """HTTP checks also get one histogram per phase (created on first use)."""
        self.histogram_set = state.histogram_set(self.check, self.country, True)

    def own_reasons(self) -> dict[str, int]:
        """The reasons dict to write to: this tally's own, never the shared empty one."""
        if self.reasons is NO_REASONS:
            self.reasons = {}
        return self.reasons

    def counters(self) -> Iterator[tuple[CounterKey, int]]:
        base = (self.check, self.agent, self.country)
        if self.success:
            yield ("results", *base, "success"), self.success
        if self.failure:
            yield ("results", *base, "failure"), self.failure
        for reason, count in self.reasons.items():
            yield ("failures", *base, reason), count
        if self.refused:
            yield ("refused", *base, POLICY_REASON), self.refused


@dataclass(slots=True)
class Latest:
    """The newest result of one check on one agent: the fields its readers use.

    Not the protobuf Result: with its samples that costs kilobytes, and the
    collector holds one per check x agent. A newer result replaces the whole
    object (never mutated), so a reader tells by identity whether it changed.
    """

    success: bool
    reason: str  # failure reason name (REASON_NAMES); "" or "unspecified" on success
    message: str  # the agent's refusal when reason is POLICY_REASON, else ""
    duration: float
    timestamp: float  # on the collector's clock
    country: str
    region: str
    # The result's samples that the catalog admits, as ingest filtered them: the
    # series keys (one tuple shared by results of the same shape) and their
    # values packed as doubles. Two fields, not the KeptSamples pair: a tuple
    # per check x agent is 56 bytes more.
    series: tuple[SeriesKey, ...]
    values: bytes
    target: str  # the assigned target the result ran against

    @property
    def samples(self) -> KeptSamples:
        return self.series, self.values

    @property
    def refused(self) -> bool:
        """The agent refused the check by its policy: no probe ran."""
        return self.reason == POLICY_REASON


class ChangeFeed:
    """What changed in MeshState since one reader last drained this feed.

    MeshState adds to every feed; each reader drains only its own, so no
    reader ever hides a change from another.
    """

    __slots__ = ("removed", "tallies")

    def __init__(self) -> None:
        self.tallies: set[Tally] = set()  # counters or latest result changed
        self.removed: set[tuple[str, str]] = set()  # pairs whose latest result was dropped


@dataclass
class DirtySnapshot:
    """What changed since the last commit, as the store writes it."""

    tallies: set[Tally]
    counters: list[tuple[CounterKey, int]]
    histograms: list[tuple[CounterKey, list[float]]]  # (key, delta to add)


class MeshState:
    """Everything the exporter and API read."""

    def __init__(self) -> None:
        self.agents: dict[str, AgentInfo] = {}
        self.latest: dict[tuple[str, str], Latest] = {}
        self.tallies: dict[tuple[str, str], Tally] = {}
        # agent -> check -> tally: the ingest loop looks up by check within one agent's batch
        self.agent_tallies: dict[str, dict[str, Tally]] = {}
        # ("duration", check, country) and ("phase", check, country, phase)
        self.histograms: dict[CounterKey, Histogram] = {}
        # (check, country, with phases) -> the histogram keys, histograms and phase
        # histograms its tallies share
        self._histogram_sets: dict[tuple[str, str, bool], HistogramSet] = {}
        self.dirty: set[Tally] = set()  # changed since ingest last persisted them
        self.feeds: list[ChangeFeed] = []
        # Agents' evidence for the diagnosis (written by the service, read by the evaluator).
        self.evidence = EvidenceBook()
        # Checks gone from the file whose series stay exported because results
        # for them still arrive (buffered before the edit): check -> last time.
        self.lingering: dict[str, float] = {}
        self.configured: frozenset[str] = frozenset()  # the checks file's checks
        # (check, agent) pairs whose check an agent was last sent without: their
        # gauges expire like a gone agent's (see forget_unassigned)
        self.unassigned: set[tuple[str, str]] = set()
        self.lingering_version = 0  # bumped when a check starts or stops lingering
        # the assignments of the current revision by their hash (see assign)
        self._assignments: dict[int, list[dict[str, str]]] = {}
        self._assignments_revision = 0
        self._assignments_kept = 0  # dicts in _assignments

    def feed(self) -> ChangeFeed:
        """A new reader's change feed, starting with every tally as changed."""
        feed = ChangeFeed()
        feed.tallies.update(self.tallies.values())
        self.feeds.append(feed)
        return feed

    def histogram(self, key: CounterKey) -> Histogram:
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = Histogram()
        return hist

    def histogram_set(self, check: str, country: str, phases: bool) -> HistogramSet:
        """The duration histogram key (and the phase ones) of check in country, the
        histograms, and the phase histograms alone: tuples shared by all its tallies."""
        entry = self._histogram_sets.get((check, country, phases))
        if entry is None:
            keys: tuple[CounterKey, ...] = (("duration", check, country),)
            if phases:
                keys += tuple(("phase", check, country, phase) for phase in HTTP_PHASE_ORDER)
            hists = tuple(self.histogram(key) for key in keys)
            entry = keys, hists, hists[1:]
            self._histogram_sets[(check, country, phases)] = entry
        return entry

    def restore(
        self, counters: dict[CounterKey, int], histograms: dict[CounterKey, list[float]]
    ) -> None:
        """Load persisted counters and histograms at start-up."""
        for key, state in histograms.items():  # in place: tallies share these objects
            loaded, hist = Histogram(state), self.histogram(key)
            hist.counts, hist.total, hist.saved = loaded.counts, loaded.total, loaded.saved
        for key, value in counters.items():
            kind, check, agent, country, label = key
            tally = self.tally(check, agent, country)
            if kind == "failures":
                tally.own_reasons()[label] = value
            elif kind == "refused":
                tally.refused = value
            elif label == "success":
                tally.success = value
            else:
                tally.failure = value

    def adopt_counters(self, agent_id: str, counters: Mapping[CounterKey, int]) -> None:
        """Make the agent's counters what the database says (a lease just taken).

        The database is the truth: what memory holds beyond it was applied here
        but never committed, and is applied again when the agent resends it.
        """
        tallies = self.agent_tallies.get(agent_id, {})
        for tally in tallies.values():
            tally.success = tally.failure = tally.refused = 0
            tally.reasons = NO_REASONS
            self.dirty.discard(tally)
            for feed in self.feeds:
                feed.tallies.add(tally)
        self.restore(dict(counters), {})

    def drop_dirty(self, agent_id: str) -> None:
        """Forget the agent's unsaved changes: another collector holds it now."""
        for tally in self.agent_tallies.get(agent_id, {}).values():
            self.dirty.discard(tally)

    def dirty_agents(self) -> set[str]:
        """Agents with counters changed since the last commit."""
        return {tally.agent for tally in self.dirty}

    def tally(self, check: str, agent: str, country: str) -> Tally:
        """The tally of check x agent, created on first use."""
        tally = self.tallies.get((check, agent))
        if tally is None:
            pair = (sys.intern(check), agent)  # one copy of the name, not one per agent
            tally = self.tallies[pair] = Tally(pair, country, self)
            self.agent_tallies.setdefault(agent, {})[pair[0]] = tally
            for feed in self.feeds:
                feed.tallies.add(tally)
        return tally

    def apply(
        self,
        agent: AgentInfo,
        result: pb.Result,
        samples: KeptSamples | None = None,
        current: bool = True,
    ) -> None:
        """Count one validated, not-yet-applied result and maybe make it the latest.

        samples are the result's samples that SampleFilter kept (filtered here
        with the default limits if omitted);
        current: the result belongs to the agent's current assignment.
        """
        success = result.success
        self.record(
            agent,
            self.tally(result.check, agent.agent_id, agent.country),
            result,
            success,
            result.duration_seconds,
            result.timestamp,
            "" if success else REASON_NAMES[result.reason],
            _FILTER.keep(result.samples) if samples is None else samples,
            agent.assigned.get(result.check, result.target) if current else None,
        )
        if result.timestamp > agent.last_seen:
            agent.last_seen = min(result.timestamp, time.time())

    def record(
        self,
        agent: AgentInfo,
        tally: Tally,
        result: pb.Result,
        success: bool,
        duration: float,
        timestamp: float,
        reason: str,
        samples: KeptSamples,
        current_target: str | None,
    ) -> None:
        """apply() for a caller that has already read the result's fields (ingest).

        current_target is the target when the result belongs to the agent's
        current assignment, None for a result of an assignment since changed
        (narrowed, re-targeted or removed): that one is counted but never
        becomes the latest, whose gauges carry the current target.

        The hot path of ingest: histogram observation is inlined, and fields
        are passed in because every protobuf attribute read costs.
        """
        if reason == POLICY_REASON:
            self._refused(agent, tally, result, duration, timestamp, samples, current_target)
            return
        if success:
            tally.success += 1
            phase_hists = tally.phase_hists
            phases = result.http_phase_seconds
            if phases:
                if not phase_hists:
                    tally.add_phases(self)
                    phase_hists = tally.phase_hists
                for i in range(min(len(phases), len(phase_hists))):
                    seconds = phases[i]
                    if seconds >= 0:  # NaN and negatives compare False: never histogrammed
                        hist = phase_hists[i]
                        hist.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
                        hist.total += seconds
        else:
            tally.failure += 1
            reasons = tally.own_reasons()
            reasons[reason] = reasons.get(reason, 0) + 1
        hist = tally.hists[0]
        hist.counts[bisect_left(DURATION_BUCKETS, duration)] += 1
        hist.total += duration
        self.dirty.add(tally)
        self._set_latest(
            agent, tally, success, reason, "", duration, timestamp, samples, current_target
        )

    def _refused(
        self,
        agent: AgentInfo,
        tally: Tally,
        result: pb.Result,
        duration: float,
        timestamp: float,
        samples: KeptSamples,
        current_target: str | None,
    ) -> None:
        """A check the agent refused by policy: no probe ran, so only the refused
        counter moves (every result the agent produced stays accounted for); the
        latest result says "not runnable" instead of success or failure."""
        tally.refused += 1
        self.dirty.add(tally)
        message = result.message
        previous = agent.refusals.get(tally.check)
        agent.refusals[tally.check] = message
        if previous is None or policy_rule(previous) != policy_rule(message):  # once per rule
            log.warning(
                "check %s cannot run on agent %s (%s): %s",
                tally.check, agent.agent_id, agent.country, message,
            )  # fmt: skip
        self._set_latest(
            agent,
            tally,
            False,
            POLICY_REASON,
            message,
            duration,
            timestamp,
            samples,
            current_target,
        )

    def _set_latest(
        self,
        agent: AgentInfo,
        tally: Tally,
        success: bool,
        reason: str,
        message: str,
        duration: float,
        timestamp: float,
        samples: KeptSamples,
        current_target: str | None,
    ) -> None:
        for feed in self.feeds:
            feed.tallies.add(tally)
        if current_target is None:
            return
        current = tally.latest
        if current is None or timestamp >= current.timestamp:  # only forward in time
            tally.latest = self.latest[tally.pair] = Latest(
                success,
                reason,
                message,
                duration,
                timestamp,
                agent.country if current is None else current.country,
                agent.region,
                samples[0],
                samples[1],
                current_target,
            )

    def linger(self, check: str, now: float) -> None:
        """Keep a check that left the file exported: a result for it just arrived."""
        if check in self.configured:
            return
        if check not in self.lingering:
            self.lingering_version += 1
        self.lingering[check] = now

    def expire_lingering(self, horizon: float) -> None:
        """Stop exporting checks that left the file and got no result since horizon."""
        configured = self.configured
        for check in [c for c, t in self.lingering.items() if t < horizon or c in configured]:
            del self.lingering[check]
            self.lingering_version += 1

    def counters(self) -> Iterator[tuple[CounterKey, int]]:
        """Every counter as (("results"|"failures", check, agent, country, label), value)."""
        for tally in self.tallies.values():
            yield from tally.counters()

    def take_dirty(self) -> DirtySnapshot:
        """Counters and histogram deltas changed since the last call, for persisting."""
        tallies, self.dirty = self.dirty, set()
        counters = [item for tally in tallies for item in tally.counters()]
        keys = {
            key: hist
            for tally in tallies
            for key, hist in zip(tally.hist_keys, tally.hists, strict=True)
        }
        deltas = [(key, delta) for key, hist in keys.items() if (delta := hist.delta()) is not None]
        return DirtySnapshot(tallies, counters, deltas)

    def merge_histograms(
        self, snapshot: DirtySnapshot, stored: Mapping[CounterKey, list[float]]
    ) -> None:
        """A commit of snapshot succeeded: histograms become the database's sums."""
        for key, state in stored.items():
            self.histograms[key].merge(state)
        for feed in self.feeds:
            feed.tallies.update(snapshot.tallies)

    def requeue(self, snapshot: DirtySnapshot) -> None:
        """A commit failed: write these again with the next one."""
        self.dirty |= snapshot.tallies

    def forget_checks(self, targets: Mapping[str, str], removed: set[str], now: float) -> None:
        """A reload: drop the latest results of removed and re-targeted checks.

        The counters of removed checks stay exported for a while (see linger):
        results the agents buffered before the edit still count when they arrive.
        """
        self._forget(
            [pair for pair, latest in self.latest.items() if targets.get(pair[0]) != latest.target]
        )
        for check in removed:
            self.linger(check, now)
        self.evidence.forget_checks(set(targets))

    def assign(self, agent: AgentInfo, assigned: dict[str, str], revision: int) -> None:
        """The agent is being sent these checks (name -> target) at revision.

        Agents sent the same checks share one dict (readers never change it, and
        a new assignment replaces it): one per agent cost about 25 bytes a check
        x agent. Only the current revision's dicts are looked up, kept by their
        hash, so an agent whose checks are its own costs no more than before;
        the lookup is rebuilt from the agents' own dicts when it holds more than
        twice as many as there are agents (agents that come and go).
        """
        for check in agent.assigned.keys() - assigned.keys():
            self.unassigned.add((check, agent.agent_id))
        if revision != self._assignments_revision:
            self._assignments, self._assignments_revision = {}, revision
            self._assignments_kept = 0
        elif self._assignments_kept > 2 * len(self.agents) + 16:
            held = [a.assigned for a in self.agents.values() if a.revision == revision]
            self._assignments, self._assignments_kept = {}, 0
            for known in {id(known): known for known in held}.values():
                self._share_assignment(known)
        agent.assigned, agent.revision = self._share_assignment(assigned), revision

    def _share_assignment(self, assigned: dict[str, str]) -> dict[str, str]:
        """The dict equal to assigned that agents of this revision already hold, or assigned."""
        same = self._assignments.setdefault(hash(frozenset(assigned.items())), [])
        for known in same:
            if known == assigned:
                return known
        same.append(assigned)
        self._assignments_kept += 1
        return assigned

    def forget_unassigned(self, horizon: float) -> None:
        """Drop latest results of checks no longer assigned to their agent, once
        older than horizon: the gauges of a narrowed check end as a gone agent's do."""
        expired = []
        for pair in list(self.unassigned):
            latest = self.latest.get(pair)
            agent = self.agents.get(pair[1])
            if latest is None or agent is None or pair[0] in agent.assigned:
                self.unassigned.discard(pair)
            elif latest.timestamp < horizon:
                expired.append(pair)
                self.unassigned.discard(pair)
        self._forget(expired)

    def forget_agent(self, agent_id: str) -> None:
        """Drop the gauges of an agent gone longer than the TTL.

        Its counters stay: they are persisted, and dropping them from memory
        would make a returning agent's counters restart below the stored value.
        """
        self.agents.pop(agent_id, None)
        self.evidence.forget_agent(agent_id)
        self._forget([k for k in self.latest if k[1] == agent_id])

    def _forget(self, pairs: list[tuple[str, str]]) -> None:
        for pair in pairs:
            del self.latest[pair]
            self.tallies[pair].latest = None
        for feed in self.feeds:
            feed.removed.update(pairs)
