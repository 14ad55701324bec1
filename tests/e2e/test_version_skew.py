"""Version skew: an agent one release older than the collector, and one newer.

The older release is built at test time from a commit of this repository: a
git worktree checked out at OLD_COMMIT, given the version its pyproject.toml
declares, and run with the same interpreter and dependencies. Each pairing runs
end to end and is accounted for exactly: every result the agent produced is
acked, and counted once by the collector.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from probemesh import __version__
from tests.durability.common import FAST_LINK_ENV
from tests.harness import ROOT, Mesh, free_port, http_get, probemesh_cmd, total, wait_for

# Release 0.1.0, the last commit before the wire gained protocol features and
# clock probes ("One free_port: the parity test, ...").
OLD_COMMIT = "0b01e8641696adb26f276db9e9c66ab493d3f5f2"


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], str]]:
    """(environment that runs the old release, its version)."""
    tree = tmp_path_factory.mktemp("old-release") / "tree"
    added = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), OLD_COMMIT],
        capture_output=True, text=True,
    )  # fmt: skip
    if added.returncode != 0:
        pytest.skip(f"cannot check out {OLD_COMMIT[:12]} (not a full git clone?): {added.stderr}")
    try:
        version = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"]
        # What an install provides: the package on the path and its metadata, so
        # the old code reports its own version in Hello.
        info = tree / f"probemesh-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: probemesh\nVersion: {version}\n"
        )
        # PYTHONSAFEPATH: "-m probemesh" must not import the current tree from the cwd.
        yield {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}, version
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False
        )


def _checks(port: int) -> str:
    return (
        "modules:\n  tcp_connect: {prober: tcp, timeout: 1s}\nchecks:\n"
        f"  - {{name: port, target: '127.0.0.1:{port}', module: tcp_connect, interval: 200ms}}\n"
        f"  - {{name: closed, target: '127.0.0.1:{free_port()}', module: tcp_connect, interval: 200ms}}\n"
    )


@pytest.fixture
def target() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0), backlog=256) as sock:
        yield sock.getsockname()[1]


def _agent_entry(mesh: Mesh, agent_id: str) -> dict[str, object] | None:
    agents = json.loads(http_get(mesh.api("/api/v1/agents")))["agents"]
    return next((a for a in agents if a["agent"] == agent_id and a["connected"]), None)


def _run_and_account(mesh: Mesh, agent_id: str, version: str) -> dict[str, object]:
    """Let the agent probe, stop it (it drains), and check every result is counted once."""
    entry = wait_for(lambda: _agent_entry(mesh, agent_id), 30, f"{agent_id} connected")
    assert isinstance(entry, dict) and entry["version"] == version
    wait_for(
        lambda: total(mesh.metrics(), "probemesh_probe_results_total", agent=agent_id) >= 20,
        30,
        f"results from {agent_id}",
    )
    proc = mesh.agents[agent_id]
    assert proc.stop() == 0
    stopped = re.search(r"agent stopped: produced=(\d+) acked=(\d+) queued=(\d+)", proc.log())
    assert stopped, proc.log(20)
    produced, acked, queued = map(int, stopped.groups())
    assert (acked, queued) == (produced, 0)
    counted = total(mesh.metrics(), "probemesh_probe_results_total", agent=agent_id)
    assert counted == produced
    assert total(mesh.metrics(), "probemesh_ingest_rejected_total") == 0
    return entry


def test_older_agent_against_todays_collector(
    tmp_path: Path, target: int, old_release: tuple[dict[str, str], str]
) -> None:
    env, old_version = old_release
    assert old_version != __version__
    mesh = Mesh(tmp_path, _checks(target))
    mesh.start_collector()
    try:
        mesh.start_agent("old-agent", "DE", env=env)
        entry = _run_and_account(mesh, "old-agent", old_version)
        assert entry["features"] == []  # it announces none, so no clock probes are answered
        assert entry["clock_offset_seconds"] is None
    finally:
        mesh.stop()


def test_todays_agent_against_an_older_collector(
    tmp_path: Path, target: int, old_release: tuple[dict[str, str], str]
) -> None:
    env, _old_version = old_release
    mesh = Mesh(tmp_path, _checks(target))
    mesh.start_collector(env=env)
    try:
        token = subprocess.run(
            probemesh_cmd("token", "create", "--data-dir", str(mesh.data_dir),
                          "--agent-id", "new-agent", "--country", "BR"),
            env={**os.environ, **env}, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        mesh.start_agent("new-agent", "BR", token=token)
        _run_and_account(mesh, "new-agent", __version__)
    finally:
        mesh.stop()


def test_older_agent_backlog_survives_a_checks_edit(
    tmp_path: Path, target: int, old_release: tuple[dict[str, str], str]
) -> None:
    """An older agent tags no revision: its backlog of a check removed while the
    collector was down is judged by the assignment history (same check, same
    target), so it is still counted, exactly once."""
    env, old_version = old_release
    mesh = Mesh(tmp_path, _checks(target))
    mesh.start_collector()
    try:
        # FAST_LINK_ENV: the agent is back within a second of the restart.
        mesh.start_agent("old-agent", "DE", env={**env, **FAST_LINK_ENV})
        wait_for(
            lambda: total(mesh.metrics(), "probemesh_probe_results_total", check="closed") >= 5,
            30,
            "results of the check about to be removed",
        )
        assert mesh.collector is not None
        mesh.collector.stop()
        time.sleep(2.0)  # the agent buffers both checks
        mesh.checks_yaml = "\n".join(
            line for line in mesh.checks_yaml.splitlines() if "name: closed" not in line
        )
        mesh.start_collector()
        entry = _run_and_account(mesh, "old-agent", old_version)
        assert entry["version"] == old_version
    finally:
        mesh.stop()
