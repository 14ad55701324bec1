"""The scheduler owns time: one loop per check, spread across the interval.

Each check's first run lands at a random offset inside its interval so that a
thousand checks do not fire in the same millisecond; after that it keeps a
fixed cadence, skipping (not bursting) rounds it fell behind on. A semaphore
caps how many probes run at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable

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

    def update(self, checks: Iterable[pb.Check]) -> None:
        """Replace the check set: stop removed or changed checks, start new ones."""
        wanted = {check.name: check for check in checks}
        for name in list(self._tasks):
            fingerprint, task = self._tasks[name]
            if (
                name not in wanted
                or wanted[name].SerializeToString(deterministic=True) != fingerprint
            ):
                task.cancel()
                del self._tasks[name]
        for name, check in wanted.items():
            if name in self._tasks:
                continue
            prepared = prepare(check, self.min_interval)
            if prepared.refusal:
                log.warning("check %s: %s", name, prepared.refusal)
            if check.prober == "grpc" and self.env.source_address:
                # grpcio offers no way to bind a client channel's local address.
                log.warning("check %s: grpc probes ignore --source-address", name)
            task = asyncio.create_task(self._loop(prepared), name=f"check:{name}")
            self._tasks[name] = (check.SerializeToString(deterministic=True), task)

    async def _loop(self, prepared: PreparedCheck) -> None:
        loop = asyncio.get_running_loop()
        interval = prepared.interval
        next_at = loop.time() + random.uniform(0, interval)
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            try:
                async with self._limit:
                    result = await run_probe(prepared, self.env)
                self.sink(result)
            except Exception:  # a bug must not silently end this check's schedule
                log.exception("check %s: probe round failed", prepared.name)
            next_at += interval
            behind = loop.time() - next_at
            if behind > 0:  # skip missed rounds instead of bursting
                next_at += interval * (int(behind // interval) + 1)

    async def stop(self) -> None:
        """Cancel every check loop and wait for them to finish."""
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
