"""The latest evidence per check x agent, as agents report it.

Written by the gRPC service when an EvidenceReport arrives, read by the
diagnosis. Evidence from an agent whose probe was failing and from one whose
probe succeeded (the control) are kept apart, so a control's last good view
survives while the same agent later fails. Ages use the collector's receive
time: agents' clocks may be off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from probemesh.v1 import mesh_pb2 as pb

Key = tuple[str, str]  # (check, agent)


@dataclass(slots=True)
class Observed:
    """One report: what the agent saw, from which country, when it arrived."""

    evidence: pb.Evidence
    agent: str
    country: str
    received: float
    since: float
    """When the failure this evidence belongs to was first reported: refreshed
    evidence of a failure that goes on keeps it."""


class EvidenceBook:
    """Latest failing evidence, control evidence and traceroute per check x agent."""

    def __init__(self) -> None:
        self.failing: dict[Key, Observed] = {}
        self.control: dict[Key, Observed] = {}
        self.paths: dict[Key, Observed] = {}
        self.requested: dict[Key, float] = {}  # when the collector last asked
        self.recovered: dict[Key, float] = {}  # when the agent last said the check recovered
        self.reports_total = 0
        # check -> how many times its evidence changed: a diagnosis worked out
        # since the last change need not be worked out again at once
        self.changes: Counter[str] = Counter()

    def observe(
        self, check: str, agent: str, country: str, evidence: pb.Evidence, now: float
    ) -> None:
        key = (check, agent)
        since = now
        if not evidence.probe_success:
            earlier = self.failing.get(key)
            if earlier is not None and not self.failure_over(key, earlier):
                since = earlier.since
        observed = Observed(evidence, agent, country, now, since)
        (self.control if evidence.probe_success else self.failing)[key] = observed
        if evidence.HasField("path"):
            self.paths[key] = observed
        self.reports_total += 1
        self.changes[check] += 1

    def recover(self, check: str, agent: str, now: float) -> None:
        """The agent's check succeeds again: its failing evidence is about a failure that is over."""
        self.recovered[(check, agent)] = now
        self.changes[check] += 1

    def failure_over(self, key: Key, observed: Observed) -> bool:
        """Whether the agent succeeded (recovered, or reported as a control) after this evidence."""
        later = self.control.get(key)
        if later is not None and later.received > observed.received:
            return True
        return self.recovered.get(key, 0.0) > observed.received

    def forget_checks(self, keep: set[str]) -> None:
        """Drop evidence of checks that are no longer configured."""
        self._drop(lambda key: key[0] not in keep)
        for check in self.changes.keys() - keep:
            del self.changes[check]

    def forget_agent(self, agent_id: str) -> None:
        """Drop evidence of an agent gone longer than the series TTL."""
        self._drop(lambda key: key[1] == agent_id)

    def _drop(self, gone: Callable[[Key], bool]) -> None:
        for table in (self.failing, self.control, self.paths, self.requested, self.recovered):
            for key in [k for k in table if gone(k)]:
                del table[key]
                self.changes[key[0]] += 1
