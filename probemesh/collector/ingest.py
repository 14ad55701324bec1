"""Ingest: a bounded queue of batches and one applier that makes them durable.

Stream handlers validate a batch's framing and ``await`` a place in the queue;
when it is full they stop reading, HTTP/2 flow control slows the agent down,
and the agent keeps buffering on disk. Nothing is dropped in memory. The applier
takes several batches at a time, applies the results not applied before
(dedupe by per-agent sequence marks), persists marks, counters and histograms
in one transaction, and only then sends the Acks.

A result is valid when its check was assigned to the agent at the revision it
names (see assignments.py), whatever the checks file says now: results an
agent buffered before an edit still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.leases import (
    LeaseBook,
    LeaseRow,
    default_collector_id,
    stream_taken_message,
)
from probemesh.collector.limits import SecurityLimits
from probemesh.collector.marks import AppliedSeqs
from probemesh.collector.remote_results import Applied
from probemesh.collector.samples import KeptSamples, SampleFilter
from probemesh.collector.sessions import Session
from probemesh.collector.state import REASON_NAMES, AgentInfo, MeshState
from probemesh.collector.store import Store
from probemesh.collector.work_lane import Steps, WorkLane
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MAX_FUTURE_SKEW = 300.0  # seconds an agent clock may run ahead
SLICE = 64  # results applied in one step of the work lane (about 0.6 ms)
REJECT_REASONS = ("not_assigned", "invalid_value", "invalid_timestamp")
"""Results ingest refuses: a check never assigned to the agent, a non-finite or
negative duration or an unknown reason, a timestamp not positive or too far ahead."""


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one batch and the queue may hold."""

    max_batch_results: int = 5_000
    queue_batches: int = 512
    # What one transaction applies at most. A group's fixed cost (the fence,
    # the journal write, the commit: a few thread hops, each waiting for a busy
    # event loop's turn) is the same for one batch as for hundreds, and agents
    # mostly send one-result batches: the groups are as large as the queue.
    group_batches: int = 512
    group_results: int = 20_000
    # A small group waits this long after its first batch for more. Agents'
    # batches arrive one at a time, each at its own moment; a group of one pays
    # the fixed cost per batch, and the collector about twice the CPU per result.
    gather_seconds: float = 0.025
    # A group is small while fewer batches than this are queued and its first
    # batch has fewer results: a larger one already spreads its fixed cost, and
    # waiting would only slow a catch-up (an agent's backlog after an outage).
    gather_below: int = 64


@dataclass
class _Item:
    session: Session
    batch: pb.ResultBatch
    # When the batch came (the loop's clock): an Ack held back for it is due
    # a hold after that, however long it waited in the queue.
    arrived: float = field(default_factory=time.monotonic)


class Ingest:
    """Owns the ingest queue, the sequence marks and the persistence of counters."""

    def __init__(
        self,
        state: MeshState,
        store: Store,
        history: AssignmentHistory,
        limits: IngestLimits | None = None,
        result_sink: Callable[[list[Applied]], Awaitable[None]] | None = None,
        leases: LeaseBook | None = None,
        lane: WorkLane | None = None,
    ) -> None:
        self.state = state
        self.lane = lane or WorkLane()  # applies the batches, a slice at a time
        self.leases = leases or LeaseBook(default_collector_id(""))
        self.store = store
        self.history = history
        self.limits = limits or IngestLimits()
        # Awaited with each round's new results before their marks commit (remote write).
        self.result_sink = result_sink
        self._unsunk: list[Applied] = []  # results a failed sink call must be given again
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(self.limits.queue_batches)
        # Valid for the agents whose lease this collector holds (loaded with the lease).
        self.marks: dict[str, AppliedSeqs] = {}
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self.samples = SampleFilter(SecurityLimits().max_samples_per_result)
        self.results_total = 0
        self.batches_total = 0
        self.duplicates_total = 0
        self.accepting = True
        self._getter: asyncio.Future[_Item] | None = None  # the idle applier's wait
        self._dirty_marks: set[str] = set()  # agents whose mark a failed commit left unsaved
        # Marks as last committed: what Welcome may tell an agent to delete.
        self.durable: dict[str, int] = {}
        # A lease take and a group apply of the same agent take turns (see take_lease).
        self._turns = asyncio.Condition()
        self._applying: set[str] = set()  # agents of the group being applied
        self._taking: set[str] = set()  # agents whose lease is being taken

    def configure(self, limits: SecurityLimits) -> None:
        """Apply the per-result sample cap."""
        self.samples.max_samples = limits.max_samples_per_result

    def reconcile(self, agent_id: str, last_seq: int) -> None:
        """Forget the marks of an agent whose sequence restarted (its state dir was lost).

        An agent never produced beyond its Hello's last_seq, so a mark above it
        means the numbers restarted; keeping the mark would skip every new
        result as a duplicate. The reset is written with the next commit.
        """
        seqs = self.marks.get(agent_id)
        if seqs is None or (
            seqs.mark <= last_seq and not any(last > last_seq for _, last in seqs.ranges)
        ):
            return
        log.warning(
            "agent %s restarted its sequence numbers (last_seq %d, applied up to %d): "
            "its state dir was reset; dedupe starts over",
            agent_id, last_seq, seqs.mark,
        )  # fmt: skip
        self.marks[agent_id] = AppliedSeqs()
        self.durable[agent_id] = 0
        self._dirty_marks.add(agent_id)

    def mark_of(self, agent_id: str) -> int:
        """The agent's committed mark: the in-memory one may be ahead of the disk
        (a commit in flight or failed), and the agent deletes what Welcome names."""
        return self.durable.get(agent_id, 0)

    def framing_problem(self, batch: pb.ResultBatch) -> tuple[str, str] | None:
        """(reject reason, detail) when a batch is malformed or too large."""
        n = len(batch.results)
        if n > self.limits.max_batch_results:
            return (
                "batch_too_large",
                f"batch of {n} results exceeds the limit of {self.limits.max_batch_results}",
            )
        if n == 0 or batch.first_seq == 0 or batch.last_seq - batch.first_seq + 1 != n:
            return (
                "malformed_batch",
                f"sequence range {batch.first_seq}..{batch.last_seq} does not match {n} results",
            )
        return None

    async def submit(self, session: Session, batch: pb.ResultBatch) -> None:
        """Queue a well-framed batch, waiting (backpressure) while the queue is full."""
        await self.queue.put(_Item(session, batch))

    async def run(self) -> None:
        """Apply batches until accepting is cleared and the queue is empty.

        Returning (never being cancelled mid-commit) is what makes shutdown
        safe: everything queued is applied and acked, nothing half-written.
        """
        while self.accepting or not self.queue.empty():
            self._getter = getter = asyncio.ensure_future(self.queue.get())
            try:
                first = await getter
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if getter.cancelled() and task is not None and not task.cancelling():
                    continue  # woken by stop_accepting
                raise
            finally:
                self._getter = None
            limits = self.limits
            small = max(self.queue.qsize(), len(first.batch.results)) < limits.gather_below
            if small and self.accepting:
                await asyncio.sleep(limits.gather_seconds)
            items = [first]
            results = len(first.batch.results)
            while (
                len(items) < limits.group_batches
                and results < limits.group_results
                and not self.queue.empty()
            ):
                item = self.queue.get_nowait()
                items.append(item)
                results += len(item.batch.results)
            try:
                await self._apply_group(items)
            except Exception:  # the applier must outlive one failed commit
                log.exception("ingest: could not persist %d batches; they stay unacked", len(items))
                # The agents resend what is unacked on a new stream: end these now
                # rather than leave them waiting out their dead-after time.
                for item in items:
                    item.session.end(
                        grpc.StatusCode.UNAVAILABLE, "collector could not store the results; resend"
                    )
                await asyncio.sleep(0.5)

    def stop_accepting(self) -> None:
        """Let run() return once the queue is empty: at once when it waits for a batch."""
        self.accepting = False
        if self._getter is not None:
            self._getter.cancel()  # a cancelled Queue.get takes no item

    async def take_lease(self, agent: AgentInfo) -> int:
        """Take the agent's lease for a new stream and continue from its committed rows.

        Returns the lease epoch the stream's batches are applied under. The
        marks and counters read with the lease replace what memory holds:
        another collector may have applied the agent's results meanwhile.
        It waits for a group of this collector's that is applying the agent's
        batches (the old stream's): what that group commits is then read too.
        Another collector's group is waited for by the database's row lock.
        """
        agent_id = agent.agent_id
        async with self._turns:
            await self._turns.wait_for(
                lambda: agent_id not in self._applying and agent_id not in self._taking
            )
            self._taking.add(agent_id)
        try:
            takeover = await asyncio.wrap_future(
                self.store.lease_thread.submit(
                    self.store.take_lease, agent_id, self.leases.holder, time.time()
                )
            )
            self.leases.took(agent_id, takeover)
            rows = takeover.rows
            if rows is not None:
                self.marks[agent_id] = AppliedSeqs(rows.mark, [list(r) for r in rows.ranges])
                self.durable[agent_id] = rows.mark
                self._dirty_marks.discard(agent_id)
                self.state.adopt_counters(agent_id, rows.counters)
        finally:
            async with self._turns:
                self._taking.discard(agent_id)
                self._turns.notify_all()
        return takeover.epoch

    def lease_lost(self, agent_id: str, row: LeaseRow | None) -> None:
        """Another collector holds the agent now: forget the lease and unsaved state.

        What memory applied but did not commit for the agent is the new
        holder's to apply: the agent resends whatever was not acked.
        """
        if self.leases.lose(agent_id, row):
            self._dirty_marks.discard(agent_id)
            self.state.drop_dirty(agent_id)

    async def _in_ingest_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run a statement of the fenced transaction on the ingest connection's thread."""
        return await asyncio.wrap_future(self.store.ingest_thread.submit(fn, *args))

    async def _apply_group(self, items: list[_Item]) -> None:
        """Apply and commit a group of batches inside one fenced transaction.

        Never at the same time as this collector's own take of one of the
        group's agents: the take reads the rows this group commits.
        """
        async with self._turns:
            while True:
                agents = {item.session.agent.agent_id for item in items}
                agents |= self._dirty_marks | self.state.dirty_agents()
                if not agents & self._taking:
                    break
                await self._turns.wait()
            self._applying = agents
        try:
            held = await self._in_ingest_thread(self.store.begin_fence, agents)
            try:
                await self._apply_fenced(items, agents, held)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._in_ingest_thread(self.store.rollback_fence)
                raise
        finally:
            async with self._turns:
                self._applying = set()
                self._turns.notify_all()

    async def _apply_fenced(
        self, items: list[_Item], agents: set[str], held: dict[str, LeaseRow]
    ) -> None:
        leases = self.leases
        for agent_id in agents & leases.epochs.keys():
            row = held.get(agent_id)
            if row is None or row.holder != leases.holder:
                self.lease_lost(agent_id, row)
        live = []
        for item in items:
            agent_id = item.session.agent.agent_id
            row = held.get(agent_id)
            if row is not None and row == LeaseRow(leases.holder, item.session.epoch):
                live.append(item)
                continue
            # A stream replaced by a newer one here, or whose lease another
            # collector took: its results are not ours to apply; they stay
            # unacked and the agent sends them on its current stream.
            leases.fenced_batches_total += 1
            if row is None or row.holder != leases.holder:
                item.session.end(grpc.StatusCode.ABORTED, stream_taken_message(agent_id, row))
        # Results a failed sink call left, of agents still held (the others are the new holder's).
        applied = [a for a in self._unsunk if leases.holds(a.agent, held.get(a.agent))]
        # The whole group is one computation of the work lane, a slice at a time:
        # applied at once it would hold the event loop for up to a second, and
        # every stream, scrape and API call with it.
        touched = await self.lane.run(self._apply_items(live, applied))
        # Marks left unsaved are written under this fence only for agents it locked;
        # one reset since (a restarted agent's sequence) waits for the next group.
        touched |= self._dirty_marks & agents
        if applied and self.result_sink is not None:
            # Before the commit: a result is never marked applied without being sunk.
            # On failure the in-memory marks already skip a resend, so keep them here.
            self._unsunk = applied
            try:
                await self.result_sink(applied)
            except BaseException:
                self._dirty_marks.update(touched)
                raise
            self._unsunk = []
        dirty = self.state.take_dirty()
        # Snapshot the ranges: the commit runs in a thread while the loop goes on.
        marks = [(a, self.marks[a].mark, [list(r) for r in self.marks[a].ranges]) for a in touched]
        try:
            stored = await self._in_ingest_thread(
                self.store.commit_fenced, marks, dirty.counters, dirty.histograms
            )
        except BaseException:
            # Not durable, so not acked; keep the keys dirty so the next commit
            # writes them (resent batches are deduped by the in-memory marks).
            self.state.requeue(dirty)
            self._dirty_marks.update(touched)
            raise
        self.state.merge_histograms(dirty, stored)
        # Only what this commit wrote: reconcile() may have added an agent meanwhile.
        self._dirty_marks -= touched
        for agent_id, mark, _ in marks:
            if self.marks.get(agent_id) is not None and self.marks[agent_id].mark >= mark:
                self.durable[agent_id] = mark
        for item in live:
            mark = self.marks[item.session.agent.agent_id].mark
            item.session.acknowledge(mark, item.batch.first_seq, item.batch.last_seq, item.arrived)

    def _apply_items(self, items: list[_Item], applied: list[Applied]) -> Steps[set[str]]:
        """Apply the batches of items in turn, yielding every SLICE results;
        append what the result sink is to be given to applied; return the
        agents whose marks moved.

        One computation for the whole group: agents mostly send one-result
        batches, and handing the lane each batch on its own cost a future and
        a loop iteration per batch."""
        sink = self.result_sink is not None
        touched: set[str] = set()
        done = 0  # results since the last yield
        for item in items:
            agent = item.session.agent
            # What the sink is given; without one, nothing of a result outlives its
            # application (a group's 64,000 results held until the commit would each
            # survive into the garbage collector's oldest generation).
            new: list[pb.Result] | None = [] if sink else None
            targets: list[str] = []
            kept: list[KeptSamples] = []
            done = yield from self._apply_batch(item, new, targets, kept, done)
            touched.add(agent.agent_id)
            if new:
                applied.append(
                    Applied(agent.agent_id, agent.country, agent.region, new, targets, kept)
                )
        return touched

    def _apply_batch(
        self,
        item: _Item,
        applied: list[pb.Result] | None,
        applied_targets: list[str],
        applied_samples: list[KeptSamples],
        done: int = 0,
    ) -> Steps[int]:
        """Validate and apply one batch's new results; the ingest hot path.

        Unless applied is None, appends them to applied, with the target each
        ran against to applied_targets, as this collector assigned it (a late
        result of a re-targeted check keeps its old target), and their kept
        samples to applied_samples. Yields every SLICE results, counting the
        done before it (the work lane runs it a step at a time); returns the
        results done since the last yield.

        Each result's fields are read once here and handed to MeshState.record:
        protobuf attribute reads are the main per-result cost.
        """
        agent = item.session.agent
        batch = item.batch
        agent_id = agent.agent_id
        seqs = self.marks.get(agent_id)
        if seqs is None:
            seqs = self.marks[agent_id] = AppliedSeqs()
        seqs.raise_floor(batch.floor_seq)
        self.batches_total += 1
        state = self.state
        record = state.record
        assigned = agent.assigned
        assigned_revision = agent.revision
        target_of = self.history.target_of
        tallies = state.agent_tallies.get(agent_id) or {}
        country = agent.country
        first_seq = batch.first_seq
        results = batch.results
        now = time.time()
        horizon = now + MAX_FUTURE_SKEW
        if first_seq > seqs.mark and not seqs.ranges:
            new = results
        else:
            new = [r for i, r in enumerate(results) if not seqs.is_applied(first_seq + i)]
            self.duplicates_total += len(results) - len(new)
        rejected = self.rejected
        keep = self.samples.keep_result
        newest = 0.0
        count = 0
        correction = agent.clock.correction
        for result in new:
            if done >= SLICE:
                yield
                done = 0
            done += 1
            check = result.check
            revision = result.revision
            if revision == assigned_revision and check in assigned:
                target = assigned[check]
                current: str | None = target
            else:  # buffered under an older revision, or an agent that does not tag
                judged = target_of(agent_id, check, revision, result.target, assigned)
                if judged is None:
                    rejected["not_assigned"] += 1
                    continue
                target = judged
                current = target if assigned.get(check) == target else None
            duration = result.duration_seconds
            if not 0 <= duration < _INF:  # NaN compares False
                rejected["invalid_value"] += 1
                continue
            success = result.success
            reason = REASON_NAMES.get(result.reason)
            if reason is None or (success and reason != _NO_REASON):
                rejected["invalid_value"] += 1
                continue
            timestamp = result.timestamp - correction  # a skewed clock: onto the collector's
            if not 0 < timestamp <= horizon:  # horizon is finite: so is timestamp
                rejected["invalid_timestamp"] += 1
                continue
            if timestamp > now:  # never in the future, whatever the estimate says
                timestamp = now
                agent.clock_clamped += 1
                result.timestamp = timestamp  # every reader sees the collector's time
            elif correction:
                agent.clock_corrected += 1
                result.timestamp = timestamp
            tally = tallies.get(check)
            if tally is None:
                tally = state.tally(check, agent_id, country)
                tallies = state.agent_tallies[agent_id]
            samples = keep(result, check, revision)
            record(
                agent, tally, result, success, duration, timestamp, reason, samples, current,
            )  # fmt: skip
            if current is None:
                state.linger(check, now)  # a no-op unless the check left the file
            count += 1
            if applied is not None:
                applied.append(result)
                applied_targets.append(target)
                applied_samples.append(samples)
            if timestamp > newest:
                newest = timestamp
        self.results_total += count
        if newest > agent.last_result:
            agent.last_result = newest
        if newest > agent.last_seen:
            agent.last_seen = min(newest, now)
        seqs.add(first_seq, batch.last_seq)
        return done


_INF = math.inf
_NO_REASON = REASON_NAMES[0]
