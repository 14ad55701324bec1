"""Wire the agent together: queue, scheduler, collector link, metrics endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from probemesh.agent.credentials import TokenSource
from probemesh.agent.link import CollectorLink, Identity, LinkSettings
from probemesh.agent.metrics import AgentMetrics
from probemesh.agent.probes.net import ProbeEnv
from probemesh.agent.queue import DEFAULT_MAX_AGE, DEFAULT_MAX_RESULTS, DurableQueue
from probemesh.agent.safety import AddressPolicy, AgentPolicy
from probemesh.agent.scheduler import Scheduler
from probemesh.agent.secrets import SecretFiles
from probemesh.errors import StateError
from probemesh.httpserver import metrics_handler, start_site
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.2
"""Seconds between flushes of new results to disk and the link, on the wall clock's grid."""


@dataclass
class AgentOptions:
    """Everything the agent needs, already validated by the CLI."""

    collectors: list[str]
    identity: Identity
    token: str | TokenSource
    state_dir: Path
    metrics_listen: str = ""
    source_address: str = ""
    allow_private_targets: bool = False
    secrets_dir: Path | None = None
    min_interval: float = 5.0
    max_concurrency: int = 256
    flush_interval: float = FLUSH_INTERVAL
    queue_max_results: int = DEFAULT_MAX_RESULTS
    queue_max_age: float = DEFAULT_MAX_AGE
    link: LinkSettings = field(default_factory=LinkSettings)


class Agent:
    """Probes on schedule, persists every result, streams them to a collector."""

    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.queue = DurableQueue(
            options.state_dir / "results.sqlite3", options.queue_max_results, options.queue_max_age
        )
        self.pending: list[tuple[float, bytes]] = []
        self.new_results = asyncio.Event()
        self._flush_now = asyncio.Event()  # a batch's worth of results is pending
        self._flush_lock = asyncio.Lock()
        env = ProbeEnv(
            options.source_address,
            AddressPolicy(options.allow_private_targets),
            SecretFiles(options.secrets_dir),
        )
        self.scheduler = Scheduler(
            env, self._on_result, options.min_interval, options.max_concurrency
        )
        self.link = CollectorLink(
            options.collectors,
            options.identity,
            options.token,
            self.queue,
            self.new_results,
            self._on_checks,
            options.link,
            on_evidence_request=self.scheduler.request_evidence,
            policy=AgentPolicy(options.min_interval, options.allow_private_targets),
        )
        self.scheduler.on_report = self.link.send_report
        self.metrics = AgentMetrics(self.queue, options.identity.agent_id, options.identity.country)
        self.registry = CollectorRegistry()
        self.registry.register(self.metrics)

    def _on_result(self, result: pb.Result) -> None:
        self.pending.append((result.timestamp, result.SerializeToString()))
        if len(self.pending) >= self.options.link.batch_size:
            self._flush_now.set()

    def _on_checks(self, checks: pb.Checks) -> None:
        self.scheduler.update(checks.checks, checks.revision)
        self.metrics.checks = len(checks.checks)
        log.info("received %d checks (revision %d)", len(checks.checks), checks.revision)

    async def flush(self) -> None:
        """Persist pending results (batched by size and time) and wake the sender.

        The write runs in the queue's thread, so probes keep their timing while
        the disk works. If the disk refuses the write, the batch goes back to
        memory and the next flush retries it; beyond the queue's bound the
        oldest results go and are counted as dropped, as they would be on disk.
        Nothing leaves silently.
        """
        async with self._flush_lock:
            if not self.pending:
                return
            batch, self.pending = self.pending, []
            try:
                await self.queue.in_thread(self.queue.append, batch)
            except (sqlite3.Error, StateError) as exc:
                self.pending[:0] = batch
                excess = len(self.pending) - self.options.queue_max_results
                if excess > 0:
                    del self.pending[:excess]
                    self.queue.unsaved_dropped += excess
                log.error(
                    "cannot persist %d results (kept in memory, will retry): %s",
                    len(self.pending),
                    exc,
                )
                return
            self.new_results.set()

    async def _flush_loop(self) -> None:
        """Flush at each multiple of flush_interval on the wall clock, or at once
        when a batch's worth is pending.

        The grid is the wall clock's, not this process's: agents whose clocks are
        in sync send their results together, and the collector takes their
        messages a burst at a time. Woken for each message alone, it spends as
        much on waking as on the message (bench/grpc_wakeups.py).
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._flush_now.wait(), until_tick(self.options.flush_interval, time.time())
                )
            self._flush_now.clear()
            await self.flush()
            self.metrics.connected = self.link.connected.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until stop is set, then flush to disk and drain what the link can send."""
        runner = None
        if self.options.metrics_listen:
            app = web.Application()
            app.router.add_get("/metrics", metrics_handler(self.registry))
            runner = await start_site(app, self.options.metrics_listen)
        flusher = asyncio.create_task(self._flush_loop())
        # The link gets its own stop, set only after the last flush: told to stop
        # at the same time, it could find the queue empty and leave before the
        # final results reached the disk, so they would wait for the next start.
        link_stop = asyncio.Event()
        link_task = asyncio.create_task(self.link.run(link_stop))
        try:
            await stop.wait()
            await self.scheduler.stop()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self.flush()
            link_stop.set()
            # The link drains in-flight results before returning; bound the wait
            # in case a write is stuck behind HTTP/2 flow control.
            try:
                await asyncio.wait_for(
                    asyncio.shield(link_task), self.options.link.drain_timeout + 5
                )
            except TimeoutError:
                log.warning("collector did not take the last results in time; they stay on disk")
        finally:
            for task in (flusher, link_task):
                task.cancel()
            await asyncio.gather(flusher, link_task, return_exceptions=True)
            await self.flush()
            if runner is not None:
                await runner.cleanup()
            await asyncio.to_thread(self.queue.close)
        log.info(
            "agent stopped: produced=%d acked=%d queued=%d",
            self.queue.counters.produced,
            self.queue.counters.acked,
            self.queue.depth,
        )


def until_tick(step: float, now: float) -> float:
    """Seconds from now to the wall clock's next multiple of step (> 0; step > 0)."""
    return step - now % step


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set stop; a second signal is ignored while draining."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_agent(options: AgentOptions) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)
    await Agent(options).run(stop)
