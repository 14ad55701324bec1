"""The shipped Alertmanager example is valid and routes probemesh's alerts as its comments say."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness import ROOT

CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
AMTOOL = shutil.which("amtool")
pytestmark = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not installed (Debian package prometheus-alertmanager)"
)


def amtool(*args: str) -> str:
    assert AMTOOL is not None
    done = subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_example_config_is_valid() -> None:
    assert "SUCCESS" in amtool("check-config", str(CONFIG))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("alertname=ProbemeshIncident", "check=web", "scope=global", "severity=critical"),
         "oncall-pager"),
        (("alertname=ProbemeshIncident", "check=web", "scope=regional", "severity=warning"),
         "team-mail"),
        (("alertname=ProbemeshAgentLocalProblem", "agent=jp-1", "country=JP", "severity=info"),
         "fleet"),
    ],
)  # fmt: skip
def test_example_routes(labels: tuple[str, ...], receiver: str) -> None:
    assert amtool("config", "routes", "test", f"--config.file={CONFIG}", *labels) == receiver
