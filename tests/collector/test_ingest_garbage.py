"""Without a result sink, ingest holds no result object past its application.

A batch's results held until its group commits survive several young garbage
collections and land in the oldest generation, whose collections then come
more often and walk them all while holding the event loop
(docs/benchmarks.md, event-loop lag).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.ingest import Ingest, _Item
from probemesh.collector.remote_results import Applied
from probemesh.collector.samples import KeptSamples
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.v1 import mesh_pb2 as pb

N = 300


def batch() -> pb.ResultBatch:
    return pb.ResultBatch(
        first_seq=1, last_seq=N, floor_seq=1,
        results=[
            pb.Result(
                check="web", target="http://a/", timestamp=1_700_000_000.0 + i, success=True,
                duration_seconds=0.01, revision=1,
                samples=[pb.Sample(name="probe_http_status_code", value=200)],
            )
            for i in range(N)
        ],
    )  # fmt: skip


def result_ids() -> set[int]:
    return {id(o) for o in gc.get_objects() if type(o) is pb.Result}


def apply_one_batch(tmp_path: Path, sink: bool) -> tuple[int, int, int]:
    """(Results alive while the last one is applied, results applied, results sunk)."""
    store = Store(open_database(None, tmp_path))
    sunk: list[Applied] = []
    gc.collect()
    before = result_ids()  # what earlier tests in this process left

    async def result_sink(applied: list[Applied]) -> None:
        sunk.extend(applied)

    ingest = Ingest(MeshState(), store, AssignmentHistory(store, "d"),
                    result_sink=result_sink if sink else None)  # fmt: skip
    agent = AgentInfo("vps-1", "DE")
    agent.assigned, agent.revision = {"web": "http://a/"}, 1
    seen: list[int] = []
    keep = ingest.samples.keep_result

    def counting_keep(result: pb.Result, check: str, revision: int) -> KeptSamples:
        if len(seen) == N - 1:  # the last result: what the ones before left alive
            seen.append(len(result_ids() - before))
        else:
            seen.append(0)
        return keep(result, check, revision)

    ingest.samples.keep_result = counting_keep  # type: ignore[method-assign]

    async def scenario() -> None:
        epoch = await ingest.take_lease(agent)
        await ingest._apply_group([_Item(Session(agent, "t", epoch), batch())])

    asyncio.run(scenario())
    store.close()
    return seen[-1], ingest.results_total, sum(len(a.results) for a in sunk)


def test_without_a_sink_no_result_outlives_its_application(tmp_path: Path) -> None:
    alive, applied, _ = apply_one_batch(tmp_path / "plain", sink=False)
    assert applied == N
    assert alive <= 3, f"{alive} result objects alive while applying the last of {N}"


def test_a_sink_still_gets_every_result(tmp_path: Path) -> None:
    alive, applied, sunk = apply_one_batch(tmp_path / "sink", sink=True)
    assert applied == sunk == N
    assert alive >= N - 1  # held for the sink, as they must be
