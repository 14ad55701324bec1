"""The takeover race in CI: one agent switching between two collectors at varied
phases, by a cut, a freeze (half-open stream) and held Acks; exact counts.
bench/lease_soak.py repeats it many times and prints the counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ha.race import MODES, RACE_ENV, run_race


@pytest.mark.parametrize("seed", [0, 1])
def test_agent_switching_collectors_counts_each_result_once(
    tmp_path: Path, database_args: list[str], monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    for key, value in RACE_ENV.items():
        monkeypatch.setenv(key, value)
    figures = run_race(tmp_path, database_args, rounds=len(MODES), seed=seed)
    print(figures)
    assert figures.counted == figures.produced > 100
    assert figures.takeovers >= len(MODES), figures
