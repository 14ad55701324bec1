"""probemesh demo: starts, shows the table and URLs, stops by itself; the target's
outage schedule fails six countries then recovers them one by one."""

from __future__ import annotations

import subprocess
import time

from probemesh.demo import DemoTarget
from tests.harness import free_port, probemesh_cmd


def test_demo_runs_unattended_and_stops_cleanly() -> None:
    http = free_port()
    result = subprocess.run(
        probemesh_cmd("demo", "--duration", "6", "--no-table",
                      "--http-listen", f"127.0.0.1:{http}", "--grpc-listen", f"127.0.0.1:{free_port()}"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{http}/metrics" in result.stdout
    assert "status" in result.stdout and "demo stopped" in result.stdout
    for country in ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP"):
        assert f"│ {country}" in result.stdout


def test_demo_target_fails_six_countries_then_recovers_progressively() -> None:
    target = DemoTarget()

    def failing_at(seconds: float) -> dict[str, str]:
        target.started = time.monotonic() - seconds
        return {
            cc: mode
            for cc in ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP")
            if (mode := target.failure(cc))
        }

    assert failing_at(10) == {}
    assert failing_at(35) == {
        "BR": "500",
        "PH": "500",
        "UG": "hang",
        "DE": "500",
        "ZA": "hang",
        "LT": "hang",
    }
    assert set(failing_at(65)) == {"PH", "UG", "DE", "ZA", "LT"}  # BR back first
    assert set(failing_at(80)) == {"DE", "ZA", "LT"}
    assert failing_at(110) == {}
