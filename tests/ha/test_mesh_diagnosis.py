"""The mesh's diagnosis uses every agent's evidence, wherever the agent is connected
(tests/ha/mesh_diagnosis_scenario.py), whether the failure begins while the
control's latest published success is new or long after it, and with the
collector serving the agents 400 s behind the evaluator (real libfaketime):
evidence older than 300 s is not used, so its times must be moved onto the
evaluator's clock. bench/mesh_diagnosis_soak.py repeats it at other moments."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_clock_skew import LIBFAKETIME
from tests.ha.mesh_diagnosis_scenario import run_mesh_diagnosis


@pytest.mark.parametrize("phase", [0.0, 3.0])
def test_the_evaluator_diagnoses_with_the_evidence_of_another_collectors_agents(
    tmp_path: Path, postgres_url: str, phase: float
) -> None:
    assert run_mesh_diagnosis(tmp_path, postgres_url, phase) < 40


@pytest.mark.skipif(
    not LIBFAKETIME,
    reason="Debian faketime (libfaketime) is not installed; scripts/test.sh installs it",
)
def test_evidence_from_a_collector_whose_clock_is_behind(tmp_path: Path, postgres_url: str) -> None:
    behind = ["env", f"LD_PRELOAD={LIBFAKETIME}", "FAKETIME=-400s"]
    assert run_mesh_diagnosis(tmp_path, postgres_url, 3.0, serving_clock=behind) < 40
