"""HTTP routes of the outage view: /api/v1/reachability, /api/v1/incidents, the status page.

- ``GET /api/v1/reachability``: per check, its state and every country's
  agents, up, ratio, state and diagnosis (null while up; its ``path`` lists
  the hops of the last traceroute; ``reason``/``detail``, ``excluded`` and
  ``suspects`` are additive extras), and ``not_runnable``: the agents that refuse the check by
  their own policy, each with its rule and the line "not runnable on agent X:
  <rule> (...)". Those agents count in no country's state.
- ``GET /api/v1/incidents[?active=true]``: newest first.
- ``GET /api/v1/status[?after=N]``: the three views above plus the agents in
  one document. With ``after``, it waits (up to 5 s) for an evaluation newer
  than N: the status page long-polls it and so shows each evaluation at once.
- ``GET /`` and ``/static/*``: the status page, served from the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from probemesh.collector.diagnosis import Diagnosis
from probemesh.collector.incidents import OutageMonitor
from probemesh.collector.reachability import LOCAL_PROBLEM, SUSPECT, Snapshot
from probemesh.collector.runnable import Refusal
from probemesh.collector.verdicts import agent_doc
from probemesh.timefmt import rfc3339

if TYPE_CHECKING:
    from probemesh.collector.state import MeshState

STATIC_DIR = Path(__file__).parent / "static"
_NO_CACHE = {"Cache-Control": "no-store"}
LONG_POLL_SECONDS = 5.0


def reachability_json(
    snapshot: Snapshot,
    diagnoses: Mapping[str, Mapping[str, Diagnosis]] | None = None,
    refusals: dict[str, list[Refusal]] | None = None,
) -> dict[str, Any]:
    """The reachability document; each country carries its diagnosis (null while up),
    each check the agents that refuse it by policy."""
    refusals = refusals or {}
    checks = []
    diagnoses = diagnoses or {}
    for name, view in sorted(snapshot.checks.items()):
        diagnosed = diagnoses.get(name, {})
        checks.append(
            {
                "check": name,
                "state": view.state,
                "not_runnable": [r.to_json() for r in refusals.get(name, ())],
                "countries": [
                    {
                        "country": c.country,
                        "agents": c.agents,
                        "up": c.up,
                        "ratio": None if c.ratio is None else round(c.ratio, 4),
                        "state": c.state,
                        "reason": c.reason or None,
                        "detail": c.detail or None,
                        "excluded": c.excluded,
                        "suspects": c.suspects,
                        "diagnosis": diagnosed[c.country].to_json(with_path=True)
                        if c.country in diagnosed
                        else None,
                    }
                    for c in view.countries
                ],
            }
        )
    return {"generated_at": rfc3339(snapshot.at), "checks": checks}


def agents_json(
    state: MeshState, snapshot: Snapshot, fleet: Mapping[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every known agent with the classifier's verdict on it (``suspect``: not settled yet).

    fleet: the agents every collector of a mesh published (shared.py), served
    instead of this collector's own so that every collector answers the same.
    """
    docs = fleet if fleet is not None else {a.agent_id: agent_doc(a) for a in state.agents.values()}
    return [
        {
            **doc,
            "local_problem": snapshot.agent_state(agent) == LOCAL_PROBLEM,
            "suspect": snapshot.agent_state(agent) == SUSPECT,
        }
        for agent, doc in sorted(docs.items())
    ]


def add_outage_routes(http: web.Application, monitor: OutageMonitor, state: MeshState) -> None:
    """Register the outage API and the status page on the collector's HTTP app."""

    async def reachability(_request: web.Request) -> web.Response:
        return web.json_response(
            reachability_json(monitor.snapshot, monitor.diagnoses, monitor.refusals),
            headers=_NO_CACHE,
        )

    def _incidents(request: web.Request) -> list[dict[str, Any]]:
        active = request.query.get("active", "").lower() in ("1", "true", "yes")
        return [i.to_json() for i in monitor.book.incidents(active_only=active)]

    async def incidents(request: web.Request) -> web.Response:
        active = request.query.get("active", "")
        if active.lower() not in ("", "1", "0", "true", "false", "yes", "no"):
            return web.json_response({"error": "active must be true or false"}, status=400)
        return web.json_response({"incidents": _incidents(request)}, headers=_NO_CACHE)

    async def status(request: web.Request) -> web.Response:
        after = request.query.get("after", "")
        if after:
            if not (after.isascii() and after.isdigit() and len(after) < 19):
                return web.json_response({"error": "after must be an integer"}, status=400)
            await monitor.wait_after(int(after), LONG_POLL_SECONDS)
        body = reachability_json(monitor.snapshot, monitor.diagnoses, monitor.refusals)
        body["evaluation"] = monitor.evaluations
        active = monitor.book.incidents(active_only=True)
        recent = [i for i in monitor.book.incidents() if not i.active][:10]
        body["incidents"] = [i.to_json() for i in active + recent]
        body["agents"] = agents_json(state, monitor.snapshot, monitor.fleet)
        return web.json_response(body, headers=_NO_CACHE)

    async def index(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    http.router.add_get("/api/v1/reachability", reachability)
    http.router.add_get("/api/v1/incidents", incidents)
    http.router.add_get("/api/v1/status", status)
    http.router.add_get("/", index)
    http.router.add_static("/static/", STATIC_DIR, append_version=False)
