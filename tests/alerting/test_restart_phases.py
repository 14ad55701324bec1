"""An Alertmanager restart at any phase of an incident loses nothing and repeats nothing:
one firing and one resolved notification each time (see restart_scenario.py).
bench/alertmanager_restart.py repeats this with random offsets and prints the counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.alerting import restart_scenario
from tests.alerting.receivers import ALERTMANAGER

pytestmark = pytest.mark.skipif(
    ALERTMANAGER is None,
    reason="prometheus-alertmanager not installed (Debian package prometheus-alertmanager; "
    "scripts/test.sh installs it)",
)


@pytest.mark.parametrize(("phase", "offset"), [("before", 0.1), ("down", 0.25), ("after", 0.4)])
async def test_restart_phase(tmp_path: Path, phase: str, offset: float) -> None:
    outcome = await restart_scenario.run(tmp_path, phase, offset)
    assert (outcome.firing, outcome.resolved) == (1, 1), outcome
