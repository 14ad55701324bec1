"""The mesh diagnosis scenario: the evaluator diagnoses with the evidence of another
collector's agents.

Two real collectors on a real PostgreSQL. The evaluator serves no agent at
all: the failing agent (BR, answered HTTP 500 by the target) and the control
(DE) are both connected to the other collector. Their evidence reaches the
evaluator through the database, and its request for the control's evidence
reaches the control through the collector serving it, so BR is diagnosed
``http_diff`` (blocking), as one collector serving both agents would. Used by
tests/ha/test_mesh_diagnosis.py and bench/mesh_diagnosis_soak.py, which also
runs it with the agents on the evaluator, for the time the relay adds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.ha.evaluator_scenario import (
    AGENTS,
    Collector,
    CountryTarget,
    log_tails,
    start_agent,
    write_checks,
)
from tests.harness import Proc, http_get, stop_all, wait_for

FAILING, CONTROL = "br-1", "de-1"


def _countries(c: Collector) -> dict[str, dict[str, Any]]:
    [web] = c.get("/api/v1/reachability")["checks"]
    return {x["country"]: x for x in web["countries"]}


def run_mesh_diagnosis(
    tmp_path: Path,
    postgres_url: str,
    phase: float,
    on_evaluator: bool = False,
    serving_clock: list[str] | None = None,
) -> float:
    """Run the scenario (assertions fail it); BR starts failing phase seconds after both
    countries are up. Returns the seconds from then to the evaluator's diagnosis.
    on_evaluator: the agents connect to the evaluator instead; serving_clock: a prefix
    that sets the other collector's clock off (libfaketime)."""
    target = CountryTarget()
    checks = write_checks(tmp_path, target)
    evaluator, serving = Collector(tmp_path, "c0"), Collector(tmp_path, "c1")
    agents: list[Proc] = []
    try:
        evaluator.start(checks, postgres_url)
        wait_for(lambda: evaluator.evaluator() == 1.0, 30, "c0 to be the evaluator")
        serving.start(checks, postgres_url, prefix=serving_clock)
        wait_for(lambda: http_get(f"http://127.0.0.1:{serving.http_port}/readyz"), 30, "c1")
        for agent in (FAILING, CONTROL):
            home = evaluator if on_evaluator else serving
            agents.append(start_agent(tmp_path, postgres_url, agent, [home]))
        wait_for(
            lambda: (
                {c: x["state"] for c, x in _countries(evaluator).items()}
                == {"BR": "up", "DE": "up"}
            ),
            60,
            "both countries up on the evaluator",
        )
        assert evaluator.evaluator() == 1.0 and serving.evaluator() == 0.0

        time.sleep(phase)
        target.failing = {AGENTS[FAILING][1]}
        failed_at = time.monotonic()

        def diagnosed() -> dict[str, Any] | None:
            br = _countries(evaluator)["BR"]
            diagnosis = br.get("diagnosis") or {}
            return br if br["state"] == "down" and diagnosis.get("kind") == "http_diff" else None

        br = wait_for(diagnosed, 40, "BR diagnosed http_diff by the evaluator")
        took = time.monotonic() - failed_at
        assert isinstance(br, dict) and "500" in br["diagnosis"]["detail"], br
        wait_for(
            lambda: (_countries(serving)["BR"].get("diagnosis") or {}).get("kind") == "http_diff",
            10,
            "the same diagnosis served by the other collector",
        )
        [incident] = evaluator.get("/api/v1/incidents")["incidents"]
        assert incident["cause"] == "blocking", incident
        return took
    except AssertionError as exc:
        logs = [("c0", evaluator.proc), ("c1", serving.proc)]
        raise log_tails(exc, [*logs, *zip((FAILING, CONTROL), agents, strict=False)]) from None
    finally:
        stop_all(agents)
        stop_all(c.proc for c in (evaluator, serving) if c.proc)
        target.close()
