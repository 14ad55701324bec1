"""Agents whose clocks are wrong, made so by the real libfaketime (Debian faketime).

One agent runs 5 s ahead, one 5 s behind, one on time. The collector must
estimate each offset from the echoed heartbeats, export and show it, flag the
two skewed agents, and put their results on its own clock: none in the future,
none treated as stale, every one counted.
"""

from __future__ import annotations

import glob
import json
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Mesh, http_get, total, wait_for

# The faketime command forks and does not pass SIGTERM on, so the agent is run
# with the same library preloaded directly (as faketime itself does).
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), "")
pytestmark = pytest.mark.skipif(
    not LIBFAKETIME,
    reason="Debian faketime (libfaketime) is not installed; scripts/test.sh installs it",
)

AGENTS = {"ahead": ("DE", "+5s"), "behind": ("BR", "-5s"), "ontime": ("JP", "")}


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts connections: the checks' target."""
    with socket.create_server(("127.0.0.1", 0), backlog=256) as sock:
        yield sock.getsockname()[1]


def _checks(port: int) -> str:
    return (
        "modules:\n  tcp_connect: {prober: tcp, timeout: 1s}\nchecks:\n"
        f"  - {{name: port, target: '127.0.0.1:{port}', module: tcp_connect, interval: 1s}}\n"
    )


@pytest.fixture
def mesh(tmp_path: Path, listener: int) -> Iterator[Mesh]:
    mesh = Mesh(tmp_path, _checks(listener))
    mesh.start_collector()
    for agent_id, (country, shift) in AGENTS.items():
        fake = ["env", f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME={shift}"] if shift else None
        mesh.start_agent(agent_id, country, prefix=fake)
    yield mesh
    mesh.stop()


def _agents(mesh: Mesh) -> dict[str, dict[str, Any]]:
    return {a["agent"]: a for a in json.loads(http_get(mesh.api("/api/v1/agents")))["agents"]}


def _estimated(mesh: Mesh) -> dict[str, dict[str, Any]] | None:
    agents = _agents(mesh)
    if all(agents.get(a, {}).get("clock_offset_seconds") is not None for a in AGENTS):
        return agents
    return None


def test_offsets_are_estimated_flagged_and_results_corrected(mesh: Mesh) -> None:
    agents = wait_for(lambda: _estimated(mesh), 30, "clock offsets of all agents")
    assert isinstance(agents, dict)
    assert agents["ahead"]["clock_offset_seconds"] == pytest.approx(5.0, abs=0.5)
    assert agents["behind"]["clock_offset_seconds"] == pytest.approx(-5.0, abs=0.5)
    assert agents["ontime"]["clock_offset_seconds"] == pytest.approx(0.0, abs=0.5)
    assert [agents[a]["clock_skewed"] for a in AGENTS] == [True, True, False]
    assert all("clock_echo" in agents[a]["features"] for a in AGENTS)
    metrics = mesh.metrics()
    for agent_id, expected in (("ahead", 5.0), ("behind", -5.0)):
        offset = total(metrics, "probemesh_agent_clock_offset_seconds", agent=agent_id)
        assert offset == pytest.approx(expected, abs=0.5)
        assert total(metrics, "probemesh_agent_clock_skewed", agent=agent_id) == 1
    assert total(metrics, "probemesh_agent_clock_skewed", agent="ontime") == 0

    # The agent 5 s behind: uncorrected, its results would be older than two
    # intervals and ignored as stale; corrected, its country is up.
    wait_for(
        lambda: _country_state(http_get(mesh.api("/api/v1/reachability")), "BR") == "up",
        20,
        "BR (5 s behind) up, its results fresh",
    )
    # The agent 5 s ahead: its newest result is not in the collector's future.
    for _ in range(5):
        before = time.time()
        last = _agents(mesh)["ahead"]["last_result"]
        assert last is not None
        assert datetime.fromisoformat(last).timestamp() <= before
        time.sleep(0.5)

    # Exact accounting once the agents have drained: every result of a skewed
    # agent was moved onto the collector's clock, none was refused.
    for proc in mesh.agents.values():
        assert proc.stop() == 0
    metrics = mesh.metrics()
    for agent_id in ("ahead", "behind"):
        results = total(metrics, "probemesh_probe_results_total", agent=agent_id)
        adjusted = total(metrics, "probemesh_agent_clock_adjusted_results_total", agent=agent_id)
        assert results > 0 and adjusted == results
    assert total(metrics, "probemesh_agent_clock_adjusted_results_total", agent="ontime") == 0
    assert total(metrics, "probemesh_ingest_rejected_total", reason="invalid_timestamp") == 0


def _country_state(body: str, country: str) -> str:
    for check in json.loads(body)["checks"]:
        for c in check["countries"]:
            if c["country"] == country:
                return str(c["state"])
    return ""


def test_backlog_produced_offline_is_corrected_before_it_is_applied(
    tmp_path: Path, listener: int
) -> None:
    """Another phase: the skewed agent's results wait on its disk while the collector is
    down, and a fresh collector process (with no estimate yet) receives them as a
    backlog. The Welcome's clock probe is answered before the first batch, so every
    one of them is applied on the collector's clock."""
    mesh = Mesh(tmp_path, _checks(listener))
    fake = ["env", f"LD_PRELOAD={LIBFAKETIME}", "FAKETIME=-5s"]
    mesh.start_collector()
    try:
        mesh.start_agent("behind", "BR", prefix=fake)
        wait_for(lambda: _estimated_one(mesh, "behind"), 30, "offset of the agent")
        assert mesh.collector is not None and mesh.collector.stop() == 0
        time.sleep(2.0)  # the agent keeps probing and queues on disk
        assert mesh.agents["behind"].stop() == 0
        mesh.start_collector()
        before = total(mesh.metrics(), "probemesh_probe_results_total", agent="behind")
        agent = mesh.start_agent("behind", "BR", prefix=fake)
        wait_for(lambda: _estimated_one(mesh, "behind"), 30, "offset after the restart")
        time.sleep(1.0)
        assert agent.stop() == 0
        # The log holds both runs; the counters are lifetime totals: the last line counts all.
        stops = re.findall(r"agent stopped: produced=(\d+) acked=(\d+) queued=(\d+)", agent.log())
        produced, acked, queued = map(int, stops[-1])
        assert len(stops) == 2 and (acked, queued) == (produced, 0)
        metrics = mesh.metrics()
        after = total(metrics, "probemesh_probe_results_total", agent="behind")
        assert after == produced  # exact accounting across both collector processes
        adjusted = total(metrics, "probemesh_agent_clock_adjusted_results_total", agent="behind")
        assert after - before > 0 and adjusted == after - before
        assert total(metrics, "probemesh_ingest_rejected_total", reason="invalid_timestamp") == 0
    finally:
        mesh.stop()


def _estimated_one(mesh: Mesh, agent_id: str) -> bool:
    entry = _agents(mesh).get(agent_id, {})
    return bool(entry.get("connected")) and entry.get("clock_offset_seconds") is not None
