"""Per-country reachability and outage classification (the #twitterdown view).

The classifier runs periodically (about once a second) over the published
inputs of every check x agent of the mesh (verdicts.PairInput: each serving
collector's damped per-agent verdicts, see verdicts.py); nothing here runs on
the ingest path. It owns every verdict it derives from them, including
whether an agent has a local problem: readers take them from its Snapshot.
Each evaluation:

1. takes, for every check x agent, the agent's *confirmed* verdict, which its
   serving collector changes only after ``confirm_rounds`` equal rounds in a
   row (a single failed or successful probe never flips anything), its latest
   raw result and whether it is fresh;
2. judges each agent as a whole (``AgentHealth``): *local problem* when it is
   confirmed failing nearly every check it probes while the other agents see
   those checks up; *suspect* while its latest raw results say the same but
   the confirmed verdicts have not caught up, or while a confirmed failure
   waits for the agent's other checks to report (the local-problem question
   is not settled yet). Local and suspect agents turn no country down;
3. derives each country's state from the counted verdicts of its fresh,
   unflagged agents (down: more than ``down_share`` of them failing;
   degraded: some; up: none; unknown: no counted verdict), and the check's
   state: ``ok``, ``regional_outage``, ``global_outage`` (every reporting
   country, or ``global_share`` of them, down) or ``unknown``.

See docs/outages.md for the reasoning behind each rule and its latency.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from probemesh.checks import ChecksFile, OutageSettings
from probemesh.collector.verdicts import Pair, PairInput

log = logging.getLogger(__name__)

UP, DEGRADED, DOWN, UNKNOWN = "up", "degraded", "down", "unknown"
OK, REGIONAL_OUTAGE, GLOBAL_OUTAGE = "ok", "regional_outage", "global_outage"
SCOPE_OF = {REGIONAL_OUTAGE: "regional", GLOBAL_OUTAGE: "global"}
HEALTHY, SUSPECT, LOCAL_PROBLEM = "ok", "suspect", "local_problem"


@dataclass(frozen=True)
class AgentHealth:
    """The classifier's verdict on one agent as a whole."""

    agent: str
    country: str
    state: str = HEALTHY  # ok | suspect | local_problem
    probed: int = 0  # fresh checks with a confirmed verdict
    lonely: int = 0  # of those, confirmed failing while most other agents see them up
    lonely_now: int = 0  # of those, latest result failing while most other agents see them up
    fails_nearly_all: bool = False  # lonely_now reaches local_problem_share: raw says "local"
    held: tuple[str, ...] = ()  # checks whose confirmed failure waits for the other checks

    @property
    def local_problem(self) -> bool:
        return self.state == LOCAL_PROBLEM

    @property
    def excluded(self) -> bool:
        """Counted in no country: a local problem, or suspected of one by its raw results."""
        return self.state == LOCAL_PROBLEM or self.fails_nearly_all


@dataclass(frozen=True)
class CountryView:
    """One country's reachability of one check."""

    country: str
    agents: int  # fresh agents counted (local problems and suspects excluded)
    up: int  # of those, how many succeeded in their latest round
    state: str  # up | degraded | down | unknown
    reason: str = ""  # dominant failure reason name among failing agents
    detail: str = ""  # e.g. "HTTP 500"
    excluded: int = 0  # agents left out because of a local problem
    suspects: int = 0  # agents left out while suspected of one (not settled yet)

    @property
    def ratio(self) -> float | None:
        return self.up / self.agents if self.agents else None


@dataclass(frozen=True)
class CheckView:
    """One check across every country that probes it."""

    check: str
    state: str  # ok | regional_outage | global_outage | unknown
    countries: tuple[CountryView, ...]
    interval: float

    @property
    def down(self) -> frozenset[str]:
        return frozenset(c.country for c in self.countries if c.state == DOWN)

    @property
    def scope(self) -> str | None:
        return SCOPE_OF.get(self.state)


@dataclass(frozen=True)
class Snapshot:
    """The result of one evaluation: every check's view and every probing agent's health."""

    at: float
    checks: dict[str, CheckView] = field(default_factory=dict)
    agents: dict[str, AgentHealth] = field(default_factory=dict)

    @property
    def local_problems(self) -> frozenset[str]:
        return frozenset(a for a, h in self.agents.items() if h.local_problem)

    def agent_state(self, agent_id: str) -> str:
        """ok | suspect | local_problem (ok for an agent with no fresh result)."""
        health = self.agents.get(agent_id)
        return health.state if health is not None else HEALTHY


@dataclass(slots=True)
class _Row:
    """One reporting check x agent: its published input, and what the evaluator keeps
    of it between evaluations (does its confirmed failure count?)."""

    input: PairInput
    interval: float
    agent: str = ""
    country: str = ""
    check: str = ""
    fresh: bool = False
    success: bool = False
    confirmed: bool | None = None
    counted: bool = False  # the confirmed failure counts towards its country
    held_since: float | None = None  # evaluation time a lone failure began to wait
    lonely: bool = False  # confirmed failing while most other agents are confirmed up
    lonely_now: bool = False  # latest result failed while most other agents' latest succeeded

    def __post_init__(self) -> None:
        self.take(self.input, self.interval)

    def take(self, item: PairInput, interval: float) -> None:
        """The pair's newest input (read once here: every rule below reads these often)."""
        self.input, self.interval = item, interval
        self.agent, self.country, self.check = item.agent, item.country, item.check
        self.fresh, self.success, self.confirmed = item.fresh, item.success is True, item.confirmed


class Classifier:
    """Keeps which failures count and the local-problem flags between evaluations."""

    def __init__(self) -> None:
        self.rows: dict[Pair, _Row] = {}
        self.local: frozenset[str] = frozenset()

    def evaluate(
        self, inputs: Mapping[Pair, PairInput], checks: ChecksFile, now: float
    ) -> Snapshot:
        cfg = checks.outage
        rows, listed = self._rows(inputs, checks)
        by_agent: dict[str, list[_Row]] = {}
        for check_rows in rows.values():
            _mark_lonely(check_rows)
            for r in check_rows:
                by_agent.setdefault(r.agent, []).append(r)
        health = {
            agent: self._judge(agent_rows, cfg, now) for agent, agent_rows in by_agent.items()
        }
        self.local = frozenset(a for a, h in health.items() if h.local_problem)
        views = {
            name: _check_view(name, rows[name], listed[name], health, checks)
            for name in checks.checks
        }
        return Snapshot(now, views, health)

    def _rows(
        self, inputs: Mapping[Pair, PairInput], checks: ChecksFile
    ) -> tuple[dict[str, list[_Row]], dict[str, set[str]]]:
        """One row per configured pair that reported, and each check's assigned countries."""
        rows: dict[str, list[_Row]] = {name: [] for name in checks.checks}
        listed: dict[str, set[str]] = {name: set() for name in checks.checks}
        seen: set[Pair] = set()
        known = self.rows
        for key, item in list(inputs.items()):
            check = key[0]
            spec = checks.checks.get(check)
            if spec is None:
                continue
            listed[check].add(item.country)
            if item.success is None:
                continue
            seen.add(key)
            row = known.get(key)
            if row is None:
                row = known[key] = _Row(item, spec.interval)
            elif row.input is not item or row.interval != spec.interval:
                row.take(item, spec.interval)
            row.lonely = row.lonely_now = False
            rows[check].append(row)
        for key in [k for k in known if k not in seen]:
            del known[key]
        return rows, listed

    def _judge(self, rows: list[_Row], cfg: OutageSettings, now: float) -> AgentHealth:
        """Settle one agent's local-problem question and which of its failures count.

        The flag is set from confirmed verdicts and cleared only once neither
        the confirmed verdicts nor the latest raw results say "local" any
        more. In between (onset and recovery), the agent is suspect. A failure
        confirmed while most others see the check up starts to count only
        once every other check of the agent has reported since the agent's
        latest change (then the question is settled), or after waiting one
        interval of that check, whichever comes first.
        """
        agent, country = rows[0].agent, rows[0].country
        probed = [r for r in rows if r.fresh and r.confirmed is not None]
        lonely = sum(r.lonely for r in probed)
        lonely_now = sum(r.lonely_now for r in probed)
        enough = len(probed) >= cfg.local_problem_min_checks
        confirmed_local = enough and lonely >= cfg.local_problem_share * len(probed)
        fails_nearly_all = enough and lonely_now >= cfg.local_problem_share * len(probed)
        was_local = agent in self.local
        local = confirmed_local or (was_local and fails_nearly_all)
        if local != was_local:
            log.warning(
                "agent %s (%s): local problem %s",
                agent,
                country,
                "detected" if local else "cleared",
            )
        settled = all(r.input.settled for r in rows)  # the serving collector's view
        held: list[str] = []
        for r in rows:
            if not r.fresh or r.confirmed is not False or local or fails_nearly_all:
                r.counted, r.held_since = False, None
            elif r.counted:
                continue
            elif r.success:  # recovering: a failure starts to count only while it lasts
                r.held_since = None
            elif not r.lonely_now or settled:
                r.counted, r.held_since = True, None
            else:
                if r.held_since is None:
                    r.held_since = now
                if now - r.held_since >= r.interval:
                    r.counted, r.held_since = True, None
                else:
                    held.append(r.check)
        if local:
            state = LOCAL_PROBLEM
        elif fails_nearly_all or held:
            state = SUSPECT
        else:
            state = HEALTHY
        return AgentHealth(
            agent,
            country,
            state,
            len(probed),
            lonely,
            lonely_now,
            fails_nearly_all and not local,
            tuple(sorted(held)),
        )


def _mark_lonely(rows: list[_Row]) -> None:
    """Mark the failures of one check that most other agents do not share."""
    fresh = [r for r in rows if r.fresh]
    raw_up = sum(1 for r in fresh if r.success)
    confirmed = [r for r in fresh if r.confirmed is not None]
    confirmed_up = sum(1 for r in confirmed if r.confirmed is True)
    for r in fresh:  # a failing agent is not among the ups, so every up is another agent
        if not r.success:
            others = len(fresh) - 1
            r.lonely_now = others > 0 and raw_up * 2 > others
        if r.confirmed is False:
            others = len(confirmed) - 1
            r.lonely = others > 0 and confirmed_up * 2 > others


def _check_view(
    name: str,
    rows: list[_Row],
    listed: set[str],
    health: Mapping[str, AgentHealth],
    checks: ChecksFile,
) -> CheckView:
    spec = checks.checks[name]
    cfg = checks.outage
    by_country: dict[str, list[_Row]] = {}
    for r in rows:
        by_country.setdefault(r.country, []).append(r)
    for country in listed:  # assigned there, even if nothing was heard yet
        by_country.setdefault(country, [])
    countries = []
    for country in sorted(by_country):
        members = [r for r in by_country[country] if r.fresh]
        counted = [r for r in members if not health[r.agent].excluded]
        excluded = sum(1 for r in members if health[r.agent].local_problem)
        suspects = len(members) - len(counted) - excluded
        up = sum(1 for r in counted if r.success)
        failing = [r for r in counted if r.counted]
        # a confirmed failure still held or recovering is no verdict yet
        known = len(failing) + sum(1 for r in counted if r.confirmed is True)
        if not known:
            state = UNKNOWN
        elif len(failing) > cfg.down_share * known:
            state = DOWN
        elif failing:
            state = DEGRADED
        else:
            state = UP
        reason = detail = ""
        details = Counter((r.input.reason, r.input.detail) for r in failing if not r.success)
        if details:
            (reason, detail), _ = min(details.items(), key=lambda kv: (-kv[1], kv[0]))
        countries.append(
            CountryView(country, len(counted), up, state, reason, detail, excluded, suspects)
        )
    reporting = [c for c in countries if c.state != UNKNOWN]
    down = [c for c in reporting if c.state == DOWN]
    if not reporting:
        state = UNKNOWN
    elif not down:
        state = OK
    elif len(down) == len(reporting) or len(down) >= cfg.global_share * len(reporting):
        state = GLOBAL_OUTAGE
    else:
        state = REGIONAL_OUTAGE
    return CheckView(name, state, tuple(countries), spec.interval)
