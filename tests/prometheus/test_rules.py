"""The shipped Prometheus config and rules: promtool checks and rule unit tests.

The rule unit tests (deploy/prometheus/tests/probemesh-rules.test.yml, generated
by rules_scenario.py) replay the seed scenario across two collectors, a global
outage, an agent with a local problem (and its control without the flag), and
the fleet/collector alerts.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus import rules_scenario
from tests.prometheus.promserver import PROMTOOL, ROOT, RULE_FILES

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not found (apt-get install prometheus)"
)

DEPLOY = ROOT / "deploy" / "prometheus"
TEST_FILE = DEPLOY / "tests" / "probemesh-rules.test.yml"
REQUIRED_ALERTS = {
    "ProbeCheckDownInCountry",
    "ProbeCheckRegionalOutage",
    "ProbeCheckGlobalOutage",
    "ProbeAgentDisconnected",
    "ProbeAgentLocalProblem",
    "ProbeCertificateExpiringSoon",
    "ProbemeshCollectorRejecting",
    "ProbeCheckNotRunnable",
}


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "rules" / "probemesh-alerts.rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_example_config_is_valid() -> None:
    done = promtool("check", "config", DEPLOY / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rule files found" in done.stdout


def test_example_config_of_remote_writing_collectors_is_valid() -> None:
    done = promtool("check", "config", DEPLOY / "prometheus-remote-write.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", *RULE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(RULE_FILES) == 2


def test_alerts_are_documented_for_on_call() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), rule["alert"]
        assert len(annotations.get("description", "")) > 80, rule["alert"]
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, rule["alert"]
        assert "for" in rule, f"{rule['alert']} would fire on a single evaluation"


def test_check_alerts_aggregate_across_collectors() -> None:
    """Check verdicts never group by instance: several collectors must add up."""
    recording = (DEPLOY / "rules" / "probemesh-recording.rules.yml").read_text()
    doc = yaml.safe_load(recording)
    for group in doc["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            if "probemesh_probe_results_total" in expr:
                assert "sum by (check" in expr, rule["record"]
                assert "instance" not in expr, rule["record"]


def test_unit_test_file_is_fresh() -> None:
    assert TEST_FILE.read_text() == rules_scenario.generate(), (
        "deploy/prometheus/tests/probemesh-rules.test.yml is stale: "
        "run python tests/prometheus/rules_scenario.py"
    )


def test_every_alert_is_unit_tested() -> None:
    doc = yaml.safe_load(TEST_FILE.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == {r["alert"] for r in alert_rules()}


def test_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", TEST_FILE.name, cwd=TEST_FILE.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rule_unit_tests_catch_a_missing_local_problem_exclusion(tmp_path: Path) -> None:
    """Mutation check: without the local-problem exclusion the unit tests must fail."""
    shutil.copytree(DEPLOY / "rules", tmp_path / "rules")
    shutil.copytree(DEPLOY / "tests", tmp_path / "tests")
    recording = tmp_path / "rules" / "probemesh-recording.rules.yml"
    text = recording.read_text()
    exclusion = (
        "          unless on (agent)\n"
        "            (max by (agent) (probemesh_agent_local_problem) == 1)\n"
    )
    assert exclusion in text
    recording.write_text(text.replace(exclusion, ""))
    done = promtool("test", "rules", TEST_FILE.name, cwd=tmp_path / "tests")
    assert done.returncode != 0
    report = done.stdout + done.stderr
    assert "local problem: jp-1 fails everything," in report
    assert 'country="JP"' in report
