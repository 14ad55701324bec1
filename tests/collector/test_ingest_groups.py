"""Ingest groups: how many queued batches one transaction applies.

Agents mostly send one-result batches, and a group's fixed cost (fence,
journal, commit) is paid once per group: the applier takes whatever is queued,
up to group_batches batches or group_results results.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.ingest import Ingest, IngestLimits, _Item
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb


@pytest.mark.parametrize(
    ("group_batches", "group_results", "groups"),
    [(4, 7, [3, 3, 3, 1]), (2, 100, [2, 2, 2, 2, 2]), (512, 20_000, [10])],
)
async def test_a_group_takes_what_is_queued_up_to_its_bounds(
    tmp_path: Path, group_batches: int, group_results: int, groups: list[int]
) -> None:
    store = Store(open_database(None, tmp_path))
    state = MeshState()
    limits = IngestLimits(group_batches=group_batches, group_results=group_results)
    ingest = Ingest(state, store, AssignmentHistory(store, "digest"), limits)
    agent = state.agents["vps-1"] = AgentInfo("vps-1", "DE")
    agent.assigned, agent.revision = {"web": "t.example:80"}, 1
    session = Session(agent, "token", await ingest.take_lease(agent))
    sizes: list[int] = []
    apply_group = ingest._apply_group

    async def recording(items: list[_Item]) -> None:
        sizes.append(len(items))
        await apply_group(items)

    ingest._apply_group = recording  # type: ignore[method-assign]
    for n in range(10):  # ten batches of three results, queued before the applier runs
        first = 3 * n + 1
        results = [
            pb.Result(check="web", revision=1, timestamp=1000.0 + seq, success=True,
                      duration_seconds=0.01)
            for seq in range(first, first + 3)
        ]  # fmt: skip
        await ingest.submit(
            session, pb.ResultBatch(first_seq=first, last_seq=first + 2, results=results)
        )
    ingest.accepting = False
    try:
        await ingest.run()
    finally:
        store.close()
    assert sizes == groups
    assert state.tallies[("web", "vps-1")].success == 30
    acks = []
    while not session.outbox.empty():
        message = session.outbox.get_nowait()
        assert message is not None
        acks.append(message.ack.last_seq)
    assert acks == [3 * n + 3 for n in range(10)]
