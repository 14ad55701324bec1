"""deploy/prometheus/prometheus.yml's `collector` relabelling, proven by a real scrape.

Host names keep their first label, IP addresses stay whole (not "127"), IPv6
loses its brackets. The scrape runs in a fresh network namespace with only a
loopback interface, whose hosts file maps the example names to 127.0.0.1: no
packet can leave the machine, and the shipped targets work as pasted.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.harness import run_in_isolated_netns
from tests.prometheus.promserver import MISSING_REASON, PROMETHEUS

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING_REASON)

EXPECTED = {
    "collector-eu-1.example.net:7444": "collector-eu-1",
    "collector-us-1.example.net:7444": "collector-us-1",
    "127.0.0.1:7444": "127.0.0.1",
    "[::1]:7444": "::1",
}


@pytest.mark.root
def test_collector_label_for_names_and_addresses(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace")
    proc = run_in_isolated_netns(
        "pmrl",
        "127.0.0.1 localhost collector-eu-1.example.net collector-us-1.example.net\n"
        "::1 localhost\n",
        "tests.prometheus.relabel_scenario",
        str(tmp_path),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    scraped = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {t: s["collector"] for t, s in scraped.items()} == EXPECTED
    assert all(s["up"] == "1" for s in scraped.values()), scraped
