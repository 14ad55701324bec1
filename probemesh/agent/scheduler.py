"""The scheduler owns time: one loop per check, spread across the interval.

Each check's first run lands at a random offset inside its interval so that a
thousand checks do not fire in the same millisecond; after that it keeps a
fixed cadence, skipping (not bursting) rounds it fell behind on. A semaphore
caps how many probes run at once.

A failed probe may trigger evidence gathering (agent/evidence.py) in the
background, after its result went to the sink, so a slow traceroute never
delays a result; nothing extra runs after a success.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

from probemesh.agent.evidence import Gatherer
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.runner import PreparedCheck, prepare, run_probe
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)


class Scheduler:
    """Keeps one task per assigned check and applies check updates live."""

    def __init__(
        self,
        env: ProbeEnv,
        sink: Callable[[pb.Result], None],
        min_interval: float,
        max_concurrency: int,
    ) -> None:
        self.env = env
        self.sink = sink
        self.min_interval = min_interval
        self._limit = asyncio.Semaphore(max_concurrency)
        self._tasks: dict[str, tuple[bytes, asyncio.Task[None]]] = {}
        self.gatherer = Gatherer(env)
        self._prepared: dict[str, PreparedCheck] = {}
        self._last_success: dict[str, bool] = {}
        self._gathering: dict[str, asyncio.Task[None]] = {}  # check -> evidence task
        # Where evidence reports go (the collector link); None gathers nothing.
        self.on_report: Callable[[pb.EvidenceReport], None] | None = None
        # The Checks.revision the running set came with; every result names it.
        self.revision = 0

    def update(self, checks: Iterable[pb.Check], revision: int = 0) -> None:
        """Replace the check set: stop removed or changed checks, start new ones.

        Unchanged checks keep their schedule; their next results name the new
        revision, under which they are assigned too.
        """
        self.revision = revision
        wanted = {check.name: check for check in checks}
        for name in list(self._tasks):
            fingerprint, task = self._tasks[name]
            if (
                name not in wanted
                or wanted[name].SerializeToString(deterministic=True) != fingerprint
            ):
                task.cancel()
                del self._tasks[name]
                self._prepared.pop(name, None)
                self._last_success.pop(name, None)
        self.gatherer.forget(set(wanted))
        for name, check in wanted.items():
            if name in self._tasks:
                continue
            prepared = prepare(check, self.min_interval)
            if prepared.refusal:
                log.warning("check %s: %s", name, prepared.refusal)
            if check.prober == "grpc" and self.env.source_address:
                # grpcio offers no way to bind a client channel's local address.
                log.warning("check %s: grpc probes ignore --source-address", name)
            self._prepared[name] = prepared
            task = asyncio.create_task(self._loop(prepared), name=f"check:{name}")
            self._tasks[name] = (check.SerializeToString(deterministic=True), task)

    async def _loop(self, prepared: PreparedCheck) -> None:
        loop = asyncio.get_running_loop()
        interval = prepared.interval
        next_at = loop.time() + random.uniform(0, interval)
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                revision = self.revision  # the assignment this probe runs under
                async with self._limit:
                    result = await run_probe(prepared, self.env)
                before = self._last_success.get(prepared.name)
                self._last_success[prepared.name] = result.success
                result.revision = revision
                self.sink(result)
                if result.success and before is False:
                    self.gatherer.trace_sooner(prepared.name)
                    if self.on_report is not None:
                        self.on_report(pb.EvidenceReport(check=prepared.name, recovered=True))
                if (
                    not result.success
                    and self.on_report is not None
                    and prepared.name not in self._gathering  # asked only once it can start
                    and self.gatherer.wants(
                        prepared.name, f"{result.reason}:{result.message}", loop.time()
                    )
                ):
                    self._gather(prepared, probe_success=False, want_path=True)
            except Exception:  # a bug must not silently end this check's schedule
                log.exception("check %s: probe round failed", prepared.name)
            next_at += interval
            behind = loop.time() - next_at
            if behind > 0:  # skip missed rounds instead of bursting
                next_at += interval * (int(behind // interval) + 1)

    def request_evidence(self, request: pb.EvidenceRequest) -> None:
        """Gather evidence the collector asked for; unknown or refused checks are ignored."""
        prepared = self._prepared.get(request.check)
        if prepared is not None and not prepared.refusal:
            success = self._last_success.get(request.check, False)
            if request.path:
                self.gatherer.trace_sooner(request.check)
            self._gather(prepared, success, request.path)

    def _gather(self, prepared: PreparedCheck, probe_success: bool, want_path: bool) -> None:
        """Gather and report evidence in the background, one gathering per check at a time."""
        name = prepared.name
        reply = self.on_report
        if reply is None or name in self._gathering:
            return

        async def run() -> None:
            try:
                evidence = await self.gatherer.gather(prepared, probe_success, want_path)
            except Exception:  # a bug must not surface as an unhandled task error
                log.exception("check %s: gathering evidence failed", name)
                return
            if evidence is not None:
                reply(pb.EvidenceReport(check=name, evidence=evidence))

        task = asyncio.create_task(run(), name=f"evidence:{name}")
        self._gathering[name] = task
        task.add_done_callback(lambda _: self._gathering.pop(name, None))

    async def stop(self) -> None:
        """Cancel every check loop and wait for them to finish."""
        tasks = [task for _, task in self._tasks.values()] + list(self._gathering.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
