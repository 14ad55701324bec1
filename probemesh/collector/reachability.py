"""Per-country reachability and outage classification (the #twitterdown view).

The classifier runs periodically (about once a second) over MeshState.latest,
which already holds the newest result of every check x agent; nothing here
runs on the ingest path. Each evaluation:

1. updates, for every check x agent, a streak of consecutive failed or
   successful rounds (a round is a new result), and the agent's *confirmed*
   verdict, which changes only after ``confirm_rounds`` equal rounds in a row.
   A single failed (or successful) probe therefore never flips anything;
2. flags agents with a *local problem*: they fail nearly every check they
   probe while most other agents see those checks up;
3. derives each country's state from its fresh, non-flagged agents
   (down: more than ``down_share`` of them confirmed failing; degraded: some;
   up: none; unknown: no confirmed fresh agent), and the check's state:
   ``ok``, ``regional_outage``, ``global_outage`` (every reporting country, or
   ``global_share`` of them, down) or ``unknown``.

See docs/outages.md for the reasoning behind each rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from probemesh.checks import ChecksFile
from probemesh.collector.state import REASON_NAMES, AgentInfo, Latest
from probemesh.v1 import mesh_pb2 as pb

UP, DEGRADED, DOWN, UNKNOWN = "up", "degraded", "down", "unknown"
OK, REGIONAL_OUTAGE, GLOBAL_OUTAGE = "ok", "regional_outage", "global_outage"
SCOPE_OF = {REGIONAL_OUTAGE: "regional", GLOBAL_OUTAGE: "global"}
_STATUS_SAMPLE = "probe_http_status_code"


@dataclass
class AgentVerdict:
    """Damped view of one check on one agent."""

    last_ts: float = 0.0
    ok_streak: int = 0
    fail_streak: int = 0
    confirmed: bool | None = None  # True up, False failing, None not yet known

    def observe(self, success: bool, confirm_rounds: int) -> None:
        if success:
            self.ok_streak, self.fail_streak = self.ok_streak + 1, 0
            if self.ok_streak >= confirm_rounds:
                self.confirmed = True
        else:
            self.ok_streak, self.fail_streak = 0, self.fail_streak + 1
            if self.fail_streak >= confirm_rounds:
                self.confirmed = False


def failure_detail(result: pb.Result) -> tuple[str, str]:
    """(reason name, human detail): ("http_status", "HTTP 500") or ("timeout", "timeout")."""
    reason = REASON_NAMES.get(result.reason, "other")
    if reason == "unspecified":
        reason = "other"
    if reason == "http_status":
        for sample in result.samples:
            if sample.name == _STATUS_SAMPLE and sample.value > 0:
                return reason, f"HTTP {int(sample.value)}"
    return reason, reason


@dataclass(frozen=True)
class CountryView:
    """One country's reachability of one check."""

    country: str
    agents: int  # fresh agents counted (local problems excluded)
    up: int  # of those, how many succeeded in their latest round
    state: str  # up | degraded | down | unknown
    reason: str = ""  # dominant failure reason name among failing agents
    detail: str = ""  # e.g. "HTTP 500"
    excluded: int = 0  # agents left out because of a local problem

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
    """The result of one evaluation."""

    at: float
    checks: dict[str, CheckView] = field(default_factory=dict)
    local_problems: frozenset[str] = frozenset()


@dataclass
class _Row:
    agent: str
    country: str
    result: pb.Result
    verdict: AgentVerdict
    fresh: bool


class Classifier:
    """Keeps the per check x agent streaks between evaluations."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], AgentVerdict] = {}

    def evaluate(
        self,
        latest: Mapping[tuple[str, str], Latest],
        checks: ChecksFile,
        agents: Mapping[str, AgentInfo],
        now: float,
    ) -> Snapshot:
        cfg = checks.outage
        rows: dict[str, list[_Row]] = {name: [] for name in checks.checks}
        seen: set[tuple[str, str]] = set()
        for key, entry in list(latest.items()):
            check, agent = key
            spec = checks.checks.get(check)
            if spec is None:
                continue
            seen.add(key)
            verdict = self.verdicts.get(key)
            if verdict is None:
                verdict = self.verdicts[key] = AgentVerdict()
            result = entry.result
            if result.timestamp > verdict.last_ts:
                verdict.last_ts = result.timestamp
                verdict.observe(result.success, cfg.confirm_rounds)
            fresh = now - result.timestamp <= cfg.stale_after_intervals * spec.interval
            rows[check].append(_Row(agent, entry.country, result, verdict, fresh))
        for key in [k for k in self.verdicts if k not in seen]:
            del self.verdicts[key]

        local = self._local_problems(rows, cfg.local_problem_share, cfg.local_problem_min_checks)
        views = {
            name: self._check_view(name, rows[name], local, agents, checks)
            for name in checks.checks
        }
        return Snapshot(now, views, frozenset(local))

    @staticmethod
    def _local_problems(rows: dict[str, list[_Row]], share: float, min_checks: int) -> set[str]:
        """Agents failing nearly all their checks while most others see them up."""
        peers: dict[str, tuple[int, int]] = {}  # check -> (confirmed up, confirmed total)
        for check, check_rows in rows.items():
            ups = sum(1 for r in check_rows if r.fresh and r.verdict.confirmed is True)
            total = sum(1 for r in check_rows if r.fresh and r.verdict.confirmed is not None)
            peers[check] = (ups, total)
        probed: Counter[str] = Counter()
        lonely: Counter[str] = Counter()
        for check, check_rows in rows.items():
            ups, total = peers[check]
            for r in check_rows:
                if not r.fresh or r.verdict.confirmed is None:
                    continue
                probed[r.agent] += 1
                others = total - 1
                # others that are up: the agent itself is failing, so all `ups` are others
                if r.verdict.confirmed is False and others > 0 and ups * 2 > others:
                    lonely[r.agent] += 1
        return {
            agent for agent, n in probed.items() if n >= min_checks and lonely[agent] >= share * n
        }

    @staticmethod
    def _check_view(
        name: str,
        rows: list[_Row],
        local: set[str],
        agents: Mapping[str, AgentInfo],
        checks: ChecksFile,
    ) -> CheckView:
        spec = checks.checks[name]
        cfg = checks.outage
        by_country: dict[str, list[_Row]] = {}
        for r in rows:
            by_country.setdefault(r.country, []).append(r)
        for info in agents.values():
            if name in info.assigned:
                by_country.setdefault(info.country, [])
        countries = []
        for country in sorted(by_country):
            members = by_country[country]
            counted = [r for r in members if r.fresh and r.agent not in local]
            excluded = sum(1 for r in members if r.fresh and r.agent in local)
            up = sum(1 for r in counted if r.result.success)
            failing = [r for r in counted if r.verdict.confirmed is False]
            confirmed = sum(1 for r in counted if r.verdict.confirmed is not None)
            if not confirmed:
                state = UNKNOWN
            elif len(failing) > cfg.down_share * confirmed:
                state = DOWN
            elif failing:
                state = DEGRADED
            else:
                state = UP
            reason = detail = ""
            details = Counter(failure_detail(r.result) for r in failing if not r.result.success)
            if details:
                (reason, detail), _ = min(details.items(), key=lambda kv: (-kv[1], kv[0]))
            countries.append(
                CountryView(country, len(counted), up, state, reason, detail, excluded)
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
