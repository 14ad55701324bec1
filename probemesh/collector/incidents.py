"""Incidents: open, track and close outages of a check, persisted in the collector database.

An incident opens when a check leaves ``ok`` (the classifier already damps
flapping) and closes once the check has been ``ok`` for ``close_after_rounds``
probe intervals. While open it records a timeline of country transitions, the
countries affected now and at any point (``peak_countries``), the dominant
failure reason per country and overall, each country's diagnosis (its
``kind``; a ``diagnosed`` timeline event when it changes), the incident's
``cause`` derived from the down countries' kinds, and a one-line summary.

Incidents live in their own table of the collector database (SQLite in
--data-dir, or PostgreSQL) and are written from a worker thread through their
own connection, so a restarted collector resumes the incidents that were open.

OutageMonitor ties it together. Every ``evaluate_every`` seconds it publishes
this collector's verdict inputs (verdicts.Publisher) and, on the evaluator,
runs the classifier over every input of the mesh, keeps the latest Snapshot
(the verdicts every reader takes, the agents' local-problem flags included),
diagnoses the failing countries, updates the incidents, hands the result to
the notifications (Alertmanager, webhooks) and exports ``probemesh_outage``,
``probemesh_country_reachability_ratio``, ``probemesh_country_diagnosis`` and
``probemesh_agent_local_problem``. A collector alone is always the evaluator
and publishes to itself in process; collectors sharing PostgreSQL publish
through it, elect one evaluator, and the others serve the evaluation and
incidents it stores (shared.py). It only reads MeshState.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric

from probemesh.checks import ChecksFile
from probemesh.collector.database import Connection, Database, DatabaseError
from probemesh.collector.diagnosis import (
    AWAITING_CONTROL_PROBE,
    BLOCKING,
    EVIDENCE_FEATURE,
    KINDS,
    CountryInput,
    Diagnoser,
    Diagnosis,
    askable,
    cause_of,
)
from probemesh.collector.evaluation_doc import from_doc, to_doc
from probemesh.collector.reachability import (
    DEGRADED,
    DOWN,
    GLOBAL_OUTAGE,
    LOCAL_PROBLEM,
    REGIONAL_OUTAGE,
    UNKNOWN,
    CheckView,
    Classifier,
    Snapshot,
)
from probemesh.collector.runnable import Refusal
from probemesh.collector.state import Latest, MeshState
from probemesh.collector.verdicts import (
    FleetPublisher,
    InputBook,
    Pair,
    PairInput,
    Publication,
    Publisher,
)
from probemesh.collector.work_lane import Steps, WorkLane, run_steps
from probemesh.timefmt import rfc3339
from probemesh.v1 import mesh_pb2 as pb

if TYPE_CHECKING:
    from probemesh.collector.notify import Notifications
    from probemesh.collector.shared import Election, Relayed, RemoteChange, SharedVerdicts

_T = TypeVar("_T")

log = logging.getLogger(__name__)

KEEP_CLOSED = 500  # closed incidents kept in memory (all stay in the database)
DIAGNOSE_EVERY = 5.0  # seconds: a check's diagnosis with unchanged inputs is worked out again
SAVE_EVERY = 10.0  # seconds between saves of an open incident's reason counts


def hms(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


@dataclass
class Event:
    """One timeline entry: opened, down, recovered, global, regional, diagnosed or closed.

    ``diagnosed`` events carry the countries' new ``kind``.
    """

    at: float
    event: str
    countries: list[str]
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "at": rfc3339(self.at),
            "event": self.event,
            "countries": self.countries,
        }
        if self.kind:
            body["kind"] = self.kind
        return body

    def to_row(self) -> list[Any]:
        return [self.at, self.event, self.countries, *([self.kind] if self.kind else [])]


@dataclass
class Incident:
    """One outage of one check."""

    id: int
    check: str
    started_at: float
    scope: str  # current scope while open ("regional" | "global")
    peak_scope: str
    countries: list[str]  # affected now
    peak_countries: list[str]  # affected at any point of the incident
    ended_at: float | None = None
    timeline: list[Event] = field(default_factory=list)
    # country -> "reason\tdetail" -> evaluations the country was down for it
    reasons: dict[str, Counter[str]] = field(default_factory=dict)
    ok_since: float | None = None
    saved_at: float = 0.0
    # country -> its latest diagnosis {"kind", "detail", "hop", "asn"}, for
    # every country that was down and diagnosed during the incident
    diagnosis: dict[str, dict[str, Any]] = field(default_factory=dict)
    cause: str = "unknown"
    # countries whose recorded diagnosis is of an earlier down period of theirs
    # (they recovered since): a new diagnosis that waits does not keep it
    past_kinds: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def country_reasons(self) -> dict[str, tuple[str, str]]:
        """Dominant (reason, detail) of each country that has one."""
        out = {}
        for country, counts in self.reasons.items():
            if counts:
                key = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
                reason, _, detail = key.partition("\t")
                out[country] = (reason, detail or reason)
        return out

    def overall_reasons(self) -> list[tuple[tuple[str, str], list[str]]]:
        """[((reason, detail), countries)] by number of countries, most first."""
        groups: dict[tuple[str, str], list[str]] = {}
        for country, rd in sorted(self.country_reasons().items()):
            groups.setdefault(rd, []).append(country)
        return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))

    def diagnose(self, diagnoses: dict[str, Diagnosis], now: float) -> bool:
        """Record the down countries' diagnoses; a changed kind adds a ``diagnosed`` event."""
        changed: dict[str, list[str]] = {}
        for country in self.countries:
            d = diagnoses.get(country)
            if d is None:
                continue
            previous = self.diagnosis.get(country)
            if previous is None and d.kind == "unknown":
                continue  # still waiting for evidence: nothing to record yet
            if d.waiting and previous is not None and country not in self.past_kinds:
                continue  # the kind recorded in this down period stands until settled
            if previous is None or previous["kind"] != d.kind:
                changed.setdefault(d.kind, []).append(country)
            self.diagnosis[country] = d.to_json()
            if not d.waiting:
                self.past_kinds.discard(country)
        for kind in sorted(changed, key=KINDS.index):
            self.timeline.append(Event(now, "diagnosed", sorted(changed[kind]), kind))
        if self.countries:
            self.cause = cause_of(
                self.diagnosis[c]["kind"] if c in self.diagnosis else "unknown"
                for c in self.countries
            )
        return bool(changed)

    def _diagnosis_text(self, countries: list[str]) -> str:
        """'blocked in UG (dns); path lost after HOP (ASN) for NG, GH; origin failing: ...'."""
        reasons = self.country_reasons()
        blocked, origin, local, unknown = [], [], [], []
        paths: dict[str, list[str]] = {}
        for country in countries:
            d = self.diagnosis.get(country)
            kind = d["kind"] if d else "unknown"
            if kind in BLOCKING:
                blocked.append(f"{country} ({kind})")
            elif kind == "path" and d is not None:
                where = d["hop"] or "an unknown hop"
                if d["asn"]:
                    where += f" (AS{d['asn']})"
                paths.setdefault(where, []).append(country)
            elif kind == "origin":
                origin.append(country)
            elif kind == "local":
                local.append(country)
            else:
                unknown.append(country)
        parts = []
        if blocked:
            parts.append("blocked in " + ", ".join(blocked))
        for where, cs in paths.items():
            parts.append(f"path lost after {where} for {', '.join(cs)}")
        if origin:
            details = sorted({self.diagnosis[c]["detail"] for c in origin})
            what = f"{details[0]} " if len(details) == 1 else ""
            scope = (
                "every country" if len(origin) == len(self.peak_countries) else ", ".join(origin)
            )
            parts.append(f"origin failing: {what}from {scope}")
        if local:
            parts.append("local problems in " + ", ".join(local))
        if unknown:
            parts.append(
                "undiagnosed: "
                + ", ".join(f"{c} ({reasons[c][1]})" if c in reasons else c for c in unknown)
            )
        return "; ".join(parts)

    def summary(self) -> str:
        peak = self.peak_countries
        n = len(peak)
        noun = "country" if n == 1 else "countries"
        since = hms(self.started_at)
        text = f"{self.check} unreachable from {n} {noun} ({', '.join(peak)}) since {since} UTC"
        groups = self.overall_reasons()
        diagnosed = [c for c in peak if c in self.diagnosis]
        if diagnosed:
            text += " - " + self._diagnosis_text(self.countries or diagnosed)
        elif len(groups) == 1:
            text += f" - {groups[0][0][1]}"
        elif groups:
            text += " - " + ", ".join(f"{detail} ({', '.join(cs)})" for (_, detail), cs in groups)
        if self.peak_scope == "global":
            text += " (global)"
        recoveries = [e.at for e in self.timeline if e.event == "recovered"]
        if not self.countries and recoveries:
            text += f"; recovered {hms(recoveries[-1])}"
        elif recoveries and len(self.countries) < n:
            text += f"; partially recovered {hms(recoveries[-1])} ({n - len(self.countries)}/{n})"
        return text

    def to_json(self) -> dict[str, Any]:
        groups = self.overall_reasons()
        reason, detail = groups[0][0] if groups else ("", "")
        return {
            "id": self.id,
            "check": self.check,
            "scope": self.scope,
            "peak_scope": self.peak_scope,
            "countries": self.countries,
            "peak_countries": self.peak_countries,
            "started_at": rfc3339(self.started_at),
            "ended_at": rfc3339(self.ended_at),
            "reason": reason,
            "reason_detail": detail,
            "country_reasons": {
                c: {"reason": r, "detail": d}
                for c, (r, d) in sorted(self.country_reasons().items())
            },
            "cause": self.cause,
            "diagnosis": {c: dict(d) for c, d in sorted(self.diagnosis.items())},
            "summary": self.summary(),
            "timeline": [e.to_json() for e in self.timeline],
        }

    def to_row(self) -> tuple[int, str, float, float | None, str]:
        data = {
            "scope": self.scope,
            "peak_scope": self.peak_scope,
            "countries": self.countries,
            "peak_countries": self.peak_countries,
            "timeline": [e.to_row() for e in self.timeline],
            "reasons": {c: dict(v) for c, v in self.reasons.items()},
            "ok_since": self.ok_since,
            "diagnosis": self.diagnosis,
            "cause": self.cause,
            "past_kinds": sorted(self.past_kinds),
        }
        return (self.id, self.check, self.started_at, self.ended_at, json.dumps(data))

    @classmethod
    def from_row(cls, row: tuple[int, str, float, float | None, str]) -> Incident:
        id_, check, started_at, ended_at, raw = row
        data = json.loads(raw)
        return cls(
            id=id_,
            check=check,
            started_at=started_at,
            scope=data["scope"],
            peak_scope=data["peak_scope"],
            countries=list(data["countries"]),
            peak_countries=list(data["peak_countries"]),
            ended_at=ended_at,
            timeline=[Event(e[0], e[1], list(e[2]), *e[3:4]) for e in data["timeline"]],
            reasons={c: Counter(v) for c, v in data["reasons"].items()},
            ok_since=data.get("ok_since"),
            diagnosis=dict(data.get("diagnosis") or {}),
            cause=data.get("cause") or "unknown",
            past_kinds=set(
                data["past_kinds"]
                if "past_kinds" in data
                else set(data.get("diagnosis") or {}) - set(data["countries"])
            ),
        )


class IncidentBook:
    """Open and closed incidents; ``update`` applies one classifier snapshot."""

    def __init__(self, database: Database | None = None) -> None:
        """Without a database the book lives in memory only."""
        self.db: Connection | None = database.connect() if database is not None else None
        self.active: dict[str, Incident] = {}
        self.closed: list[Incident] = []  # oldest first
        self.next_id = 1
        if self.db is not None:
            self.reload()
            if self.active or self.closed:
                log.info("loaded %d incidents (%d open)", len(self.incidents()), len(self.active))

    def reload(self) -> None:
        """Replace the book's content with the stored incidents: the open ones and the
        newest KEEP_CLOSED closed ones (another collector of the mesh may have written them)."""
        assert self.db is not None
        rows = self.db.execute(
            "SELECT id, check_name, started_at, ended_at, data FROM incidents "
            "WHERE ended_at IS NULL OR id IN (SELECT id FROM incidents "
            "WHERE ended_at IS NOT NULL ORDER BY id DESC LIMIT ?) ORDER BY id",
            (KEEP_CLOSED,),
        ).fetchall()
        self.load_rows(rows)

    def load_rows(self, rows: list[tuple[int, str, float, float | None, str]]) -> None:
        """Replace the book's content with stored incident rows (oldest first)."""
        self.active, self.closed = {}, []
        for row in rows:
            incident = Incident.from_row(row)
            self.next_id = max(self.next_id, incident.id + 1)
            if incident.active:
                previous = self.active.get(incident.check)
                if previous is not None:  # cannot happen unless the file was edited
                    previous.ended_at = incident.started_at
                    self.closed.append(previous)
                self.active[incident.check] = incident
            else:
                self.closed.append(incident)
        self.closed = self.closed[-KEEP_CLOSED:]

    def incidents(self, active_only: bool = False) -> list[Incident]:
        """Newest first."""
        items = list(self.active.values()) + ([] if active_only else self.closed)
        return sorted(items, key=lambda i: (i.started_at, i.id), reverse=True)

    def update(
        self,
        snapshot: Snapshot,
        checks: ChecksFile,
        diagnoses: dict[str, dict[str, Diagnosis]] | None = None,
    ) -> list[Incident]:
        """Apply one evaluation (and its diagnoses); returns the incidents that must be saved."""
        now = snapshot.at
        dirty: list[Incident] = []
        for name, view in snapshot.checks.items():
            incident = self.active.get(name)
            changed = self._update_one(incident, view, now, checks.outage.close_after_rounds)
            incident = incident or self.active.get(name)
            if incident is None:
                continue
            if diagnoses and incident.active and name in diagnoses:
                changed = incident.diagnose(diagnoses[name], now) or changed
            if changed or now - incident.saved_at >= SAVE_EVERY:
                dirty.append(incident)
        for name in [n for n in self.active if n not in snapshot.checks]:
            incident = self.active[name]
            if incident.countries:
                incident.timeline.append(Event(now, "recovered", incident.countries))
                incident.countries = []
            self._close(incident, now)
            dirty.append(incident)
        for incident in dirty:
            incident.saved_at = now
        return dirty

    def _update_one(
        self, incident: Incident | None, view: CheckView, now: float, rounds: int
    ) -> bool:
        if view.state in (REGIONAL_OUTAGE, GLOBAL_OUTAGE):
            scope = view.scope or "regional"
            down = sorted(view.down)
            if incident is None:
                incident = Incident(self.next_id, view.check, now, scope, scope, down, down)
                self.next_id += 1
                incident.timeline.append(Event(now, "opened", down))
                if scope == "global":
                    incident.timeline.append(Event(now, "global", down))
                self.active[view.check] = incident
                log.warning("incident %d opened: %s", incident.id, incident.summary())
                changed = True
            else:
                changed = self._transition(incident, down, scope, now)
            incident.ok_since = None
            for c in view.countries:
                if c.state == DOWN and c.reason:
                    incident.reasons.setdefault(c.country, Counter())[
                        f"{c.reason}\t{c.detail}"
                    ] += 1
            return changed
        if incident is None:
            return False
        if view.state != "ok":  # unknown: no verdict, neither worse nor better
            incident.ok_since = None
            return False
        changed = self._transition(incident, [], incident.scope, now)
        if incident.ok_since is None:
            incident.ok_since = now
        if now - incident.ok_since >= rounds * view.interval:
            self._close(incident, now)
            changed = True
        return changed

    @staticmethod
    def _transition(incident: Incident, down: list[str], scope: str, now: float) -> bool:
        changed = False
        newly = sorted(set(down) - set(incident.countries))
        back = sorted(set(incident.countries) - set(down))
        if back:
            incident.timeline.append(Event(now, "recovered", back))
            incident.past_kinds.update(back)
            changed = True
        if newly:
            incident.timeline.append(Event(now, "down", newly))
            incident.peak_countries = sorted(set(incident.peak_countries) | set(newly))
            changed = True
        incident.countries = down
        if down and scope != incident.scope:
            incident.timeline.append(Event(now, scope, down))
            incident.scope = scope
            if scope == "global":
                incident.peak_scope = "global"
            changed = True
        return changed

    def _close(self, incident: Incident, now: float) -> None:
        incident.ended_at = now
        incident.ok_since = None
        incident.timeline.append(Event(now, "closed", []))
        del self.active[incident.check]
        self.closed.append(incident)
        del self.closed[:-KEEP_CLOSED]
        log.warning("incident %d closed: %s", incident.id, incident.summary())

    def save(self, rows: list[tuple[int, str, float, float | None, str]]) -> None:
        """Write incident rows in one transaction (called from a worker thread)."""
        if self.db is None or not rows:
            return
        with self.db.transaction() as db:
            db.executemany(
                "INSERT INTO incidents(id, check_name, started_at, ended_at, data) "
                "VALUES(?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET ended_at=excluded.ended_at, data=excluded.data",
                rows,
            )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


@dataclass
class _Diagnosed:
    """A check's diagnosis and what it was worked out from."""

    inputs: tuple[tuple[CountryInput, ...], frozenset[str], int]  # failing, up, evidence changes
    at: float
    diagnoses: dict[str, Diagnosis] = field(default_factory=dict)
    # False while the controls' next results may change it: a country waits for a
    # control's probe, or up countries have no agent whose latest probe succeeded
    settled: bool = True


class OutageMonitor:
    """Evaluates the mesh periodically and owns the incidents."""

    def __init__(
        self,
        state: MeshState,
        checks: Callable[[], ChecksFile],
        book: IncidentBook,
        clock: Callable[[], float] = time.time,
        notifications: Notifications | None = None,
        diagnoser: Diagnoser | None = None,
        shared: SharedVerdicts | None = None,
        election: Election | None = None,
        lane: WorkLane | None = None,
        ask_here: Callable[[str, pb.EvidenceRequest], bool] | None = None,
    ) -> None:
        self.state = state
        self.checks = checks
        self.lane = lane or WorkLane()  # runs the rounds' steps
        self.book = book
        self.clock = clock
        self.notifications = notifications
        self.publisher = Publisher(state.feed())  # this collector's agents' inputs
        self.inputs = InputBook()  # in a mesh, every agent's inputs as the evaluator reads them
        self.classifier = Classifier()
        # A round that failed may have changed inputs the classifier never took:
        # the next one has it compare every input, not only those named changed.
        self._unsure = True
        self.diagnoser = diagnoser
        self._diagnosed: dict[str, _Diagnosed] = {}  # the last diagnosis of each needy check
        self.snapshot = Snapshot(0.0)
        # check -> country -> diagnosis of every country that is not up, from the same
        # evaluation as ``snapshot``
        self.diagnoses: dict[str, dict[str, Diagnosis]] = {}
        self.refusals: dict[str, list[Refusal]] = {}  # check -> agents refusing it by policy
        # In a mesh, every agent as its collector described it (None: this collector's own).
        self.fleet: dict[str, dict[str, Any]] | None = None
        self.fleet_publisher = FleetPublisher()
        # CPU seconds of the last round's parts: "publish" (every collector), "evaluate"
        # (the classifier over every input; the evaluator only)
        self.round_seconds: dict[str, float] = {}
        self._book_version = 0  # evaluator: rounds that saved incidents
        self._book_seen: str | None = None  # follower: the incidents version last read
        self._connected: set[str] = set()  # agents connected here at the previous round
        self.evaluations = 0
        self._tick = asyncio.Event()  # set (and replaced) after every evaluation
        self._saving: asyncio.Future[None] | None = None  # the incident write in flight
        # A mesh sharing PostgreSQL publishes there and evaluates only while elected;
        # a collector alone is always its own evaluator.
        self.shared = shared
        self.election = election
        self.is_evaluator = shared is None
        self._db = ThreadPoolExecutor(1, thread_name_prefix="verdicts") if shared else None
        # evidence requests for agents other collectors serve, written after the judge step
        self._relay: list[Relayed] = []
        self.ask_here = ask_here  # sends an evidence request to an agent connected here
        if shared is not None:
            state.evidence.share()

    def evaluate(self) -> list[Incident]:
        """One round of a collector that is its own evaluator: publish, then judge."""
        return run_steps(self._evaluate_steps())

    def _evaluate_steps(self) -> Generator[None, None, list[Incident]]:
        """evaluate() in steps, for the work lane: a round over every pair would
        otherwise hold ingest, streams and scrapes for tens of milliseconds."""
        checks = self.checks()
        now = self.clock()
        unsure, self._unsure = self._unsure, True
        publication = yield from self._publish_steps(checks, now)
        yield
        changed = None if unsure else [*publication.removed, *publication.keys]
        # Alone, every input of the mesh is this publisher's: judged as it holds them,
        # not copied into an InputBook (a dict entry and a key tuple a pair).
        return (yield from self._judge_steps(self.publisher.published, checks, now, changed))

    def _publish_steps(self, checks: ChecksFile, now: float) -> Steps[Publication]:
        """This collector's part, in steps: its agents' inputs that changed since the last round."""
        steps = self.publisher.observe_steps(self.state.latest, checks, self.state.agents, now)
        spent = 0.0
        while True:
            started = time.perf_counter()
            try:
                next(steps)
            except StopIteration as done:
                self.round_seconds["publish"] = spent + time.perf_counter() - started
                return done.value
            spent += time.perf_counter() - started
            yield

    def judge(
        self, inputs: dict[Pair, PairInput], checks: ChecksFile, now: float
    ) -> list[Incident]:
        """The evaluator's part: classify every agent's inputs, diagnose, update
        incidents, notify; returns the incidents that must be saved."""
        return run_steps(self._judge_steps(inputs, checks, now))

    def _judge_steps(
        self,
        inputs: dict[Pair, PairInput],
        checks: ChecksFile,
        now: float,
        changed: list[Pair] | None = None,
    ) -> Generator[None, None, list[Incident]]:
        """judge() in steps; changed: the pairs whose input may have changed
        since the previous round (None: any). Only this monitor's task touches
        inputs and the classifier; what readers see (snapshot, diagnoses,
        refusals, incidents) changes in the last step, all of one round at once."""
        started = time.perf_counter()
        snapshot = self.classifier.evaluate(inputs, checks, now, changed)
        self._unsure = False
        self.round_seconds["evaluate"] = time.perf_counter() - started
        yield
        refusals = self.classifier.refusals()
        yield
        diagnoses = self._diagnose(snapshot, checks, inputs)
        yield
        self.snapshot, self.diagnoses, self.refusals = snapshot, diagnoses, refusals
        self.evaluations += 1
        dirty = self.book.update(snapshot, checks, self.diagnoses)
        if self.notifications is not None:
            self.notifications.observe(self.book, snapshot)
        self._wake()
        return dirty

    def _diagnose(
        self, snapshot: Snapshot, checks: ChecksFile, pair_inputs: Mapping[Pair, PairInput]
    ) -> dict[str, dict[str, Diagnosis]]:
        """Diagnose every down or degraded country (and those left only with local problems).

        A check's diagnosis, and its requests for evidence, are worked out
        again when its failing or up countries change, when its evidence
        changes, in every round while the controls' latest results may change
        it (a country waits for a control's probe, or no up country has a
        succeeding agent yet), and otherwise every DIAGNOSE_EVERY seconds
        (evidence growing old, more controls). Each time is a pass over the
        check's agents: with many checks failing somewhere in a mesh of tens
        of thousands of pairs, doing it every round costs more than the rest
        of the round.
        """
        diagnoser = self.diagnoser
        if diagnoser is None:
            return {}
        out: dict[str, dict[str, Diagnosis]] = {}
        due: dict[str, _Diagnosed] = {}
        diagnosed: dict[str, _Diagnosed] = {}
        for name, view in snapshot.checks.items():
            failing = tuple(
                CountryInput(c.country, local_only=c.state == UNKNOWN)
                for c in view.countries
                if c.state in (DOWN, DEGRADED)
                or (c.state == UNKNOWN and c.excluded and not c.agents)
            )
            if not failing:
                continue
            up = frozenset(c.country for c in view.countries if c.state == "up")
            inputs = (failing, up, diagnoser.book.changes[name])
            done = self._diagnosed.get(name)
            if (
                done is not None
                and done.inputs == inputs
                and done.settled
                and 0 <= snapshot.at - done.at < DIAGNOSE_EVERY  # a clock stepped back: now
            ):
                diagnosed[name] = done
                out[name] = done.diagnoses
            else:
                due[name] = _Diagnosed(inputs, snapshot.at)
        if due:
            by_check: dict[str, dict[str, Latest]] = {name: {} for name in due}
            for (check, agent), entry in self.state.latest.items():
                if check in by_check:
                    by_check[check][agent] = entry
            remote = self._remote(due, pair_inputs)
            for name, fresh in due.items():
                failing, up, _ = fresh.inputs
                latest = by_check[name]
                controls = {
                    a: e.timestamp for a, e in latest.items() if e.country in up and e.success
                }
                controls.update(self._remote_controls(name, remote[name], up))
                fresh.diagnoses = out[name] = diagnoser.diagnose_check(
                    name, failing, controls, snapshot.at
                )
                fresh.settled = bool(controls or not up) and all(
                    d.detail != AWAITING_CONTROL_PROBE for d in fresh.diagnoses.values()
                )
                candidates = askable(latest, self.state.agents)
                candidates.update(self._askable_remote(remote[name]))
                diagnoser.ask(
                    name,
                    candidates,
                    {c.country for c in failing if not c.local_only},
                    set(up),
                    checks.outage.control_refresh,
                    snapshot.at,
                )
                diagnosed[name] = fresh
        self._diagnosed = diagnosed
        return out

    def _remote(
        self, due: Mapping[str, _Diagnosed], inputs: Mapping[Pair, PairInput]
    ) -> dict[str, dict[str, PairInput]]:
        """In a mesh, per due check: the inputs of the agents not connected here, which
        other collectors serve (looked up by agent: a pass over every pair of the mesh
        costs more than the rest of a round)."""
        out: dict[str, dict[str, PairInput]] = {name: {} for name in due}
        if self.shared is None or not self.fleet:
            return out
        here = self.state.agents
        others = [a for a in self.fleet if not ((info := here.get(a)) and info.connected)]
        for name, found in out.items():
            for agent_id in others:
                item = inputs.get((name, agent_id))
                if item is not None:
                    found[agent_id] = item
        return out

    def _remote_controls(
        self, check: str, remote: Mapping[str, PairInput], up: frozenset[str]
    ) -> dict[str, float]:
        """Agents of other collectors whose latest result succeeds in an up country, each
        with the newest success known here on this clock: its published result, or the
        control evidence it reported since (a steady input is not published again)."""
        shared = self.shared
        if shared is None:
            return {}
        control = self.state.evidence.control
        out = {}
        for agent_id, item in remote.items():
            if not (item.success and item.fresh and item.country in up):
                continue
            at = item.last_ts + shared.offset(shared.owners.get((check, agent_id)))
            evidence = control.get((check, agent_id))
            out[agent_id] = max(at, evidence.received) if evidence is not None else at
        return out

    def _askable_remote(self, remote: Mapping[str, PairInput]) -> dict[str, tuple[str, bool]]:
        """Diagnoser.ask's candidates among other collectors' agents: connected to a live
        collector, and answering evidence requests."""
        fleet = self.fleet or {}
        out = {}
        for agent_id, item in remote.items():
            doc = fleet.get(agent_id)
            if doc and doc.get("connected") and EVIDENCE_FEATURE in doc.get("features", ()):
                out[agent_id] = (item.country, bool(item.success))
        return out

    def _put_remote(self, changes: list[RemoteChange], forgotten: list[str]) -> None:
        """Other collectors' evidence into the book: of an agent connected here, only
        what is newer than its own reports (sent before it moved here)."""
        book, agents = self.state.evidence, self.state.agents
        for collector, check, agent_id, slot, change in changes:
            agent = agents.get(agent_id)
            if agent is None or not agent.connected or book.newer(check, agent_id, slot, change):
                book.put(check, agent_id, slot, change, remote=collector)
        for collector in forgotten:
            book.forget_remote(collector)

    def relay(self, agent_id: str, request: pb.EvidenceRequest) -> bool:
        """In a mesh, queue an evidence request for an agent another live collector
        serves; False when none does."""
        shared = self.shared
        if shared is None:
            return False
        collector = shared.serving(agent_id)
        if collector is None or collector == shared.collector_id:
            return False
        self._relay.append((collector, request.check, agent_id, request.path))
        return True

    def _wake(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def wait_after(self, evaluation: int, seconds: float) -> None:
        """Return once an evaluation newer than ``evaluation`` exists (or on timeout)."""
        if self.evaluations > evaluation:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tick.wait(), seconds)

    async def run(self) -> None:
        """Evaluate every ``outage.evaluate_every`` seconds until cancelled."""
        try:
            await self._loop()
        finally:
            self._wake()  # release long-polling status pages so HTTP shutdown is quick
            if self._saving is not None:  # cancelling does not stop the thread: let it finish
                await asyncio.gather(self._saving, return_exceptions=True)
            if self._db is not None:
                await asyncio.get_running_loop().run_in_executor(self._db, self._close_shared)
                self._db.shutdown()

    async def _loop(self) -> None:
        while True:
            try:
                if self.shared is None:
                    await self._save(self.book.save, await self.lane.run(self._evaluate_steps()))
                else:
                    await self._shared_round(self.shared)
            except asyncio.CancelledError:
                raise
            except DatabaseError as exc:  # the database is down: try again next round
                log.warning("outage round failed: %s", exc)
            except Exception:  # a bug must not stop the collector
                log.exception("outage evaluation failed")
            await asyncio.sleep(self.checks().outage.evaluate_every)

    async def _save(self, save: Callable[[list[Any]], None], dirty: list[Incident]) -> None:
        if dirty:
            rows = [i.to_row() for i in dirty]
            self._saving = asyncio.ensure_future(self._io(save, rows))
            await asyncio.shield(self._saving)

    async def _io(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a database call in the monitor's own thread (SQLite: any worker thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _shared_round(self, shared: SharedVerdicts) -> None:
        """Publish this collector's inputs; then evaluate the mesh if elected, else follow.

        The election comes first: a collector whose session is lost stops
        evaluating (and re-sending alerts) even while the database is down.
        """
        elected = self.election is not None and await self._io(self.election.hold)
        if elected and not self.is_evaluator:
            await self._take_over(shared)
        elif self.is_evaluator and not elected and self.notifications is not None:
            self.notifications.stand_by()
        self.is_evaluator = elected
        checks = self.checks()
        connected = {a.agent_id for a in list(self.state.agents.values()) if a.connected}
        self.publisher.forget_agents(connected - self._connected)
        self._connected = connected
        new = self.publisher.new_pairs(self.state.latest, checks)
        if new:
            self.publisher.resume(await self._io(shared.published, new))
        publication = await self.lane.run(self._publish_steps(checks, self.clock()))
        described = self.fleet_publisher.observe(self.state.agents, time.monotonic())
        publication.agents, publication.agents_removed = described.agents, described.agents_removed
        publication.evidence = self.state.evidence.take_outbox()
        try:
            await self._io(shared.publish, publication)
        except Exception:
            self.publisher.retry(publication)
            self.fleet_publisher.retry(publication)
            self.state.evidence.retry(publication.evidence)
            raise
        self.fleet = await self._io(shared.read_fleet)
        if self.ask_here is not None:  # sent here or not at all: only the evaluator relays
            for check, agent_id, path in await self._io(shared.take_requests):
                self.ask_here(agent_id, pb.EvidenceRequest(check=check, path=path))
        if elected:
            unsure, self._unsure = self._unsure, True
            read = await self._io(shared.read, self.inputs)
            inputs = read.inputs
            self._put_remote(read.evidence, read.forgotten)
            changed = self.inputs.take_changed()
            dirty = await self.lane.run(
                self._judge_steps(inputs, checks, self.clock(), None if unsure else changed)
            )
            await self._save(self.book.save, dirty)
            if dirty:
                self._book_version += 1
            doc = to_doc(self.snapshot, self.diagnoses, self.refusals)
            # tells the other collectors whether to read the incidents again
            doc["incidents_version"] = f"{shared.collector_id}:{self._book_version}"
            await self._io(shared.save_evaluation, self.evaluations, doc)
            if self._relay:  # at once: the serving collectors take them at their next round
                relay, self._relay = self._relay, []
                try:
                    await self._io(shared.request, relay)
                except Exception:
                    self._relay[:0] = relay
                    raise
        else:
            await self._follow(shared)

    async def _take_over(self, shared: SharedVerdicts) -> None:
        """Become the evaluator: start from the stored incidents and every published input."""
        await self._io(self.book.reload)
        stored = await self._io(shared.load_evaluation)
        if stored is not None:
            self.evaluations = max(self.evaluations, stored[1])
        shared.forget_reads()
        self.state.evidence.forget_remote()  # read again, as the collectors publish it now
        self._relay.clear()  # made in an earlier term as the evaluator: made again if due
        self.inputs = InputBook()
        self.classifier = Classifier()
        self._unsure = True
        self._diagnosed = {}  # diagnoses from before: worked out again
        if self.notifications is not None:
            self.notifications.resume(self.book)
        log.info("evaluating the mesh; %d incidents open", len(self.book.active))

    async def _follow(self, shared: SharedVerdicts) -> None:
        """Serve the evaluator's latest evaluation and incidents."""
        stored = await self._io(shared.load_evaluation)
        if stored is None or stored[1] == self.evaluations:
            return
        version = stored[2].get("incidents_version")
        if version is None or version != self._book_seen:
            await self._io(self.book.reload)
            self._book_seen = version
        self.snapshot, self.diagnoses, self.refusals = from_doc(stored[2])
        self.evaluations = stored[1]
        self._wake()

    def _close_shared(self) -> None:
        if self.election is not None:
            self.election.close()
        if self.shared is not None:
            self.shared.close()

    def metric_families(self) -> Iterator[Metric]:
        outage = GaugeMetricFamily(
            "probemesh_outage",
            "1 while the check has an outage of this scope (regional: some countries down, "
            "global: every reporting country, or the configured share, down)",
            labels=["check", "scope"],
        )
        ratio = GaugeMetricFamily(
            "probemesh_country_reachability_ratio",
            "Share of the country's fresh agents (local problems excluded) "
            "whose latest probe succeeded",
            labels=["check", "country"],
        )
        local = GaugeMetricFamily(
            "probemesh_agent_local_problem",
            "1 when the agent fails nearly everything while others see the same targets up",
            labels=["agent", "country"],
        )
        evaluator = GaugeMetricFamily(
            "probemesh_evaluator",
            "1 while this collector is the mesh's evaluator: it alone exports the outage, "
            "reachability, diagnosis and local-problem gauges and sends notifications",
        )
        evaluator.add_metric([], 1.0 if self.is_evaluator else 0.0)
        yield evaluator
        seconds = GaugeMetricFamily(
            "probemesh_outage_round_seconds",
            "Seconds the last outage round spent in each part: publish (this collector's "
            "agents' verdict inputs) and evaluate (the classifier over the whole mesh)",
            labels=["part"],
        )
        for part, value in sorted(self.round_seconds.items()):
            if part == "publish" or self.is_evaluator:
                seconds.add_metric([part], value)
        yield seconds
        if not self.is_evaluator:
            return
        snapshot = self.snapshot
        known = {a.agent_id: a.country for a in list(self.state.agents.values())}
        for agent_id, health in snapshot.agents.items():  # agents served by other collectors
            known.setdefault(agent_id, health.country)
        for agent_id, country in known.items():
            flagged = snapshot.agent_state(agent_id) == LOCAL_PROBLEM
            local.add_metric([agent_id, country], 1.0 if flagged else 0.0)
        configured = self.checks().checks
        for name, view in snapshot.checks.items():
            if name not in configured:
                continue
            outage.add_metric([name, "regional"], 1.0 if view.state == REGIONAL_OUTAGE else 0.0)
            outage.add_metric([name, "global"], 1.0 if view.state == GLOBAL_OUTAGE else 0.0)
            for c in view.countries:
                if c.ratio is not None:
                    ratio.add_metric([name, c.country], c.ratio)
        diagnosis = GaugeMetricFamily(
            "probemesh_country_diagnosis",
            "1 for the kind of each failing country's diagnosis (origin, dns, tcp_blocking, "
            "tls_interference, http_diff, path, local, unknown); absent while the country is up",
            labels=["check", "country", "kind"],
        )
        for name, countries in sorted(self.diagnoses.items()):
            if name not in configured:
                continue
            for country, d in sorted(countries.items()):
                diagnosis.add_metric([name, country, d.kind], 1.0)
        yield outage
        yield ratio
        yield diagnosis
        yield local
