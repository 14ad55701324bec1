"""IDN hosts side by side with blackbox, in a namespace whose /etc/hosts resolves them.

``ip netns exec`` bind-mounts /etc/netns/NAME/hosts over /etc/hosts, so the
punycode names resolve to 127.0.0.1 inside the namespace only.

Observed with blackbox_exporter 0.23: a redirect to an IDN host is followed by
Go's transport to the punycode name (request line and Host header below must
be the same on both sides). A target that is itself an IDN host fails in
blackbox before any request: its own resolve step looks the name up
unconverted ("lookup bücher.example: no such host"). probemesh sends such
targets the way Go's net/http does (punycode host, percent-encoded path),
which is what a user of an IDN site expects; docs/probes.md lists it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from probemesh.errors import ConfigError
from probemesh.targets import parse_http_url, target_host
from tests.harness import run_in_isolated_netns

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"


def test_load_time_validation_and_probe_share_one_encoding() -> None:
    assert target_host("http", "https://bücher.example/") == "xn--bcher-kva.example"
    url = parse_http_url("http://Пример.рф:8080/päth?q=ü")
    assert (url.host, url.authority) == ("xn--e1afmkfd.xn--p1ai", "xn--e1afmkfd.xn--p1ai:8080")
    assert url.request_target == "/p%C3%A4th?q=ü"
    with pytest.raises(ConfigError, match="not a valid internationalised name"):
        target_host("http", "http://ab--é.example/")
    with pytest.raises(ConfigError, match="control character"):
        target_host("http", "http://a\x00b.example/")


@pytest.mark.root
def test_idn_hosts_match_blackbox(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace with its own hosts")
    if not os.access(BLACKBOX, os.X_OK):
        pytest.skip(f"blackbox_exporter not installed at {BLACKBOX}")
    proc = run_in_isolated_netns(
        "pmidn",
        "127.0.0.1 localhost xn--bcher-kva.example xn--e1afmkfd.xn--p1ai\n",
        "tests.agent.probes.idn_scenario",
        str(tmp_path),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for target, sides in out.items():
        assert sides["probemesh"]["success"], (target, sides)
        if target.startswith("http://127.0.0.1:"):  # an ASCII target redirected to an IDN host
            assert sides["blackbox"]["success"], (target, sides)
            assert sides["blackbox"]["sent"] == sides["probemesh"]["sent"], (target, sides)
        else:
            assert not sides["blackbox"]["sent"], (target, sides)
            assert any("no such host" in line for line in sides["blackbox"]["log"]), sides
    sent = [tuple(s) for sides in out.values() for s in sides["probemesh"]["sent"]]
    assert any(host.startswith("xn--bcher-kva.example:") for _, host in sent), sent
    assert any(host.startswith("xn--e1afmkfd.xn--p1ai:") for _, host in sent), sent
    assert any(line.startswith("GET /stra%C3%9Fe?q=1 ") for line, _ in sent), sent
