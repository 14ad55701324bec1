"""A scripted mesh for the outage tests: one agent per country, rounds on a fake clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from probemesh.checks import ChecksFile, parse_checks
from probemesh.collector.incidents import IncidentBook, OutageMonitor
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.v1 import mesh_pb2 as pb

COUNTRIES = ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP")
INTERVAL = 10.0
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def build_checks(outage: Mapping[str, Any] | None = None) -> ChecksFile:
    doc: dict[str, Any] = {
        "modules": {"http_2xx": {"prober": "http"}, "tcp_connect": {"prober": "tcp"}},
        "checks": [
            {
                "name": "web",
                "target": "http://example.org/",
                "module": "http_2xx",
                "interval": f"{INTERVAL:g}s",
            },
            {
                "name": "tcp",
                "target": "example.org:443",
                "module": "tcp_connect",
                "interval": f"{INTERVAL:g}s",
            },
        ],
    }
    if outage is not None:
        doc["outage"] = dict(outage)
    return parse_checks(doc)


def result(check: str, ts: float, mode: str) -> pb.Result:
    """mode: "" (success), "500", "timeout", "refused"."""
    if not mode:
        samples = [pb.Sample(name="probe_http_status_code", value=200)] if check == "web" else []
        return pb.Result(
            check=check,
            target="t",
            timestamp=ts,
            success=True,
            duration_seconds=0.05,
            samples=samples,
        )
    if mode.isdigit():
        return pb.Result(
            check=check,
            target="t",
            timestamp=ts,
            success=False,
            duration_seconds=0.05,
            reason=pb.FAILURE_REASON_HTTP_STATUS,
            samples=[pb.Sample(name="probe_http_status_code", value=float(mode))],
        )
    reason = {"timeout": pb.FAILURE_REASON_TIMEOUT, "refused": pb.FAILURE_REASON_REFUSED}[mode]
    return pb.Result(
        check=check, target="t", timestamp=ts, success=False, duration_seconds=1.0, reason=reason
    )


class ScriptedMesh:
    """Feeds rounds of results into a real MeshState and evaluates after each."""

    def __init__(
        self,
        countries: tuple[str, ...] = COUNTRIES,
        outage: Mapping[str, Any] | None = None,
        book: IncidentBook | None = None,
        start: float = T0,
    ) -> None:
        self.now = start
        self.checks = build_checks(outage)
        self.state = MeshState()
        for cc in countries:
            agent_id = f"a-{cc.lower()}"
            self.state.agents[agent_id] = AgentInfo(
                agent_id,
                cc,
                connected=True,
                assigned={n: c.target for n, c in self.checks.checks.items()},
            )
        self.book = book or IncidentBook()
        self.monitor = OutageMonitor(
            self.state, lambda: self.checks, self.book, clock=lambda: self.now
        )

    def round(
        self,
        web: Mapping[str, str] | None = None,
        tcp: Mapping[str, str] | None = None,
        silent: tuple[str, ...] = (),
    ) -> None:
        """One probe round: every agent probes both checks; web/tcp map country -> failure mode."""
        self.now += INTERVAL
        for agent in self.state.agents.values():
            if agent.country in silent:
                continue
            for check, modes in (("web", web or {}), ("tcp", tcp or {})):
                self.state.apply(agent, result(check, self.now - 0.5, modes.get(agent.country, "")))
        dirty = self.monitor.evaluate()
        if self.book.db is not None and dirty:
            self.book.save([i.to_row() for i in dirty])

    def view(self, check: str = "web") -> Any:
        return self.monitor.snapshot.checks[check]

    def country_states(self, check: str = "web") -> dict[str, str]:
        return {c.country: c.state for c in self.view(check).countries}
