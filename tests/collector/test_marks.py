"""AppliedSeqs: exact dedupe with out-of-order batches, floors and restarts."""

from __future__ import annotations

import random

import pytest

from probemesh.collector.marks import AppliedSeqs


def applied(seqs: AppliedSeqs, upto: int) -> set[int]:
    return {s for s in range(1, upto + 1) if seqs.is_applied(s)}


def test_in_order_advances_mark() -> None:
    seqs = AppliedSeqs()
    seqs.add(1, 100)
    seqs.add(101, 200)
    assert seqs.mark == 200 and seqs.ranges == []


def test_out_of_order_keeps_ranges_then_merges() -> None:
    seqs = AppliedSeqs()
    seqs.add(201, 300)  # live batch first
    seqs.add(1, 100)  # then the backlog
    assert seqs.mark == 100 and seqs.ranges == [[201, 300]]
    assert seqs.is_applied(250) and not seqs.is_applied(150) and not seqs.is_applied(301)
    seqs.add(101, 200)
    assert seqs.mark == 300 and seqs.ranges == []


def test_overlapping_and_adjacent_ranges_merge() -> None:
    seqs = AppliedSeqs(mark=10)
    seqs.add(20, 25)
    seqs.add(30, 35)
    seqs.add(26, 29)  # adjacent on both sides
    assert seqs.ranges == [[20, 35]]
    seqs.add(18, 40)  # overlapping
    assert seqs.ranges == [[18, 40]]
    seqs.add(5, 12)  # partly below the mark
    assert seqs.mark == 12 and seqs.ranges == [[18, 40]]
    seqs.add(13, 17)
    assert seqs.mark == 40 and seqs.ranges == []


def test_duplicate_below_mark_is_noop() -> None:
    seqs = AppliedSeqs(mark=50)
    seqs.add(1, 50)
    seqs.add(10, 20)
    assert seqs.mark == 50 and seqs.ranges == []


def test_raise_floor_skips_dropped_and_absorbs_ranges() -> None:
    seqs = AppliedSeqs(mark=10, ranges=[[20, 30], [40, 50]])
    seqs.raise_floor(5)  # below the mark: nothing
    assert seqs.mark == 10
    seqs.raise_floor(25)  # the agent dropped 11..24
    assert seqs.mark == 30 and seqs.ranges == [[40, 50]]
    seqs.raise_floor(41)
    assert seqs.mark == 50 and seqs.ranges == []


def test_restored_from_persisted_state() -> None:
    seqs = AppliedSeqs(7, [[9, 12]])
    assert applied(seqs, 14) == {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12}
    seqs.add(8, 8)
    assert seqs.mark == 12 and seqs.ranges == []


def test_random_batches_match_a_set_model() -> None:
    """Any order of (possibly repeated, overlapping) batches: is_applied == model."""
    rng = random.Random(4)
    for _ in range(200):
        seqs = AppliedSeqs()
        model: set[int] = set()
        for _ in range(rng.randint(1, 30)):
            first = rng.randint(1, 200)
            last = first + rng.randint(0, 20)
            seqs.add(first, last)
            model.update(range(first, last + 1))
            assert applied(seqs, 230) == model
            # invariants: sorted, disjoint, non-adjacent, all above mark + 1
            for lo, hi in seqs.ranges:
                assert seqs.mark + 1 < lo <= hi
            for (_, hi), (lo, _) in zip(seqs.ranges, seqs.ranges[1:], strict=False):
                assert hi + 1 < lo


def test_reset_agent_sequence_is_not_mistaken_for_duplicates(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An agent whose state dir was wiped starts again at seq 1: the collector must
    forget its marks instead of skipping every new result as a duplicate."""
    from probemesh.collector.assignments import AssignmentHistory
    from probemesh.collector.database import open_database
    from probemesh.collector.ingest import Ingest
    from probemesh.collector.state import MeshState
    from probemesh.collector.store import Store

    store = Store(open_database(None, tmp_path))
    ingest = Ingest(MeshState(), store, AssignmentHistory(store, "digest"))
    ingest.marks["vps-1"] = AppliedSeqs(500, [[510, 520]])
    ingest.durable["vps-1"] = 500
    ingest.reconcile("vps-1", last_seq=600)  # a normal reconnect: kept
    assert ingest.mark_of("vps-1") == 500
    ingest.reconcile("vps-1", last_seq=3)  # sequence restarted: forgotten
    assert ingest.mark_of("vps-1") == 0
    assert not ingest.marks["vps-1"].is_applied(1)


def test_welcome_names_only_committed_marks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The agent deletes what Welcome's acked_seq names, so it must be on disk:
    a mark applied in memory whose commit failed is not announced."""
    import asyncio

    from probemesh.collector.assignments import AssignmentHistory
    from probemesh.collector.database import open_database
    from probemesh.collector.ingest import Ingest, _Item
    from probemesh.collector.sessions import Session
    from probemesh.collector.state import AgentInfo, MeshState
    from probemesh.collector.store import Store
    from probemesh.v1 import mesh_pb2 as pb

    store = Store(open_database(None, tmp_path))
    ingest = Ingest(MeshState(), store, AssignmentHistory(store, "digest"))
    agent = AgentInfo("vps-1", "DE")
    agent.assigned, agent.revision = {"web": ""}, 1
    batch = pb.ResultBatch(first_seq=1, last_seq=1, floor_seq=1,
                           results=[pb.Result(check="web", timestamp=1.0, success=True,
                                              revision=1)])  # fmt: skip

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    epoch = asyncio.run(ingest.take_lease(agent))

    async def apply(commit: object) -> None:
        store.commit_fenced = commit  # type: ignore[method-assign]
        await ingest._apply_group([_Item(Session(agent, "t", epoch), batch)])

    with pytest.raises(OSError, match="disk full"):
        asyncio.run(apply(broken))
    assert ingest.marks["vps-1"].mark == 1  # applied in memory
    assert ingest.mark_of("vps-1") == 0  # but not announced
    asyncio.run(apply(Store.commit_fenced.__get__(store)))
    assert ingest.mark_of("vps-1") == 1
    assert Store(open_database(None, tmp_path)).load_marks()["vps-1"][0] == 1
