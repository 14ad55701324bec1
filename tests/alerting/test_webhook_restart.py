"""Webhook events survive a collector restart: a receiver that refuses everything while
an incident opens, a collector stopped and started again on the same --data-dir, and
then every event arrives once, in timeline order, the pending ones first."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.alerting.receivers import Recorder
from tests.alerting.test_alertmanager import SECRET, Target, checks_yaml, verify_signature
from tests.harness import http_get, wait_for
from tests.prometheus.mesh import Collector, Mesh

pytestmark = pytest.mark.slow

AGENTS = [("de-1", "DE", "127.0.0.2"), ("us-1", "US", "127.0.0.3"), ("jp-1", "JP", "127.0.0.4")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    recorder = Recorder()
    target = Target()
    (tmp_path / "secret").write_bytes(SECRET)
    mesh = Mesh(tmp_path)
    try:
        yield {"recorder": recorder, "target": target, "mesh": mesh, "root": tmp_path}
    except BaseException:
        print(mesh.logs())
        raise
    finally:
        mesh.close()
        target.close()
        recorder.close()


def incidents(collector: Collector) -> list[dict[str, Any]]:
    return list(
        json.loads(http_get(f"http://{collector.http_address}/api/v1/incidents"))["incidents"]
    )


def test_pending_webhook_events_survive_a_collector_restart(world: dict[str, Any]) -> None:
    recorder: Recorder = world["recorder"]
    target: Target = world["target"]
    mesh: Mesh = world["mesh"]
    recorder.refuse_all = True
    extra = [
        "--webhook-url",
        f"{recorder.url}/hook",
        "--webhook-secret-file",
        str(world["root"] / "secret"),
    ]
    collector = mesh.collector("c1", checks_yaml(target), *extra)
    for agent_id, country, source in AGENTS:
        mesh.agent(collector, agent_id, country, "--source-address", source)
    target.failing["/web"] = {"127.0.0.2"}
    wait_for(lambda: incidents(collector), 60, "the incident to open")
    wait_for(lambda: len(recorder.refused) >= 2, 20, "refused webhook posts")
    assert recorder.under("/hook") == []

    assert collector.proc is not None
    collector.proc.stop()
    recorder.refuse_all = False
    collector.start()
    wait_for(lambda: recorder.under("/hook"), 20, "the pending event after the restart")
    target.failing["/web"] = set()
    wait_for(lambda: incidents(collector)[0]["ended_at"], 30, "the incident to close")
    wait_for(
        lambda: [p.json()["event"]["event"] for p in recorder.under("/hook")][-1:] == ["closed"],
        20,
        "the closed event",
    )
    hooks = recorder.under("/hook")
    for post in hooks:
        verify_signature(post)
    [incident] = incidents(collector)
    assert [p.json()["event"] for p in hooks] == incident["timeline"]  # each once, in order
    assert [p.json()["delivery"] for p in hooks] == [
        f"{incident['id']}-{n}" for n in range(len(hooks))
    ]
