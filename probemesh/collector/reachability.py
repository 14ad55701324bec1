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

A round does only the work its changes call for (see _Row): a mesh of 10,000
agents x 20 checks gets a few thousand new results per second, while the
rules above would otherwise look at all 200,000 pairs every second.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from probemesh.checks import ChecksFile, OutageSettings
from probemesh.collector.runnable import Refusal
from probemesh.collector.verdicts import Pair, PairInput, Rekeys

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


class _Row:
    """One configured check x agent that reported, kept between evaluations.

    An evaluation only redoes the work its changes call for: rows whose
    published input changed (inputs are replaced, never mutated, so identity
    tells), agents with such a row or with a failure held on a timer, and the
    per-check and per-country counts, by delta. A round over 200,000 pairs
    with a few thousand changes then costs one pass over the inputs.

    It also holds the evaluator's own state of the pair (does its confirmed
    failure count, since when a lone failure waits). The evaluator holds a row
    for every pair of the mesh, so that is one object a pair, not two, and what
    the input says is read from the input, not copied.
    """

    __slots__ = (
        "counted", "detail", "held_since", "input", "inputs", "interval", "lonely",
        "lonely_now", "place", "placed", "share",
    )  # fmt: skip

    def __init__(
        self, item: PairInput, interval: float, counting: tuple[bool, float | None] | None
    ) -> None:
        self.input = item  # the pair's input as last taken
        self.interval = interval
        self.counted = False  # the confirmed failure counts towards its country
        self.held_since: float | None = None  # evaluation time a lone failure began to wait
        if counting is not None:  # kept over a reload
            self.counted, self.held_since = counting
        self.lonely = False  # confirmed failing while most other agents are confirmed up
        self.lonely_now = False  # latest result failed while most other agents' latest succeeded
        self.inputs = 0  # what it adds to its _CheckCounts (see _inputs)
        self.place: _CountryCounts | None = None  # the counts its share is in
        self.placed: PairInput | None = None  # the input its share was last placed from
        self.share = 0  # what it adds to them (see _share)
        self.detail: tuple[str, str] | None = None  # its failure detail, when counted failing

    @property
    def agent(self) -> str:
        return self.input.agent

    @property
    def check(self) -> str:
        return self.input.check

    @property
    def country(self) -> str:
        return self.input.country


class _CountryCounts:
    """One check in one country: what its CountryView is made of, kept by delta."""

    __slots__ = ("country", "counts", "details", "rows")

    def __init__(self, country: str) -> None:
        self.country = country
        self.rows = 0  # rows of the country, fresh or not
        self.counts = [0] * 6  # by _share bit: member, counted, excluded, up, failing, known up
        self.details: Counter[tuple[str, str]] = Counter()  # of failing agents


class _CheckCounts:
    """One check's fresh rows as the lonely flags need them, and its countries; by delta.

    Also what a round hands on for the check, kept until it changes: its view
    (None once a country's counts or the listed countries moved) and the
    agents refusing it by their own policy. A steady round leaves most checks'
    counts as they were, so it builds neither again."""

    __slots__ = (
        "confirmed", "confirmed_up", "countries", "fresh", "listed", "lonely", "lonely_now",
        "refusals", "refused", "up", "view",
    )  # fmt: skip

    def __init__(self) -> None:
        self.fresh = self.up = self.confirmed = self.confirmed_up = 0
        self.lonely_now = False  # most other fresh agents' latest succeeded
        self.lonely = False  # most other confirmed agents are confirmed up
        self.countries: dict[str, _CountryCounts] = {}
        self.listed: Counter[str] = Counter()  # countries of every input, reported or not
        self.view: CheckView | None = None
        self.refused: dict[str, PairInput] = {}  # agent -> its input saying it refuses
        self.refusals: list[Refusal] | None = []  # refused as Refusals by agent; None: stale


# _share bits: the row's place in its country's view
_MEMBER, _COUNTED, _EXCLUDED, _UP, _FAILING, _KNOWN_UP = (1 << i for i in range(6))


class Classifier:
    """Keeps which failures count and the local-problem flags between evaluations."""

    def __init__(self) -> None:
        self.local: frozenset[str] = frozenset()
        self._checks: ChecksFile | None = None
        self._seen: dict[Pair, PairInput] = {}  # every configured input, as last taken
        self._inputs: Mapping[Pair, PairInput] | None = None  # the mapping they were taken from
        self._rekeys = Rekeys()  # of _seen
        # (counted, held_since) of the rows a reload dropped, until the next round takes them
        self._carried: dict[Pair, tuple[bool, float | None]] = {}
        self._by_check: dict[str, dict[str, _Row]] = {}
        self._by_agent: dict[str, dict[str, _Row]] = {}
        self._counts: dict[str, _CheckCounts] = {}
        self._health: dict[str, AgentHealth] = {}
        self._holding: set[str] = set()  # agents with a failure held on a timer

    def evaluate(
        self,
        inputs: Mapping[Pair, PairInput],
        checks: ChecksFile,
        now: float,
        changed: Iterable[Pair] | None = None,
    ) -> Snapshot:
        """Judge inputs. changed: the pairs whose input may differ from those of
        the previous call, when inputs is the same mapping as then (a collector's
        publisher's, or the evaluator's book); otherwise every input is
        compared with the last taken: at 200,000 pairs that pass was most of a
        steady round."""
        cfg = checks.outage
        if checks is not self._checks:
            self._reset(checks)
        if inputs is not self._inputs:
            changed = None
        self._inputs = inputs
        changed_rows, touched = self._take(inputs, checks, changed)
        touched |= self._mark_lonely(changed_rows)
        touched |= self._holding
        health = self._health
        local_moved = False
        for agent in touched:
            rows = self._by_agent.get(agent)
            before = health.get(agent)
            if not rows:
                health.pop(agent, None)
                self._holding.discard(agent)
                local_moved = local_moved or (before is not None and before.local_problem)
                continue
            agent_rows = list(rows.values())
            counted = [row.counted for row in agent_rows]
            verdict = health[agent] = self._judge(agent_rows, cfg, now)
            if before is None or before.local_problem != verdict.local_problem:
                local_moved = True
            if verdict.held:
                self._holding.add(agent)
            else:
                self._holding.discard(agent)
            # A row's share of its country moves with its input, whether its
            # failure counts, and whether its agent is left out: most of a
            # touched agent's rows keep theirs.
            moved = (
                before is None
                or before.excluded != verdict.excluded
                or before.local_problem != verdict.local_problem
            )
            for row, was in zip(agent_rows, counted, strict=True):
                if moved or row.counted != was or row.placed is not row.input:
                    self._place(row, verdict)
        if local_moved:
            self.local = frozenset(a for a, h in health.items() if h.local_problem)
        views = {}
        for name, spec in checks.checks.items():
            tally = self._counts[name]
            if tally.view is None:
                tally.view = self._check_view(name, spec.interval, cfg)
            views[name] = tally.view
        return Snapshot(now, views, dict(health))

    def refusals(self) -> dict[str, list[Refusal]]:
        """check -> the agents refusing it by their own policy, as last evaluated."""
        out = {}
        for name, tally in self._counts.items():
            if tally.refusals is None:
                tally.refusals = [
                    Refusal(name, agent, item.country, item.reason, item.detail)
                    for agent, item in sorted(tally.refused.items())
                ]
            if tally.refusals:
                out[name] = tally.refusals
        return out

    def _reset(self, checks: ChecksFile) -> None:
        """A new checks file: intervals and thresholds may differ, so start the rows over.

        Which failures count (the rows' counted and held_since) is kept for the
        pairs still configured.
        """
        self._carried.update(
            ((r.check, r.agent), (r.counted, r.held_since))
            for rows in self._by_agent.values()
            for r in rows.values()
        )
        self._checks = checks
        self._inputs = None
        self._seen, self._by_check, self._by_agent = {}, {}, {}
        self._rekeys = Rekeys()
        self._counts = {name: _CheckCounts() for name in checks.checks}
        self._health, self._holding = {}, set()

    def _take(
        self, inputs: Mapping[Pair, PairInput], checks: ChecksFile, keys: Iterable[Pair] | None
    ) -> tuple[list[_Row], set[str]]:
        """Take the inputs that changed since the previous round: of every pair
        (keys None), or of the pairs keys names.

        Returns the rows whose input changed and the agents that lost a row.
        """
        seen = self._seen
        get = seen.get
        specs = checks.checks
        changed: list[_Row] = []
        touched: set[str] = set()
        count = 0
        named: Iterable[tuple[Pair, PairInput | None]] = (
            inputs.items() if keys is None else ((key, inputs.get(key)) for key in keys)
        )
        for key, item in named:
            previous = get(key)
            if previous is item:  # the common case: nothing new
                count += 1
                continue
            if item is None:  # gone (only a caller's keys name a pair inputs lacks)
                self._drop_seen(key, touched)
                continue
            spec = specs.get(key[0])
            if spec is None:
                continue
            count += 1
            self._list(key, previous, item)
            seen[key] = item
            row = self._row(key)
            if item.success is None:
                if row is not None:
                    self._remove(row)
                    touched.add(row.agent)
                continue
            if row is None:
                if previous is not None:  # listed unheard: key it by the tuple its rows share
                    del seen[key]
                    seen[key] = item
                    self._rekeys.now += 1
                carried = self._carried.pop(key, None) if self._carried else None
                row = _Row(item, spec.interval, carried)
                self._by_check.setdefault(row.check, {})[row.agent] = row
                self._by_agent.setdefault(row.agent, {})[row.check] = row
            else:
                row.input = item
            changed.append(row)
        if keys is None and count != len(seen):
            for key in [k for k in seen if k not in inputs]:
                self._drop_seen(key, touched)
        self._carried = {}  # of pairs that no longer report
        if self._rekeys.due(len(seen)):
            self._seen = dict(seen)  # sized for its entries (Rekeys)
        return changed, touched

    def _drop_seen(self, key: Pair, touched: set[str]) -> None:
        """A pair gone from the inputs: unlist it, remove its row (its agent is touched)."""
        self._list(key, self._seen.pop(key), None)
        row = self._row(key)
        if row is not None:
            self._remove(row)
            touched.add(row.agent)

    def _list(self, key: Pair, old: PairInput | None, new: PairInput | None) -> None:
        """Keep the countries each check is listed in (assigned there, heard or
        not), and the agents refusing it."""
        tally = self._counts[key[0]]
        if old is None or new is None or old.country != new.country:
            listed = tally.listed
            if old is not None:
                listed[old.country] -= 1
            if new is not None:
                listed[new.country] += 1
            tally.view = None
        if old is not None and old.refused:
            del tally.refused[key[1]]
            tally.refusals = None
        if new is not None and new.refused:
            tally.refused[key[1]] = new
            tally.refusals = None

    def _row(self, key: Pair) -> _Row | None:
        """The pair's row (rows are kept by agent and by check, not by pair as well:
        a third index over every pair of the mesh cost about 30 bytes a pair)."""
        rows = self._by_agent.get(key[1])
        return None if rows is None else rows.get(key[0])

    def _remove(self, row: _Row) -> None:
        del self._by_check[row.check][row.agent]
        agent_rows = self._by_agent[row.agent]
        del agent_rows[row.check]
        if not agent_rows:
            del self._by_agent[row.agent]
        tally = self._counts[row.check]
        _count_inputs(tally, row.inputs, -1)
        place = row.place
        if place is not None:
            place.rows -= 1
            _count_share(place, row.share, row.detail, -1)
            tally.view = None

    def _mark_lonely(self, changed: list[_Row]) -> set[str]:
        """Mark the failures that most other agents of the same check do not share.

        Returns the agents whose rows changed or whose flags moved: they are judged again.
        """
        counts = self._counts
        for row in changed:
            inputs = _inputs(row)
            if inputs != row.inputs:
                tally = counts[row.check]
                _count_inputs(tally, row.inputs, -1)
                _count_inputs(tally, inputs, 1)
                row.inputs = inputs
        touched = {row.agent for row in changed}
        for name, tally in counts.items():
            others, confirmed_others = tally.fresh - 1, tally.confirmed - 1
            lonely_now = others > 0 and tally.up * 2 > others
            lonely = confirmed_others > 0 and tally.confirmed_up * 2 > confirmed_others
            if (lonely_now, lonely) != (tally.lonely_now, tally.lonely):
                tally.lonely_now, tally.lonely = lonely_now, lonely
                for row in self._by_check.get(name, {}).values():
                    if _set_lonely(row, tally):
                        touched.add(row.agent)
        for row in changed:
            _set_lonely(row, counts[row.check])
        return touched

    def _place(self, row: _Row, health: AgentHealth) -> None:
        """Move the row's share of its country's view to what it is now."""
        row.placed = row.input
        place = row.place
        if place is None or place.country != row.country:
            tally = self._counts[row.check]
            place = tally.countries.get(row.country)
            if place is None:
                place = tally.countries[row.country] = _CountryCounts(row.country)
            old = row.place
            if old is not None:
                old.rows -= 1
                _count_share(old, row.share, row.detail, -1)
            place.rows += 1
            row.place, row.share, row.detail = place, 0, None
            tally.view = None
        share, detail = _share(row, health)
        if share != row.share or detail != row.detail:
            _count_share(place, row.share, row.detail, -1)
            _count_share(place, share, detail, 1)
            row.share, row.detail = share, detail
            self._counts[row.check].view = None

    def _check_view(self, name: str, interval: float, cfg: OutageSettings) -> CheckView:
        tally = self._counts[name]
        places = tally.countries
        names = {country for country, place in places.items() if place.rows}
        names.update(country for country, n in tally.listed.items() if n > 0)
        countries = []
        for country in sorted(names):
            place = places.get(country) or _CountryCounts(country)
            members, counted, excluded, up, failing, known_up = place.counts
            known = (
                failing + known_up
            )  # a confirmed failure still held or recovering is no verdict yet
            if not known:
                state = UNKNOWN
            elif failing > cfg.down_share * known:
                state = DOWN
            elif failing:
                state = DEGRADED
            else:
                state = UP
            reason = detail = ""
            details = [(-n, key) for key, n in place.details.items() if n > 0]
            if details:
                reason, detail = min(details)[1]
            suspects = members - counted - excluded
            countries.append(
                CountryView(country, counted, up, state, reason, detail, excluded, suspects)
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
        return CheckView(name, state, tuple(countries), interval)

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
        probed = [r for r in rows if r.input.fresh and r.input.confirmed is not None]
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
            item = r.input
            if not item.fresh or item.confirmed is not False or local or fails_nearly_all:
                r.counted, r.held_since = False, None
            elif r.counted:
                continue
            elif item.success:  # recovering: a failure starts to count only while it lasts
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


def _inputs(row: _Row) -> int:
    """What a row adds to its check's counts: bit 0 fresh, 1 up, 2 confirmed, 3 confirmed up."""
    item = row.input
    if not item.fresh:
        return 0
    inputs = 3 if item.success else 1
    confirmed = item.confirmed
    if confirmed is not None:
        inputs |= 12 if confirmed else 4
    return inputs


def _count_inputs(tally: _CheckCounts, inputs: int, sign: int) -> None:
    if inputs:
        tally.fresh += sign
        if inputs & 2:
            tally.up += sign
        if inputs & 4:
            tally.confirmed += sign
        if inputs & 8:
            tally.confirmed_up += sign


def _set_lonely(row: _Row, tally: _CheckCounts) -> bool:
    """Set the row's lonely flags from its check's; say whether they moved.

    A failing agent is not among the ups, so every up is another agent.
    """
    item = row.input
    lonely_now = item.fresh and tally.lonely_now and not item.success
    lonely = item.fresh and tally.lonely and item.confirmed is False
    if lonely_now is row.lonely_now and lonely is row.lonely:
        return False
    row.lonely_now, row.lonely = lonely_now, lonely
    return True


def _share(row: _Row, health: AgentHealth) -> tuple[int, tuple[str, str] | None]:
    """The row's bits in its country's view (see _MEMBER...), and its failure detail."""
    item = row.input
    if not item.fresh:
        return 0, None
    if health.excluded:
        return (_MEMBER | _EXCLUDED if health.local_problem else _MEMBER), None
    share = _MEMBER | _COUNTED
    if item.success:
        share |= _UP
    detail = None
    if row.counted:
        share |= _FAILING
        if not item.success:
            detail = (item.reason, item.detail)
    if item.confirmed is True:
        share |= _KNOWN_UP
    return share, detail


def _count_share(
    place: _CountryCounts, share: int, detail: tuple[str, str] | None, sign: int
) -> None:
    if share:
        counts = place.counts
        for bit in range(6):
            if share >> bit & 1:
                counts[bit] += sign
    if detail is not None:
        place.details[detail] += sign
