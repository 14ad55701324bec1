"""One evaluation as a JSON document: what the evaluator stores and every collector serves.

The evaluator writes its Snapshot and diagnoses after each round; the other
collectors of the mesh read them back into the same types, so the API and the
status page render the same views from them as on the evaluator. Agents the
classifier judged ``ok`` are left out (``Snapshot.agent_state`` says ``ok`` for
an agent it does not list), which keeps the document small for a large fleet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from probemesh.collector.diagnosis import Diagnosis, PathHop
from probemesh.collector.reachability import (
    HEALTHY,
    AgentHealth,
    CheckView,
    CountryView,
    Snapshot,
)
from probemesh.collector.runnable import Refusal

Diagnoses = dict[str, dict[str, Diagnosis]]


def to_doc(
    snapshot: Snapshot,
    diagnoses: Mapping[str, Mapping[str, Diagnosis]],
    refusals: Mapping[str, list[Refusal]],
) -> dict[str, Any]:
    return {
        "at": snapshot.at,
        "checks": [
            {
                "check": view.check,
                "state": view.state,
                "interval": view.interval,
                "countries": [asdict(c) for c in view.countries],
            }
            for view in snapshot.checks.values()
        ],
        "agents": [asdict(h) for h in snapshot.agents.values() if h.state != HEALTHY],
        "diagnoses": {
            check: {country: asdict(d) for country, d in countries.items()}
            for check, countries in diagnoses.items()
        },
        "refusals": {check: [asdict(r) for r in found] for check, found in refusals.items()},
    }


def from_doc(doc: Mapping[str, Any]) -> tuple[Snapshot, Diagnoses, dict[str, list[Refusal]]]:
    checks = {
        c["check"]: CheckView(
            c["check"],
            c["state"],
            tuple(CountryView(**country) for country in c["countries"]),
            c["interval"],
        )
        for c in doc["checks"]
    }
    agents = {}
    for a in doc["agents"]:
        agents[a["agent"]] = AgentHealth(**{**a, "held": tuple(a["held"])})
    diagnoses = {
        check: {
            country: Diagnosis(
                d["kind"],
                d["detail"],
                d["hop"],
                d["asn"],
                tuple(PathHop(**hop) for hop in d["path"]),
                d.get("waiting", False),
            )
            for country, d in countries.items()
        }
        for check, countries in doc["diagnoses"].items()
    }
    refusals = {check: [Refusal(**r) for r in found] for check, found in doc["refusals"].items()}
    return Snapshot(doc["at"], checks, agents), diagnoses, refusals
