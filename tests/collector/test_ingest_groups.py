"""Ingest groups: how many queued batches one transaction applies.

Agents mostly send one-result batches, and a group's fixed cost (fence,
journal, commit) is paid once per group: the applier waits gather_seconds
after a group's first batch, then takes whatever is queued, up to
group_batches batches or group_results results.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from pathlib import Path
from typing import Any

import pytest

from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.database import open_database
from probemesh.collector.ingest import SLICE, Ingest, IngestLimits, _Item
from probemesh.collector.sessions import Session
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.collector.work_lane import Steps, WorkLane
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
    while session.outbox:
        message = await session.outbox.get()
        assert message is not None
        acks.append(message.ack.last_seq)
    assert acks == [3 * n + 3 for n in range(10)]


@pytest.mark.parametrize(("batches", "per_batch"), [(200, 1), (1, 200), (40, 5)])
async def test_a_group_is_applied_in_slices_of_results_whatever_its_batches(
    tmp_path: Path, batches: int, per_batch: int
) -> None:
    """The lane runs a group a slice of SLICE results at a time: 200 one-result
    batches take as many loop iterations as one batch of 200 results, not one
    each, and never all at once.

    The results are counted at each loop iteration while the lane runs the
    group, by a task that spins on sleep(0). Not while the group's commit runs
    in the ingest thread: the spinning task would hold the GIL the thread needs
    after each SQLite step, and on a busy host stretch the commit to seconds."""
    store = Store(open_database(None, tmp_path))
    state = MeshState()
    lane = WorkLane(budget=0)  # one step per loop iteration
    ingest = Ingest(state, store, AssignmentHistory(store, "digest"), lane=lane)
    items = []
    for a in range(batches):
        agent = state.agents[f"vps-{a}"] = AgentInfo(f"vps-{a}", "DE")
        agent.assigned, agent.revision = {"web": "t.example:80"}, 1
        session = Session(agent, "token", await ingest.take_lease(agent))
        results = [
            pb.Result(check="web", revision=1, timestamp=1000.0 + seq, success=True,
                      duration_seconds=0.01)
            for seq in range(1, per_batch + 1)
        ]  # fmt: skip
        items.append(
            _Item(session, pb.ResultBatch(first_seq=1, last_seq=per_batch, results=results))
        )
    applied: list[int] = []
    run = lane.run

    async def counted(steps: Steps[Any]) -> Any:
        done = False

        async def ticker() -> None:
            while not done:
                applied.append(sum(t.success for t in state.tallies.values()))
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        try:
            return await run(steps)
        finally:
            done = True
            await tick

    lane.run = counted  # type: ignore[method-assign]
    try:
        await ingest._apply_group(items)
    finally:
        store.close()
    total = batches * per_batch
    assert ingest.results_total == total
    steps = [b - a for a, b in itertools.pairwise(applied) if b != a]
    assert max(steps) <= SLICE, steps
    assert len(steps) == math.ceil(total / SLICE), steps
    assert sum(1 for m in await drain(items) if m.ack.last_seq == per_batch) == batches


async def test_stop_accepting_ends_an_idle_applier_at_once_and_a_busy_one_after_the_queue(
    tmp_path: Path,
) -> None:
    """The collector's shutdown waits for the applier: an idle one must not sit out
    a poll interval, and a batch queued as the stop comes is still applied."""
    store = Store(open_database(None, tmp_path))
    state = MeshState()
    ingest = Ingest(state, store, AssignmentHistory(store, "digest"))
    agent = state.agents["vps-1"] = AgentInfo("vps-1", "DE")
    agent.assigned, agent.revision = {"web": "t.example:80"}, 1
    session = Session(agent, "token", await ingest.take_lease(agent))
    result = pb.Result(check="web", revision=1, timestamp=1000.0, success=True)
    idle = asyncio.create_task(ingest.run())
    busy = None
    try:
        for _ in range(5):
            await asyncio.sleep(0)  # the applier waits for a batch
        ingest.stop_accepting()
        for _ in range(5):  # loop turns, no clock: a poll would take its whole interval
            await asyncio.sleep(0)
        assert idle.done()
        await idle

        ingest.accepting = True
        busy = asyncio.create_task(ingest.run())
        for _ in range(5):
            await asyncio.sleep(0)
        await ingest.submit(session, pb.ResultBatch(first_seq=1, last_seq=1, results=[result]))
        ingest.stop_accepting()  # the woken wait must not lose the batch
        await busy
        assert state.tallies[("web", "vps-1")].success == 1
        assert [m.ack.last_seq for m in await drain([_Item(session, pb.ResultBatch())])] == [1]
    finally:
        for task in (idle, busy):
            if task is not None:
                task.cancel()
        store.close()


async def _ingest_of_one_agent(
    tmp_path: Path, limits: IngestLimits
) -> tuple[Ingest, Session, Store, list[tuple[float, int]], asyncio.Event]:
    """An ingest whose groups are recorded as (when applied, batches) in the list
    returned, and announced by the ingest's `applied` event."""
    store = Store(open_database(None, tmp_path))
    state = MeshState()
    ingest = Ingest(state, store, AssignmentHistory(store, "digest"), limits)
    agent = state.agents["vps-1"] = AgentInfo("vps-1", "DE")
    agent.assigned, agent.revision = {"web": "t.example:80"}, 1
    session = Session(agent, "token", await ingest.take_lease(agent))
    groups: list[tuple[float, int]] = []
    apply_group = ingest._apply_group

    async def recording(items: list[_Item]) -> None:
        groups.append((time.monotonic(), len(items)))
        await apply_group(items)
        applied.set()

    applied = asyncio.Event()
    ingest._apply_group = recording  # type: ignore[method-assign]
    return ingest, session, store, groups, applied


def _batch(seq: int) -> pb.ResultBatch:
    result = pb.Result(check="web", revision=1, timestamp=1000.0 + seq, success=True)
    return pb.ResultBatch(first_seq=seq, last_seq=seq, results=[result])


GATHER = 0.3


@pytest.mark.parametrize("offsets", [(0.0, 0.01, 0.2), (0.0, 0.25), (0.0, 0.05, 0.1, 0.15)])
async def test_batches_arriving_within_the_gather_window_make_one_group(
    tmp_path: Path, offsets: tuple[float, ...]
) -> None:
    """Agents send one-result batches, each at its own moment: a group waits
    gather_seconds after its first batch, so those arriving meanwhile share its
    fixed cost (fence, journal, commit), and none waits longer than that."""
    ingest, session, store, groups, _ = await _ingest_of_one_agent(
        tmp_path, IngestLimits(gather_seconds=GATHER)
    )
    runner = asyncio.create_task(ingest.run())
    try:
        start = time.monotonic()
        for seq, offset in enumerate(offsets, 1):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            await ingest.submit(session, _batch(seq))
        await asyncio.sleep(max(0.0, start + GATHER + 0.5 - time.monotonic()))
        await ingest.submit(session, _batch(len(offsets) + 1))  # after the group: a new one
        ingest.stop_accepting()
        await runner
    finally:
        runner.cancel()
        store.close()
    assert [n for _, n in groups] == [len(offsets), 1]
    waited = groups[0][0] - start
    assert GATHER <= waited < GATHER + 1.0, waited
    acks = [m.ack.last_seq for m in await drain([_Item(session, pb.ResultBatch())])]
    assert acks == list(range(1, len(offsets) + 2))


@pytest.mark.parametrize(("batches", "per_batch"), [(65, 1), (1, 64)])
async def test_a_large_group_does_not_wait(tmp_path: Path, batches: int, per_batch: int) -> None:
    """Many batches queued, or one of many results (an agent's backlog after an
    outage): the group already spreads its fixed cost, and waiting would only
    slow the catch-up."""
    ingest, session, store, groups, applied = await _ingest_of_one_agent(
        tmp_path, IngestLimits(gather_seconds=60.0)
    )
    seq = 0
    for _ in range(batches):
        results = [
            pb.Result(check="web", revision=1, timestamp=1000.0 + seq + n, success=True)
            for n in range(1, per_batch + 1)
        ]
        await ingest.submit(
            session, pb.ResultBatch(first_seq=seq + 1, last_seq=seq + per_batch, results=results)
        )
        seq += per_batch
    runner = asyncio.create_task(ingest.run())
    try:
        await asyncio.wait_for(applied.wait(), 10)  # not the 60 s gather
        ingest.stop_accepting()
        await asyncio.wait_for(runner, 10)
    finally:
        runner.cancel()
        store.close()
    assert groups[0][1] == batches


async def drain(items: list[_Item]) -> list[pb.CollectorMessage]:
    messages = []
    for item in items:
        while item.session.outbox:
            message = await item.session.outbox.get()
            assert message is not None
            messages.append(message)
    return messages
