"""The latest evidence per check x agent, as agents report it.

Written by the gRPC service when an EvidenceReport arrives, read by the
diagnosis. Evidence from an agent whose probe was failing and from one whose
probe succeeded (the control) are kept apart, so a control's last good view
survives while the same agent later fails. Ages use the collector's receive
time: agents' clocks may be off.

In a mesh, each collector also keeps what changed since its last publication
(``take_outbox``) for the mesh's database, and the evaluator puts what other
collectors' agents reported into its own book (``put``), on its own clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probemesh.v1 import mesh_pb2 as pb

Key = tuple[str, str]  # (check, agent)
SLOTS = ("failing", "control", "path", "recovered")


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


# What one slot of a check x agent became: evidence, a recovery's time, or None (forgotten).
Change = Observed | float | None
Outbox = dict[tuple[str, str, str], Change]  # (check, agent, slot) -> its latest change


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
        self.outbox: Outbox | None = None  # in a mesh: what changed since the last publication
        # evaluator: (check, agent, slot) -> the collector that published the slot's content
        self.remote: dict[tuple[str, str, str], str] = {}

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
        self.put(check, agent, "control" if evidence.probe_success else "failing", observed)
        if evidence.HasField("path"):
            self.put(check, agent, "path", observed)
        self.reports_total += 1

    def recover(self, check: str, agent: str, now: float) -> None:
        """The agent's check succeeds again: its failing evidence is about a failure that is over."""
        self.put(check, agent, "recovered", now)

    def put(self, check: str, agent: str, slot: str, change: Change, remote: str = "") -> None:
        """Set one slot; remote: the collector that published it, for an agent it serves
        (not published again from here)."""
        key = (check, agent)
        table = self._slot(slot)
        if change is None:
            table.pop(key, None)
        else:
            table[key] = change
        self.changes[check] += 1
        if remote and change is not None:
            self.remote[(check, agent, slot)] = remote
        else:
            self.remote.pop((check, agent, slot), None)
            if self.outbox is not None and not remote:
                self.outbox[(check, agent, slot)] = change

    def newer(self, check: str, agent: str, slot: str, change: Change) -> bool:
        """Whether change is content newer than the slot's (a removal never is)."""
        if change is None:
            return False
        have = self._slot(slot).get((check, agent))
        return have is None or _time(change) > _time(have)

    def forget_remote(self, collector: str | None = None) -> None:
        """Drop what one collector (None: any other collector) published, and the times
        of requests (they go to agents wherever they are now)."""
        for check, agent, slot in [
            k for k, c in self.remote.items() if collector is None or c == collector
        ]:
            self._slot(slot).pop((check, agent), None)
            del self.remote[(check, agent, slot)]
            self.changes[check] += 1
        if collector is None:
            self.requested.clear()

    def _slot(self, slot: str) -> dict[Key, Any]:
        tables: dict[str, dict[Key, Any]] = {
            "failing": self.failing,
            "control": self.control,
            "path": self.paths,
            "recovered": self.recovered,
        }
        return tables[slot]

    def share(self) -> None:
        """Keep the changes for publication from now on (a collector of a mesh)."""
        self.outbox = {}

    def take_outbox(self) -> Outbox:
        """The changes since the last call, for publication."""
        taken = self.outbox
        if taken is None:
            return {}
        self.outbox = {}
        return taken

    def retry(self, outbox: Outbox) -> None:
        """A publication that failed: its changes go out with the next one, unless newer."""
        if self.outbox is not None:
            self.outbox = {**outbox, **self.outbox}

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
        """Drop evidence of an agent gone from here longer than the series TTL (not what
        another collector, serving it now, published of it)."""
        self._drop(lambda key: key[1] == agent_id, local_only=True)

    def _drop(self, gone: Callable[[Key], bool], local_only: bool = False) -> None:
        for key in [k for k in self.requested if gone(k)]:
            del self.requested[key]
        for slot in SLOTS:
            for key in [k for k in self._slot(slot) if gone(k)]:
                if not (local_only and (*key, slot) in self.remote):
                    self.put(*key, slot, None)


def _time(content: Observed | float) -> float:
    return content.received if isinstance(content, Observed) else content
