"""One verdict for the mesh: the evaluator is SIGKILLed during a real outage
(tests/ha/evaluator_scenario.py); bench/evaluator_failover_soak.py repeats it at
other moments of the outage."""

from __future__ import annotations

from pathlib import Path

from tests.ha.evaluator_scenario import TAKEOVER_LIMIT, run_failover


def test_an_incident_keeps_its_id_across_an_evaluator_failover(
    tmp_path: Path, postgres_url: str
) -> None:
    assert run_failover(tmp_path, postgres_url) < TAKEOVER_LIMIT
