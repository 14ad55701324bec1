"""The agent refuses metadata, loopback and private targets before connecting.

In-process tests spy on every socket connect to prove the refusal happens
first; the end-to-end test runs a collector and an agent in a network
namespace with only loopback (so no packet could leave even if the policy
broke), with a hosts file that points a name at 169.254.169.254.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.runner import prepare, run_probe
from probemesh.agent.safety import AddressPolicy
from probemesh.v1 import mesh_pb2 as pb
from tests.harness import run_in_isolated_netns


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record (and block) every connect attempt made by the code under test."""
    attempts: list[Any] = []

    def spy(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise AssertionError(f"connect to {address} attempted")

    monkeypatch.setattr(socket.socket, "connect", spy)
    monkeypatch.setattr(socket.socket, "connect_ex", spy)
    return attempts


def _check(name: str, target: str, prober: str, interval: float = 30.0) -> pb.Check:
    settings = "{}"
    return pb.Check(name=name, target=target, prober=prober, interval_seconds=interval,
                    timeout_seconds=2, settings_json=settings)  # fmt: skip


def _run(check: pb.Check, allow_private: bool = False, min_interval: float = 5.0) -> pb.Result:
    env = ProbeEnv("", AddressPolicy(allow_private))
    return asyncio.run(run_probe(prepare(check, min_interval), env))


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
    ],
)
def test_metadata_is_refused_even_when_private_is_allowed(
    target: str, no_connect: list[Any]
) -> None:
    result = _run(_check("meta", target, "http"), allow_private=True)
    assert not result.success and result.reason == pb.FAILURE_REASON_POLICY
    assert result.message.startswith("blocked_address: ") and "cloud-metadata" in result.message
    assert no_connect == []


@pytest.mark.parametrize(
    "target", ["127.0.0.1:1", "[::1]:1", "10.0.0.1:80", "192.168.1.1:80", "100.64.0.1:80"]
)
def test_loopback_and_private_refused_unless_allowed(target: str, no_connect: list[Any]) -> None:
    result = _run(_check("priv", target, "tcp"))
    assert result.reason == pb.FAILURE_REASON_POLICY
    assert (
        result.message.startswith("private_target: ")
        and "--allow-private-targets" in result.message
    )
    assert no_connect == []


def test_loopback_allowed_with_flag() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = _run(_check("loop", f"127.0.0.1:{port}", "tcp"), allow_private=True)
    assert result.success, result.message


def test_interval_floor_refused_by_policy(no_connect: list[Any]) -> None:
    result = _run(
        _check("fast", "127.0.0.1:1", "tcp", interval=1.0), allow_private=True, min_interval=5.0
    )
    assert result.reason == pb.FAILURE_REASON_POLICY
    assert (
        result.message.startswith("interval_floor: ")
        and "below this agent's floor" in result.message
    )
    assert no_connect == []


@pytest.mark.root
def test_end_to_end_in_isolated_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 to create a network namespace")
    proc = run_in_isolated_netns(
        "pmsec",
        "127.0.0.1 localhost loop.pmtest\n::1 localhost\n169.254.169.254 metadata.pmtest\n",
        "tests.security.ssrf_scenario",
        str(tmp_path),
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rules"] == EXPECTED_RULES, out["agent_log"][-2000:]
    assert out["accepted"] == 0, "the agent connected to a loopback target it must refuse"
    # A refusal is a configuration problem: no failure, no probe_success, no
    # verdict, no incident, and a message naming the agent and the rule.
    assert out["failures"] == 0 and out["results"] == 0
    # ...yet every result the agent produced is accounted for, as refused.
    assert out["refused"] == out["produced"] > 0, out
    assert out["probe_success"] == []
    assert out["incidents"] == []
    assert set(out["states"].values()) == {"unknown"}
    for check, rule in EXPECTED_RULES.items():
        (message,) = out["messages"][check]
        assert message.startswith(f"not runnable on agent ssrf1: {rule} ("), message
        assert f"check {check} cannot run on agent ssrf1 (DE): {rule}: " in out["collector_log"]
    assert "check meta-ip cannot run on any agent: blocked_address: " in out["collector_log"]
    assert "below this agent's floor" in out["agent_log"]


EXPECTED_RULES = {
    "meta-ip": "blocked_address",
    "meta-mapped": "blocked_address",
    "meta-name": "blocked_address",
    "loop-ip": "private_target",
    "loop-name": "private_target",
    "private": "private_target",
    "too-fast": "interval_floor",
}
