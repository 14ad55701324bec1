"""The agent's session with a collector: register, receive checks, stream results.

One bidirectional stream per session. Results are read from the durable queue,
never from memory, so whatever the link does nothing is lost: a result leaves
the disk only when an Ack names it. After a reconnect the unacked backlog is
replayed in order while live results keep flowing: the sender alternates a live
batch and a backlog batch, so a long backlog never starves fresh data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from probemesh import __version__
from probemesh.agent.credentials import (
    REFUSED_CODES,
    RefusedBackoff,
    TokenSource,
    TokenUnavailable,
    transport_hint,
)
from probemesh.agent.probes import PROBERS
from probemesh.agent.queue import DurableQueue
from probemesh.agent.safety import AgentPolicy
from probemesh.errors import ConfigError
from probemesh.grpc_options import CHANNEL_OPTIONS
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD, encode_batch, serialize

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024 - 1024
BACKOFF_CAP = 30.0
ACK_HOLD = 10.0  # longest the collector may hold an Ack back (LinkSettings.ack_hold())
# Advanced tunables, environment only (not CLI options): faster dead-peer
# detection and reconnects for tests and for networks that need them.
ENV_DEAD_AFTER = "PROBEMESH_LINK_DEAD_AFTER"
ENV_KEEPALIVE = "PROBEMESH_LINK_KEEPALIVE"
ENV_BACKOFF_CAP = "PROBEMESH_LINK_BACKOFF_CAP"
ENV_ACK_HOLD = "PROBEMESH_LINK_ACK_HOLD"


def _env_seconds(name: str, default: float) -> float:
    """An advanced tunable from the environment (seconds); for tests and odd networks."""
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", name, raw, default)
        return default
    return value if value > 0 else default


class SessionLost(Exception):
    """The collector stopped answering (no message within the dead-peer window)."""


@dataclass(frozen=True)
class Identity:
    """Who the agent says it is in Hello; must match its token's binding."""

    agent_id: str
    country: str
    region: str = ""
    city: str = ""
    asn: int = 0


@dataclass
class LinkSettings:
    """Tunables of the link, with production defaults."""

    batch_size: int = 1000
    window: int = 8  # batches in flight without an Ack
    heartbeat_interval: float = 10.0
    # No Ack for this long while batches are in flight (or no message at all for
    # max(dead_after, 3 collector heartbeats)): the session is dead, reconnect.
    # Also bounds the Hello/Welcome handshake. PROBEMESH_LINK_DEAD_AFTER overrides.
    dead_after: float = field(default_factory=lambda: _env_seconds(ENV_DEAD_AFTER, 30.0))
    # gRPC keepalive ping interval and timeout; PROBEMESH_LINK_KEEPALIVE overrides.
    keepalive: float = field(default_factory=lambda: _env_seconds(ENV_KEEPALIVE, 10.0))
    # Longest reconnect backoff; PROBEMESH_LINK_BACKOFF_CAP overrides.
    backoff_cap: float = field(default_factory=lambda: _env_seconds(ENV_BACKOFF_CAP, BACKOFF_CAP))
    drain_timeout: float = 5.0  # on shutdown, wait this long for Acks
    tls: ChannelTLS | None = None  # None: plaintext
    server_name: str = ""
    # Announced in Hello: the agent reads files named in checks (inside --secrets-dir).
    secrets_dir_configured: bool = False
    # Longest the collector may hold an Ack back; PROBEMESH_LINK_ACK_HOLD overrides.
    ack_hold_max: float = field(default_factory=lambda: _env_seconds(ENV_ACK_HOLD, ACK_HOLD))

    def ack_hold(self, buffer_results: int) -> float:
        """How long the collector may hold an Ack back to answer several batches
        with one (Hello.ack_hold_seconds), for a buffer bounded at
        buffer_results: a third of dead_after at most, so that a collector that
        holds an Ack that long after the batch came still leaves two thirds of
        the dead-peer window for the batch's way there.

        0 when the buffer cannot hold a whole in-flight window (window x
        batch_size results): past twice its bound it drops sent results, and
        it would drop, and count as dropped, results the collector applied
        and holds the Acks of."""
        if buffer_results < self.window * self.batch_size:
            return 0.0
        return min(self.ack_hold_max, self.dead_after / 3)


class ChannelTLS:
    """The CA, client certificate and key behind the channel, re-read when they change.

    Like Prometheus, the files' modification times are checked at use: every
    (re)connect builds credentials from the current files, so rotated
    certificates take effect at the next connection without a restart. A file
    caught half-written keeps the previous credentials until the next try.
    """

    def __init__(self, ca: Path, cert: Path | None = None, key: Path | None = None) -> None:
        self.files = (ca, cert, key)
        self._stamp: tuple[tuple[int, int] | None, ...] = ()
        self._credentials: grpc.ChannelCredentials | None = None
        self.credentials()  # unreadable files fail at start-up, not at the first connect

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            stamp = tuple(_file_stamp(path) for path in self.files)
            if self._credentials is not None and stamp == self._stamp:
                return self._credentials
            ca, cert, key = (path.read_bytes() if path else None for path in self.files)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        except OSError as exc:
            if self._credentials is None:
                raise ConfigError(f"cannot read TLS file {exc.filename}: {exc.strerror}") from None
            log.warning(
                "cannot re-read TLS file %s (%s); keeping the previous one",
                exc.filename,
                exc.strerror,
            )
            return self._credentials
        if self._credentials is not None:
            log.info("collector TLS files changed; using them from this connection on")
        self._stamp, self._credentials = stamp, credentials
        return credentials


def _file_stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    info = path.stat()
    return info.st_mtime_ns, info.st_size


@dataclass
class _Session:
    """Per-stream state; reset on every reconnect."""

    call: grpc.aio.StreamStreamCall
    last_recv: float
    inflight: dict[int, int] = field(default_factory=dict)
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    max_batch: int = 1000
    max_bytes: int = DEFAULT_MAX_BATCH_BYTES
    idle_dead_after: float = 30.0  # no message at all for this long, nothing in flight
    evidence: bool = False  # the collector announced the evidence feature
    # Last Ack, or when the in-flight window last became non-empty: heartbeats
    # alone must not keep alive a collector that stopped acknowledging.
    last_progress: float = 0.0
    # A collector clock probe to answer: (its timestamp, when it arrived, monotonic).
    echo: tuple[float, float] | None = None
    echo_due: asyncio.Event = field(default_factory=asyncio.Event)


class CollectorLink:
    """Keeps a session with one of the collectors alive, failing over in order."""

    def __init__(
        self,
        collectors: list[str],
        identity: Identity,
        token: str | TokenSource,
        queue: DurableQueue,
        new_results: asyncio.Event,
        on_checks: Callable[[pb.Checks], None],
        settings: LinkSettings | None = None,
        on_evidence_request: Callable[[pb.EvidenceRequest], None] | None = None,
        policy: AgentPolicy | None = None,
    ) -> None:
        self.collectors = collectors
        self.policy = policy or AgentPolicy()
        self.identity = identity
        self.token = token if isinstance(token, TokenSource) else TokenSource(token)
        self.refused = RefusedBackoff(self.token)
        self._sent_token = ""  # the token of the last attempt
        self.queue = queue
        self.new_results = new_results
        self.on_checks = on_checks
        self.settings = settings or LinkSettings()
        self.on_evidence_request = on_evidence_request
        self.connected = asyncio.Event()
        self.current: str | None = None
        # Evidence reports wait here for the next session; they are advisory,
        # so the queue is small and a full one drops the newest (logged).
        self.reports: asyncio.Queue[pb.EvidenceReport] = asyncio.Queue(maxsize=64)
        self._report_ready = asyncio.Event()

    def send_report(self, report: pb.EvidenceReport) -> None:
        """Queue an evidence report for the collector (sent outside the result stream)."""
        try:
            self.reports.put_nowait(report)
        except asyncio.QueueFull:
            log.warning("evidence report for %s dropped: report queue full", report.check)
            return
        self._report_ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, stream, reconnect with exponential backoff and full jitter until stop."""
        attempt = 0
        index = 0
        while not stop.is_set():
            address = self.collectors[index % len(self.collectors)]
            welcomed = False
            refused_delay = 0.0
            try:
                await self._session_until_stop(address, stop)
            except TokenUnavailable as exc:
                refused_delay = self.refused.on_refusal(
                    address, grpc.StatusCode.UNAUTHENTICATED, "no token", str(exc)
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in REFUSED_CODES:
                    refused_delay = self.refused.on_refusal(
                        address, exc.code(), exc.details() or ""
                    )
                else:
                    hint = transport_hint(
                        exc.details() or "",
                        self.settings.tls is not None,
                        self.settings.tls is not None and self.settings.tls.files[1] is not None,
                    )
                    log.warning(
                        "collector %s: %s: %s%s",
                        address, exc.code().name, exc.details(), f" ({hint})" if hint else "",
                    )  # fmt: skip
            except (SessionLost, ConnectionError, OSError) as exc:
                log.warning("collector %s: session lost: %s", address, exc)
            except TimeoutError:
                log.warning("collector %s: no Welcome in %gs", address, self.settings.dead_after)
            except Exception:  # a bug must not end the link: results would pile up unsent
                log.exception("collector %s: unexpected error in the session", address)
            finally:
                welcomed = self.current is not None
                self.connected.clear()
                self.current = None
            if stop.is_set():
                return
            if refused_delay:
                index += 1  # another collector may know the token; the delay stands
                await self._wait_for_new_token(refused_delay, stop)
                continue
            if welcomed:
                attempt = 0  # the collector was up: come back quickly (jittered)
            index += 1  # fail over to the next collector
            # Back off per full round over the collector list, so a dead first
            # collector costs one fast failure, not a growing wait.
            exponent = attempt // len(self.collectors)
            delay = random.uniform(0, min(self.settings.backoff_cap, BACKOFF_BASE * 2**exponent))
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _wait_for_new_token(self, delay: float, stop: asyncio.Event) -> None:
        """Wait out a refusal's delay, cut short by stop or by a new token in the file."""
        deadline = time.monotonic() + delay
        while not stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(1.0, deadline - time.monotonic()))
            try:
                if self.token.get() != self._sent_token:
                    log.info("token changed; connecting again")
                    return
            except TokenUnavailable:
                pass

    async def _session_until_stop(self, address: str, stop: asyncio.Event) -> None:
        """Run a session; on stop, a connected one drains, a handshake is abandoned."""
        task = asyncio.create_task(self._session(address, stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not self.connected.is_set():
                task.cancel()  # stopping while (re)connecting: nothing is in flight
            await asyncio.wait({task})
            if not task.cancelled():
                task.result()  # re-raise what ended the session
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _channel(self, address: str) -> grpc.aio.Channel:
        keepalive_ms = int(self.settings.keepalive * 1000)
        options: list[tuple[str, int | str]] = [
            o for o in CHANNEL_OPTIONS if o[0] not in _KEEPALIVE_KEYS
        ]
        options += [
            ("grpc.keepalive_time_ms", keepalive_ms),
            ("grpc.keepalive_timeout_ms", keepalive_ms),
        ]
        if self.settings.tls is None:
            return grpc.aio.insecure_channel(address, options=options)
        if self.settings.server_name:
            options.append(("grpc.ssl_target_name_override", self.settings.server_name))
        return grpc.aio.secure_channel(address, self.settings.tls.credentials(), options=options)

    async def _session(self, address: str, stop: asyncio.Event) -> None:
        async with self._channel(address) as channel:
            method = channel.stream_stream(
                SERVICE_METHOD,
                request_serializer=serialize,
                response_deserializer=pb.CollectorMessage.FromString,
            )
            self._sent_token = self.token.get()
            call = method(metadata=(("authorization", f"Bearer {self._sent_token}"),))
            try:
                # The whole handshake is bounded: a dropped SYN would otherwise
                # hold the write for gRPC's 20 s connect timeout, or longer.
                async with asyncio.timeout(self.settings.dead_after):
                    await call.write(self._hello())
                    first = await call.read()
                if first is grpc.aio.EOF:  # a non-OK status raises from read() instead
                    raise SessionLost("collector closed the stream before Welcome")
                if first.WhichOneof("payload") != "welcome":
                    raise SessionLost(f"expected Welcome, got {first.WhichOneof('payload')}")
                welcome = first.welcome
                session = _Session(call, time.monotonic())
                if welcome.collector_time:
                    # Answered before any batch: the collector's first offset
                    # estimate is in place before it applies a single result.
                    session.echo = (welcome.collector_time, session.last_recv)
                session.max_batch = min(
                    self.settings.batch_size, welcome.max_batch_results or 10**9
                )
                if welcome.max_message_bytes:
                    # Leave room for the batch's own framing.
                    session.max_bytes = max(4096, welcome.max_message_bytes - 1024)
                session.idle_dead_after = max(
                    self.settings.dead_after, 3.0 * (welcome.heartbeat_interval_seconds or 10)
                )
                if welcome.acked_seq > self.queue.last_seq:
                    # The collector remembers more than this agent ever produced:
                    # the state dir was reset. Acking would delete fresh results.
                    log.error(
                        "collector %s has acked_seq=%d beyond this agent's last_seq=%d "
                        "(state dir reset?); not deleting anything",
                        address,
                        welcome.acked_seq,
                        self.queue.last_seq,
                    )
                elif welcome.acked_seq:
                    await self.queue.in_thread(self.queue.ack, welcome.acked_seq)
                # An older collector would only pay for reports it ignores.
                session.evidence = EVIDENCE in welcome.features
                self.current = address
                self.refused.accepted()
                self.connected.set()
                log.info("connected to collector %s (acked_seq=%d)", address, welcome.acked_seq)
                reader = asyncio.create_task(self._read(session))
                try:
                    await self._send(session, stop, reader)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            finally:
                call.cancel()

    def _hello(self) -> pb.AgentMessage:
        ident = self.identity
        return pb.AgentMessage(
            hello=pb.Hello(
                agent_id=ident.agent_id,
                country=ident.country,
                region=ident.region,
                city=ident.city,
                asn=ident.asn,
                version=__version__,
                capabilities=sorted(PROBERS),
                last_seq=self.queue.last_seq,
                secrets_dir_configured=self.settings.secrets_dir_configured,
                features=FEATURES,
                min_interval_seconds=self.policy.min_interval,
                allow_private_targets=self.policy.allow_private_targets,
                queue_max_age_seconds=self.queue.max_age,
                ack_hold_seconds=self.settings.ack_hold(self.queue.max_results),
            )
        )

    async def _read(self, session: _Session) -> None:
        """Apply what the collector sends: checks, acks, heartbeats."""
        while True:
            message = await session.call.read()
            if message is grpc.aio.EOF:
                return
            session.last_recv = time.monotonic()
            kind = message.WhichOneof("payload")
            if kind == "checks":
                self.on_checks(message.checks)
            elif kind == "heartbeat" and message.heartbeat.timestamp:
                session.echo = (message.heartbeat.timestamp, session.last_recv)
                session.echo_due.set()
            elif kind == "ack":
                ack = message.ack
                # Only batches in flight: an Ack cannot make the agent delete
                # (or work through) ranges it never sent.
                batches = [(ack.first_seq, ack.last_seq)] + [
                    (b.first_seq, b.last_seq)
                    for b in ack.more[: self.settings.window]
                    if session.inflight.get(b.first_seq) == b.last_seq - b.first_seq + 1
                ]
                await self.queue.in_thread(self.queue.ack, ack.seq, batches)
                for first, _ in batches:
                    session.inflight.pop(first, None)
                session.last_progress = time.monotonic()
                session.acked.set()
            elif kind == "evidence_request" and self.on_evidence_request is not None:
                self.on_evidence_request(message.evidence_request)

    async def _send(
        self, session: _Session, stop: asyncio.Event, reader: asyncio.Task[None]
    ) -> None:
        """Alternate live and backlog batches within the in-flight window."""
        queue = self.queue
        live_from = queue.last_seq + 1
        live_after = live_from - 1
        backlog_after = max(queue.floor_seq - 1, 0)
        last_sent = time.monotonic()
        drain_deadline: float | None = None
        while True:
            if reader.done():
                reader.result()  # re-raise the reader's error, if any
                raise SessionLost("collector ended the stream")
            now = time.monotonic()
            if session.inflight:
                waited = now - session.last_progress
                if waited > self.settings.dead_after:
                    raise SessionLost(f"no Ack from collector for {waited:.1f}s")
            elif now - session.last_recv > session.idle_dead_after:
                raise SessionLost(f"no message from collector for {now - session.last_recv:.1f}s")
            if stop.is_set():
                if drain_deadline is None:
                    drain_deadline = now + self.settings.drain_timeout
                    # The collector may hold Acks back: ask for them now.
                    await session.call.write(
                        pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time(), ack_now=True))
                    )
                if (queue.depth == 0 and not session.inflight) or now > drain_deadline:
                    return
            if session.echo is not None:
                await self._answer_clock_probe(session)
                last_sent = time.monotonic()
            # Clear before reading the queue, so a flush in between still wakes us.
            session.acked.clear()
            self.new_results.clear()
            self._report_ready.clear()
            sent = False
            while not self.reports.empty():
                report = self.reports.get_nowait()
                if session.evidence:
                    await session.call.write(pb.AgentMessage(evidence=report))
                    sent = True
            if len(session.inflight) < self.settings.window:
                rows = await queue.in_thread(queue.read, live_after, None, session.max_batch)
                if rows:
                    live_after = await self._write_batch(session, rows)
                    sent = True
            if backlog_after < live_from - 1 and len(session.inflight) < self.settings.window:
                rows = await queue.in_thread(
                    queue.read, backlog_after, live_from, session.max_batch
                )
                if rows:
                    backlog_after = await self._write_batch(session, rows)
                    sent = True
                else:
                    backlog_after = live_from - 1
            if sent:
                last_sent = time.monotonic()
                continue
            if now - last_sent >= self.settings.heartbeat_interval:
                await session.call.write(
                    pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time()))
                )
                last_sent = now
            # Draining, stop is set for good: waiting on it too would spin the loop
            # (and a core the collector needs for the Acks) until the deadline.
            events = (session.acked, session.echo_due, self.new_results, self._report_ready)
            waiters = [
                asyncio.ensure_future(e.wait())
                for e in (events if drain_deadline is not None else (*events, stop))
            ]
            timeout = 1.0 if drain_deadline is None else min(1.0, drain_deadline - now)
            try:
                await asyncio.wait(
                    [*waiters, reader],
                    timeout=max(0.0, timeout),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _answer_clock_probe(self, session: _Session) -> None:
        """Echo the collector's clock probe with the time we held it (NTP-style)."""
        assert session.echo is not None
        probe, arrived = session.echo
        session.echo = None
        session.echo_due.clear()
        heartbeat = pb.Heartbeat(
            timestamp=time.time(),
            echo_timestamp=probe,
            echo_held_seconds=time.monotonic() - arrived,
        )
        await session.call.write(pb.AgentMessage(heartbeat=heartbeat))

    async def _write_batch(self, session: _Session, rows: list[tuple[int, bytes]]) -> int:
        """Send rows (trimmed to the collector's message limit); return the last seq sent."""
        rows = _within_bytes(rows, session.max_bytes)
        first, last = rows[0][0], rows[-1][0]
        if not session.inflight:
            # Waiting for an Ack starts now, not at the last (possibly old) Ack.
            session.last_progress = time.monotonic()
        await self.queue.in_thread(self.queue.mark_sent, first, last)
        session.inflight[first] = len(rows)
        await session.call.write(encode_batch(first, self.queue.floor_seq, [p for _, p in rows]))
        return last


def _within_bytes(rows: list[tuple[int, bytes]], limit: int) -> list[tuple[int, bytes]]:
    """The leading rows whose encoded size fits the collector's message limit (at least one)."""
    size = 0
    for i, (_, payload) in enumerate(rows):
        size += len(payload) + 8  # field tag and length prefix
        if size > limit and i:
            return rows[:i]
    return rows


# Protocol features this agent implements (Hello.features): it answers clock probes,
# and it sends evidence reports and answers evidence requests.
EVIDENCE = "evidence"
FEATURES = ["clock_echo", EVIDENCE]
_KEEPALIVE_KEYS = {"grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms"}
