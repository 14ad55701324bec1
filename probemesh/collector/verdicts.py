"""Publication of the classifier's inputs: what a serving collector knows of its agents.

The outage classifier needs, for every check x agent of the mesh, a handful of
facts that only the collector serving that agent can tell, because only it
sees the agent's results: the newest raw result (success, failure reason),
the damped *confirmed* verdict (a streak of ``confirm_rounds`` equal rounds),
whether the result is still fresh, and whether the agent is *settled* (every
check of it has reported since its latest change). Everything else (lonely
failures, local problems, country and check states, incidents) needs all
agents at once and is the evaluator's (reachability.Classifier).

:class:`Publisher` runs on every collector over its own MeshState.latest and
returns only what changed since its previous round (flips): a pair's input
changes when its raw success, failure detail, confirmed verdict, freshness,
settled flag or streak (counted up to ``confirm_rounds`` only) changes, so a
steady mesh publishes nothing. :class:`InputBook` is the evaluator's copy of
every published input, wherever the agent is connected.

A single collector hands its publication to its own InputBook in process; a
mesh sharing PostgreSQL carries it through the database (shared.py), with
what each collector knows of its agents (``agent_doc``, published by
:class:`FleetPublisher`) so that every collector lists every agent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from probemesh.checks import ChecksFile, OutageSettings
from probemesh.collector.deadlines import DeadlineWheel
from probemesh.collector.evidence import Outbox
from probemesh.collector.runnable import not_runnable
from probemesh.collector.samples import sample_items
from probemesh.collector.state import AgentInfo, ChangeFeed, Latest
from probemesh.collector.work_lane import Steps, run_steps
from probemesh.timefmt import rfc3339

Pair = tuple[str, str]  # (check, agent)
STEP_SECONDS = 0.001  # agents published in one step of a round, about this long
# A round visits a pair due to go stale this much before its deadline: the visit
# decides with the same test as a whole pass, whatever the rounding of the deadline.
_EARLY = 0.001
_STATUS_SAMPLE = "probe_http_status_code"


def failure_detail(latest: Latest) -> tuple[str, str]:
    """(reason name, human detail): ("http_status", "HTTP 500") or ("timeout", "timeout")."""
    reason = latest.reason
    if reason in ("", "unspecified"):
        reason = "other"
    if reason == "http_status":
        for name, _, value in sample_items(latest.samples):
            if name == _STATUS_SAMPLE and value > 0:
                return reason, f"HTTP {int(value)}"
    return reason, reason


@dataclass(slots=True)
class AgentVerdict:
    """Damped view of one check on one agent: streaks of equal rounds and the confirmed verdict."""

    last_ts: float = 0.0  # probe time of the newest result observed
    since: float = 0.0  # probe time of the first result of the current raw streak
    ok_streak: int = 0
    fail_streak: int = 0
    confirmed: bool | None = None  # True up, False failing, None not yet known

    def observe(self, success: bool, timestamp: float, confirm_rounds: int) -> None:
        streak = self.ok_streak if success else self.fail_streak
        if streak == 0:
            self.since = timestamp
        self.last_ts = timestamp
        if success:
            self.ok_streak, self.fail_streak = self.ok_streak + 1, 0
            if self.ok_streak >= confirm_rounds:
                self.confirmed = True
        else:
            self.ok_streak, self.fail_streak = 0, self.fail_streak + 1
            if self.fail_streak >= confirm_rounds:
                self.confirmed = False

    @classmethod
    def resumed(cls, published: PairInput) -> AgentVerdict:
        """The verdict another collector published for a pair this one now serves."""
        streak = published.streak
        ok = published.success is True
        return cls(
            last_ts=published.last_ts,
            since=published.last_ts,
            ok_streak=streak if ok else 0,
            fail_streak=0 if ok else streak,
            confirmed=published.confirmed,
        )


@dataclass(frozen=True, slots=True)
class PairInput:
    """What the evaluator needs of one check on one agent, as its serving collector sees it."""

    check: str
    agent: str
    country: str
    success: bool | None  # the latest raw result; None: assigned, nothing to count yet
    confirmed: bool | None = None  # the damped verdict (AgentVerdict.confirmed)
    fresh: bool = False  # the latest result is younger than stale_after_intervals
    settled: bool = True  # every check of the agent reported since its latest raw change
    reason: str = ""  # failure reason name while the latest result fails
    detail: str = ""  # e.g. "HTTP 500"
    streak: int = 0  # rounds in the current raw streak, counted up to confirm_rounds
    refused: bool = False  # the agent refuses the check by policy (reason: rule, detail: why)
    # Probe time of the newest result when this input was published; not part of
    # the comparison, so a steady pair is not published again for every result.
    last_ts: float = field(default=0.0, compare=False)


@dataclass
class Publication:
    """One round's changes: inputs that are new or differ, and pairs that are gone; in a
    mesh also the agents whose description changed (agent, connected, last_seen, doc),
    the agents gone from this collector, and the evidence its agents reported."""

    changed: list[PairInput] = field(default_factory=list)
    removed: list[Pair] = field(default_factory=list)
    # The key of each changed input, as a tuple the publisher's or reader's own
    # dicts share (one tuple a pair, not one per dict); empty: built from the inputs.
    keys: list[Pair] = field(default_factory=list)
    agents: list[tuple[str, bool, float, dict[str, Any]]] = field(default_factory=list)
    agents_removed: list[str] = field(default_factory=list)
    evidence: Outbox = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.changed or self.removed or self.agents or self.agents_removed or self.evidence
        )


class _Track(AgentVerdict):
    """One heard check x agent of this collector, kept between rounds: its streaks
    (the track is the pair's verdict) and what the rounds took of it.

    A collector holds one per pair it serves, so it is one object that shares
    what it can: MeshState's key tuple and one stale_after float per check.
    """

    __slots__ = ("changed", "due", "entry", "fresh", "input", "pair", "stale_after")

    def __init__(self, pair: Pair, stale_after: float, verdict: AgentVerdict | None) -> None:
        if verdict is None:
            AgentVerdict.__init__(self)
        else:  # resumed, or kept over a reload
            AgentVerdict.__init__(
                self, verdict.last_ts, verdict.since, verdict.ok_streak, verdict.fail_streak,
                verdict.confirmed,
            )  # fmt: skip
        self.pair = pair  # MeshState's (check, agent) tuple: also the key in published
        self.stale_after = stale_after  # seconds after which its result is stale
        self.entry: Latest | None = None  # the latest result as last taken
        self.fresh = False
        self.changed = True  # its input must be built again
        self.input: PairInput | None = None
        self.due = False  # it is filed in the publisher's deadline wheel


class Publisher:
    """Keeps the streaks of the pairs this collector serves and publishes their changes.

    A round only redoes the work its changes call for: pairs whose latest
    result changed (MeshState replaces it, so identity tells) or went stale,
    and the agents they belong to. Without a change feed a round finds them
    with one pass over MeshState.latest. With one (the feed of the MeshState
    whose latest it is given), a round visits only the pairs the feed names,
    those whose tracks were forgotten and those due to go stale, filed by the
    second their result stops being fresh: at 20,000 pairs the pass
    was most of a steady round. A round after a reload, or with a clock that
    went back, still makes the whole pass.
    """

    def __init__(self, feed: ChangeFeed | None = None) -> None:
        self._feed = feed
        self._scan = True  # the next round makes the whole pass (no feed: every round)
        self._now = float("-inf")  # the previous round's time
        self._due: DeadlineWheel[Pair] = DeadlineWheel()  # fresh tracks, by when they go stale
        self._revisit: set[Pair] = set()  # pairs whose tracks were forgotten
        self.published: dict[Pair, PairInput] = {}
        self._rekeys = Rekeys()  # of published
        self._checks: ChecksFile | None = None
        self._track_count = 0  # the tracks _by_agent holds
        # Streaks waiting for their pair's track (the next round takes them): resumed
        # from another collector's publication, or kept over a reload.
        self._pending: dict[Pair, AgentVerdict] = {}
        self._stale_after: dict[str, float] = {}  # check -> its tracks' shared stale_after
        # agent -> check -> its track: each pair's streaks (its verdict) and state,
        # kept by agent only (a second index by pair cost about 30 bytes a pair)
        self._by_agent: dict[str, dict[str, _Track]] = {}
        self._settled: dict[str, bool] = {}
        self._keys: dict[str, list[Pair]] = {}  # agent -> its keys in published, in order
        # agent -> (its assigned dict, country) as last seen; MeshState.assign
        # replaces the dict, so identity tells a change
        self._assigned: dict[str, tuple[Mapping[str, str], str]] = {}
        self._refusals: dict[Pair, PairInput] = {}
        self._refused_by_agent: dict[str, dict[Pair, PairInput]] = {}
        self._again: set[str] = set()  # agents whose publication failed (retry)
        # Agents whose set of tracks changed this round: published whole (see observe_steps)
        self._regrouped: set[str] = set()

    def new_pairs(self, latest: Mapping[Pair, Latest], checks: ChecksFile) -> list[Pair]:
        """Pairs with a result but no streak here yet (resume them with ``resume``)."""
        track, pending, configured = self._track, self._pending, checks.checks
        if self._feed is None or self._scan or checks is not self._checks:
            candidates = list(latest)
        else:  # a pair without a track got a result since the last round, or was forgotten
            candidates = [tally.pair for tally in self._feed.tallies]
            candidates += self._revisit
        return [
            key
            for key in candidates
            if track(key) is None and key not in pending and key[0] in configured
            and (entry := latest.get(key)) is not None and not entry.refused
        ]  # fmt: skip

    def forget_agents(self, agents: set[str]) -> None:
        """Drop the streaks of agents that (re)connected: another collector may have served
        them meanwhile, so they resume from what was published last (``resume``)."""
        for agent in agents & self._by_agent.keys():
            for check in self._by_agent.pop(agent):
                self._track_count -= 1
                self._revisit.add((check, agent))
            self._again.add(agent)
        for key in [k for k in self._pending if k[1] in agents]:
            del self._pending[key]

    def resume(self, inputs: Iterable[PairInput]) -> None:
        """Continue the streaks another collector published (the agent moved here)."""
        for item in inputs:
            key = (item.check, item.agent)
            if (
                self._track(key) is None
                and key not in self._pending
                and item.fresh
                and item.success is not None
            ):
                self._pending[key] = AgentVerdict.resumed(item)

    def observe(
        self,
        latest: Mapping[Pair, Latest],
        checks: ChecksFile,
        agents: Mapping[str, AgentInfo],
        now: float,
    ) -> Publication:
        """Feed each pair's newest result into its streak; return what changed."""
        return run_steps(self.observe_steps(latest, checks, agents, now))

    def observe_steps(
        self,
        latest: Mapping[Pair, Latest],
        checks: ChecksFile,
        agents: Mapping[str, AgentInfo],
        now: float,
    ) -> Steps[Publication]:
        """observe() in steps, for the work lane: after the streaks are fed (one
        step), the touched agents' inputs are built about STEP_SECONDS at a time.

        A storm of reconnecting agents touches every pair of theirs: built at
        once, their inputs held the event loop for tens of milliseconds. Each
        agent is published whole from its own tracks (the settled rule needs
        all of an agent's checks at once); between two steps ingest may move
        an agent's assignment or country, which the next round's
        ``_assignments`` sees and publishes again. The publication is handed
        on only once every step ran."""
        whole = self._again  # agents published whole; the others only their changed tracks
        self._again = set()
        if checks is not self._checks:  # a reload: intervals may differ, start the tracks over
            self._checks = checks
            tracks = {track.pair: track for track in self._all_tracks()}
            self._pending = {**tracks, **self._pending}  # the streaks go on
            self._by_agent, self._settled, self._assigned = {}, {}, {}
            self._track_count = 0
            self._stale_after = {}
            self._scan = True
            whole.update(agent for _, agent in self.published)
            whole.update(agents)
        touched = self._take(latest, checks, now)
        whole |= self._regrouped
        self._regrouped = set()
        whole |= self._assignments(agents)
        refusals = {
            (check, r.agent): PairInput(
                check, r.agent, r.country, None, reason=r.rule, detail=r.detail, refused=True
            )
            for check, found in not_runnable(latest, agents, checks).items()
            for r in found
        }
        if refusals != self._refusals:
            whole.update(key[1] for key in refusals.keys() ^ self._refusals.keys())
            whole.update(
                key[1] for key, item in refusals.items() if self._refusals.get(key, item) != item
            )
            self._refusals = refusals
            self._refused_by_agent = {}
            for key, item in refusals.items():
                self._refused_by_agent.setdefault(key[1], {})[key] = item
        publication = Publication()
        started = time.perf_counter()
        for agent in touched | whole:
            if agent in whole or not self._publish_tracks(agent, checks, publication):
                self._publish_agent(agent, agents.get(agent), checks, publication)
            if time.perf_counter() - started >= STEP_SECONDS:
                yield
                started = time.perf_counter()
        if self._rekeys.due(len(self.published)):
            self.published = dict(self.published)  # sized for its entries (Rekeys)
        return publication

    def _take(self, latest: Mapping[Pair, Latest], checks: ChecksFile, now: float) -> set[str]:
        """Feed new results into their streaks and refresh freshness; return the agents
        whose pairs changed."""
        feed = self._feed
        scan = feed is None or self._scan or now < self._now
        self._now = now
        if feed is not None:
            changed, feed.tallies = feed.tallies, set()
            removed, feed.removed = feed.removed, set()
        if scan:
            self._scan = False
            self._revisit = set()
            touched = self._take_all(latest, checks, now)
            if feed is not None:
                self._due = DeadlineWheel()
                for track in self._all_tracks():
                    track.due = False
                    self._schedule(track)
        else:
            keys = {tally.pair for tally in changed}
            keys |= removed
            keys |= self._revisit  # resumed streaks are of these pairs (new_pairs)
            self._revisit = set()
            for key in self._due.take(now + _EARLY):
                popped = self._track(key)
                if popped is not None:
                    popped.due = False
                    keys.add(key)
            touched = self._take_some(keys, latest, checks, now)
        if self._pending:  # streaks of pairs no longer heard here
            self._pending = {}
        return touched

    def _take_all(self, latest: Mapping[Pair, Latest], checks: ChecksFile, now: float) -> set[str]:
        """_take over every pair of latest."""
        get = self._track
        touched: set[str] = set()
        count = 0
        for key, entry in latest.items():
            track = get(key)
            if track is not None and track.entry is entry:  # the common case: only time passed
                fresh = now - entry.timestamp <= track.stale_after
                if fresh is not track.fresh:
                    track.fresh, track.changed = fresh, True
                    touched.add(key[1])
                count += 1
                continue
            if self._take_new(key, entry, track, checks, now) is not None:
                touched.add(key[1])
                count += 1
        if count != self._track_count:
            for key in [
                t.pair for t in self._all_tracks() if (e := latest.get(t.pair)) is None or e.refused
            ]:
                self._drop(key)
                touched.add(key[1])
        return touched

    def _take_some(
        self, keys: set[Pair], latest: Mapping[Pair, Latest], checks: ChecksFile, now: float
    ) -> set[str]:
        """_take over the pairs keys name, the same way as _take_all."""
        touched: set[str] = set()
        for key in keys:
            entry = latest.get(key)
            track = self._track(key)
            if entry is None or entry.refused:
                if track is not None:
                    self._drop(key)
                    touched.add(key[1])
                continue
            if track is not None and track.entry is entry:
                fresh = now - entry.timestamp <= track.stale_after
                if fresh is not track.fresh:
                    track.fresh, track.changed = fresh, True
                    touched.add(key[1])
                self._schedule(track)
                continue
            taken = self._take_new(key, entry, track, checks, now)
            if taken is not None:
                touched.add(key[1])
                self._schedule(taken)
        return touched

    def _take_new(
        self, key: Pair, entry: Latest, track: _Track | None, checks: ChecksFile, now: float
    ) -> _Track | None:
        """A pair's new latest result (or its first): its track, None if it has none
        (a check not configured, or refused by the agent's policy: no report at all)."""
        spec = checks.checks.get(key[0])
        if spec is None or entry.refused:
            return None
        cfg = checks.outage
        if track is None:
            stale_after = self._stale_after.get(key[0])
            if stale_after is None:
                stale_after = self._stale_after[key[0]] = cfg.stale_after_intervals * spec.interval
            track = _Track(key, stale_after, self._pending.pop(key, None))
            self._by_agent.setdefault(key[1], {})[key[0]] = track
            self._track_count += 1
            self._regrouped.add(key[1])
        if entry.timestamp > track.last_ts:
            track.observe(entry.success, entry.timestamp, cfg.confirm_rounds)
        track.entry = entry
        track.fresh = now - entry.timestamp <= track.stale_after
        track.changed = True
        return track

    def _schedule(self, track: _Track) -> None:
        """File a fresh track under its deadline, once: a round takes it when its
        result may have gone stale and visits it (a later result moves the deadline;
        the visit then files it again)."""
        if track.fresh and not track.due and track.entry is not None:
            track.due = True
            self._due.add(track.pair, track.entry.timestamp + track.stale_after)

    def _track(self, key: Pair) -> _Track | None:
        tracks = self._by_agent.get(key[1])
        return None if tracks is None else tracks.get(key[0])

    def _all_tracks(self) -> Iterator[_Track]:
        for tracks in self._by_agent.values():
            yield from tracks.values()

    def _drop(self, key: Pair) -> None:
        """Forget the track of a pair no longer heard (result gone or refused)."""
        self._track_count -= 1
        self._regrouped.add(key[1])
        agent_tracks = self._by_agent[key[1]]
        del agent_tracks[key[0]]
        if not agent_tracks:
            del self._by_agent[key[1]]

    def _assignments(self, agents: Mapping[str, AgentInfo]) -> set[str]:
        """Agents whose assigned checks or country changed, or that are gone."""
        known = self._assigned
        touched = set()
        for agent_id, info in agents.items():
            had = known.get(agent_id)
            if had is None or had[0] is not info.assigned or had[1] != info.country:
                known[agent_id] = (info.assigned, info.country)
                touched.add(agent_id)
        if len(known) != len(agents):
            for agent_id in [a for a in known if a not in agents]:
                del known[agent_id]
                touched.add(agent_id)
        return touched

    def _publish_agent(
        self,
        agent: str,
        info: AgentInfo | None,
        checks: ChecksFile,
        publication: Publication,
    ) -> None:
        """Build the agent's inputs anew where needed and publish those that differ."""
        cfg = checks.outage
        tracks = self._by_agent.get(agent, {})
        settled = _settled(tracks.values())
        if settled != self._settled.get(agent, True):
            for track in tracks.values():
                track.changed = True
        if tracks:
            self._settled[agent] = settled
        else:
            self._settled.pop(agent, None)
        inputs: dict[Pair, PairInput] = {}
        for track in tracks.values():
            if track.changed or track.input is None:
                self._build_input(track, settled, cfg, self.published.get(track.pair))
            assert track.input is not None
            inputs[track.pair] = track.input
        if info is not None:  # an assigned check's country is listed even unheard
            for check in info.assigned:
                key = (check, agent)
                if key not in inputs and check in checks.checks:
                    old = self.published.get(key)
                    unheard = PairInput(check, agent, info.country, None)
                    inputs[key] = old if old == unheard else unheard
        inputs.update(self._refused_by_agent.get(agent, {}))
        published = self.published
        for key, item in inputs.items():
            old = published.get(key)
            if old is not item:
                if old is not None and old.success is None and item.success is not None:
                    del published[key]  # heard at last: key it by MeshState's tuple (track.pair)
                    self._rekeys.now += 1
                published[key] = item
                if old != item:
                    publication.changed.append(item)
                    publication.keys.append(key)
        for key in self._keys.get(agent, ()):
            if key not in inputs:
                published.pop(key, None)
                publication.removed.append(key)
        if inputs:
            self._keys[agent] = list(inputs)
        else:
            self._keys.pop(agent, None)

    def _publish_tracks(self, agent: str, checks: ChecksFile, publication: Publication) -> bool:
        """Publish the changed tracks of an agent whose tracks, assignment and
        refusals are those it was last published with; False (nothing done)
        when its settled flag moved, which changes every input of the agent.

        Most rounds' agents are here for one new result: building all their
        inputs anew, as ``_publish_agent`` does, was most of a steady round."""
        tracks = self._by_agent.get(agent)
        if not tracks:
            return False
        settled = _settled(tracks.values())
        if settled != self._settled.get(agent, True):
            return False
        cfg = checks.outage
        published = self.published
        for track in tracks.values():
            if track.changed:
                old = published.get(track.pair)
                item = self._build_input(track, settled, cfg, old)
                if item is not old:
                    published[track.pair] = item
                    publication.changed.append(item)
                    publication.keys.append(track.pair)
        return True

    def _build_input(
        self, track: _Track, settled: bool, cfg: OutageSettings, old: PairInput | None
    ) -> PairInput:
        """The track's input, built anew; an input equal to old (the one published)
        stays old: the classifier, which judges these same objects when the
        collector is alone, tells changes by identity."""
        entry = track.entry
        assert entry is not None
        check, agent = track.pair
        reason, detail = ("", "") if entry.success else failure_detail(entry)
        streak = min(max(track.ok_streak, track.fail_streak), cfg.confirm_rounds)
        item = PairInput(
            check, agent, entry.country, entry.success, track.confirmed,
            track.fresh, settled, reason, detail, streak, last_ts=entry.timestamp,
        )  # fmt: skip
        track.input = old if old == item else item
        track.changed = False
        return track.input

    def retry(self, publication: Publication) -> None:
        """The publication was not stored: publish its changes again next round."""
        for item in publication.changed:
            self.published.pop((item.check, item.agent), None)
            self._again.add(item.agent)
        for key in publication.removed:
            keys = self._keys.setdefault(key[1], [])
            if key not in keys:
                keys.append(key)
            self._again.add(key[1])


class Rekeys:
    """Counts the entries of a dict keyed anew, and says when to rebuild the dict.

    A dict never shrinks, and an entry keyed anew (deleted, then set with
    MeshState's tuple) takes a new slot: agents that connect together have
    every pair keyed anew once, which doubles the table, about 37 bytes a pair
    more. A copy of a table that sparse is built to the size its entries need;
    copied in the middle of such a storm, it would double again, so the copy
    waits for a round that keys nothing anew.
    """

    __slots__ = ("now", "since")

    def __init__(self) -> None:
        self.now = 0  # keyed anew in the current round
        self.since = 0  # keyed anew since the last copy

    def due(self, size: int) -> bool:
        """At the end of a round: copy the dict now (size: its entries)?"""
        quiet, self.since, self.now = self.now == 0, self.since + self.now, 0
        if quiet and self.since > size // 8:
            self.since = 0
            return True
        return False


def _settled(tracks: Iterable[_Track]) -> bool:
    """Has every check of the agent reported since its latest raw change (any check's)?"""
    edge, oldest = (
        -math.inf,
        math.inf,
    )  # over the probed tracks: the latest change, the oldest report
    for t in tracks:
        if t.fresh and t.confirmed is not None:
            if t.since > edge:
                edge = t.since
            if t.last_ts < oldest:
                oldest = t.last_ts
    return oldest >= edge


AGENT_STAMP_EVERY = 10.0  # seconds between two publications of an agent whose times alone moved


def agent_doc(agent: AgentInfo) -> dict[str, Any]:
    """What the serving collector knows of one agent (without the classifier's verdicts)."""
    return {
        "agent": agent.agent_id,
        "country": agent.country,
        "region": agent.region,
        "connected": agent.connected,
        "last_seen": rfc3339(agent.last_seen),
        "version": agent.version,
        "features": list(agent.features),
        "clock_offset_seconds": _rounded(agent.clock.offset),
        "clock_rtt_seconds": _rounded(agent.clock.rtt),
        "clock_skewed": agent.clock.skewed,
        "last_result": rfc3339(agent.last_result) if agent.last_result else None,
        # What the agent refuses, as announced in its Hello (null: not said).
        "policy": {
            "min_interval_seconds": agent.min_interval or None,
            "allow_private_targets": agent.allow_private_targets,
            "secrets_dir": agent.secrets_dir,
        },
    }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


class FleetPublisher:
    """Publishes what this collector knows of its agents (``agent_doc``) for every collector
    to list: on any change, and every AGENT_STAMP_EVERY seconds when only its times moved."""

    def __init__(self) -> None:
        self.published: dict[str, tuple[tuple[Any, ...], float]] = {}  # agent -> (stable, when)

    def observe(self, agents: Mapping[str, AgentInfo], now: float) -> Publication:
        publication = Publication()
        current: dict[str, tuple[tuple[Any, ...], float]] = {}
        for agent in list(agents.values()):
            stable = _stable(agent)
            previous = self.published.get(agent.agent_id)
            if previous is None or previous[0] != stable or now - previous[1] >= AGENT_STAMP_EVERY:
                doc = agent_doc(agent)
                publication.agents.append((agent.agent_id, agent.connected, agent.last_seen, doc))
                current[agent.agent_id] = (stable, now)
            else:
                current[agent.agent_id] = previous
        publication.agents_removed = [a for a in self.published if a not in current]
        self.published = current
        return publication

    def retry(self, publication: Publication) -> None:
        """The publication was not stored: publish these agents again next round."""
        for agent_id, *_ in publication.agents:
            self.published.pop(agent_id, None)
        for agent_id in publication.agents_removed:
            self.published.setdefault(agent_id, ((), 0.0))


def _stable(agent: AgentInfo) -> tuple[Any, ...]:
    """What agent_doc shows of the agent, but its times (last seen, last result, clock)."""
    return (
        agent.connected, agent.country, agent.region, agent.version, agent.features,
        agent.clock.skewed, agent.min_interval, agent.allow_private_targets, agent.secrets_dir,
    )  # fmt: skip


class InputBook:
    """The evaluator's copy of every published input, by check x agent (in a mesh:
    a collector alone judges its publisher's own)."""

    def __init__(self) -> None:
        self.inputs: dict[Pair, PairInput] = {}
        self.changed: list[Pair] = []  # pairs applied since the last take_changed

    def apply(self, publication: Publication) -> None:
        """Take a publication."""
        inputs = self.inputs
        for key in publication.removed:
            inputs.pop(key, None)
        keys = publication.keys or [(item.check, item.agent) for item in publication.changed]
        for key, item in zip(keys, publication.changed, strict=True):
            inputs[key] = item
        self.changed += publication.removed
        self.changed += keys

    def take_changed(self) -> list[Pair]:
        """The pairs whose input may have changed since the last call (for Classifier.evaluate)."""
        changed, self.changed = self.changed, []
        return changed
