"""Exact interleavings for the verdict tests: agents whose checks run at chosen phases.

Time is counted in ticks of a fake clock. Every check runs every ``interval``
ticks at its agent's phase for it; a probe's outcome is decided when it starts
(is the path cut?), and its result reaches the collector ``duration`` ticks
later (``timeout`` ticks for a cut path), carrying its start time, as real
agents report. After the arrivals of each tick, the monitor evaluates once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from probemesh.checks import ChecksFile, parse_checks
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.v1 import mesh_pb2 as pb

T0 = 1_800_000_000.0
TICK = 1.0  # seconds per tick


def phased_checks(names: Sequence[str], interval: int) -> ChecksFile:
    return parse_checks(
        {
            "modules": {"http_2xx": {"prober": "http"}},
            "checks": [
                {
                    "name": name,
                    "target": f"http://target.example/{name}",
                    "module": "http_2xx",
                    "interval": f"{interval * TICK:g}s",
                }
                for name in names
            ],
        }
    )


@dataclass
class PhasedMesh:
    """One agent per country; ``cut(agent, check, tick)`` says whether that probe fails."""

    countries: Sequence[str]
    checks: Sequence[str]
    interval: int
    phases: dict[tuple[str, str], int]  # (agent, check) -> first probe tick
    cut: Callable[[str, str, int], bool]
    timeout: int = 2
    duration: int = 0
    state: MeshState = field(default_factory=MeshState)
    opened: list[tuple[int, Any]] = field(default_factory=list)  # (tick, incident)
    history: list[dict[str, str]] = field(default_factory=list)  # agent states per tick

    def __post_init__(self) -> None:
        self.file = phased_checks(self.checks, self.interval)
        for cc in self.countries:
            agent = f"a-{cc.lower()}"
            self.state.agents[agent] = AgentInfo(
                agent,
                cc,
                connected=True,
                assigned={n: s.target for n, s in self.file.checks.items()},
            )
        self.tick = 0
        self.book = IncidentBook()
        self.monitor = OutageMonitor(
            self.state, lambda: self.file, self.book, clock=lambda: T0 + self.tick * TICK
        )
        self._arrivals: dict[int, list[tuple[str, pb.Result]]] = {}

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step()

    def step(self) -> None:
        t = self.tick
        for agent in self.state.agents:
            for check in self.checks:
                phase = self.phases[(agent, check)]
                if t >= phase and (t - phase) % self.interval == 0:
                    failed = self.cut(agent, check, t)
                    res = pb.Result(
                        check=check,
                        target="t",
                        timestamp=T0 + t * TICK,
                        success=not failed,
                        duration_seconds=(self.timeout if failed else self.duration) * TICK,
                        reason=pb.FAILURE_REASON_TIMEOUT if failed else 0,
                    )
                    at = t + (self.timeout if failed else self.duration)
                    self._arrivals.setdefault(at, []).append((agent, res))
        for agent, res in self._arrivals.pop(t, []):
            self.state.apply(self.state.agents[agent], res)
        before = {i.id for i in self.book.incidents()}
        self.monitor.evaluate()
        self.opened += [(t, i) for i in self.book.incidents() if i.id not in before]
        snap = self.monitor.snapshot
        self.history.append({a: snap.agent_state(a) for a in self.state.agents})
        self.tick += 1
