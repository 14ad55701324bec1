"""The gRPC servicer: authenticate, register, push checks, feed ingest, ack."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import NoReturn

import grpc

from probemesh import __version__
from probemesh.checks import ChecksFile, CheckSpec
from probemesh.collector import runnable
from probemesh.collector.admission import Admission, Slot
from probemesh.collector.assignments import AssignmentHistory
from probemesh.collector.clock import CLOCK_ECHO, MAX_HELD_SECONDS
from probemesh.collector.database import DatabaseError
from probemesh.collector.diagnosis import EVIDENCE_FEATURE
from probemesh.collector.ingest import Ingest
from probemesh.collector.leases import POLL_WINDOW, stream_taken_message
from probemesh.collector.limits import RateLimiter, SecurityLimits
from probemesh.collector.sessions import HEARTBEAT_DUE, Session, SessionRegistry
from probemesh.collector.state import AgentInfo, MeshState
from probemesh.collector.streamlog import RefusalLog, peer, transport
from probemesh.collector.streamlog import log as streams_log
from probemesh.collector.tokens import TokenStore
from probemesh.collector.work_lane import WorkLane
from probemesh.errors import AuthError
from probemesh.grpc_options import MAX_MESSAGE_BYTES
from probemesh.identity import valid_region
from probemesh.v1 import mesh_pb2 as pb
from probemesh.v1 import mesh_pb2_grpc

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
TOKEN_TOUCH_EVERY = 60.0  # seconds between two writes of a token's last use
HEARTBEAT_INTERVAL = 10.0  # the longest a stream stays silent towards its agent
HEARTBEAT_GRID = 0.1  # seconds: heartbeats due within the same step go out together
CLOCK_PROBE_EVERY = 60.0
"""Seconds between two clock probes on a busy stream once the early ones are
in (an idle stream's heartbeats are probes too). A free-running clock drifts by
milliseconds a minute, and results are corrected only beyond a 1 s offset."""
EARLY_CLOCK_PROBES = 3
"""Clock probes sent one heartbeat_interval apart after Welcome. The Welcome's
own sample may be taken while a reconnecting fleet queues for set-up, its round
trip long and its offset off by half of it; these correct it within 30 s."""
DEAD_AFTER = 30.0
DEFAULT_CLOCK_THRESHOLD = 1.0
FEATURES = [CLOCK_ECHO, EVIDENCE_FEATURE]
_MAX_FLOOR = 86400.0 * 366  # an interval floor beyond a year is no floor anyone set
_VERSION_RE = re.compile(r"^[A-Za-z0-9.+_-]{0,64}$")
REJECT_REASONS = (
    "unauthenticated", "cert_identity", "identity", "invalid_hello", "protocol",
    "rate_limited", "message_too_large", "batch_too_large", "malformed_batch", "unknown_evidence",
    "database",
)  # fmt: skip
"""Streams and messages the servicer refuses (rate_limited counts results)."""


class ProbeMeshService(mesh_pb2_grpc.ProbeMeshServicer):
    """Implements probemesh.v1.ProbeMesh/Connect."""

    def __init__(
        self,
        state: MeshState,
        ingest: Ingest,
        tokens: TokenStore,
        sessions: SessionRegistry,
        checks: Callable[[], ChecksFile],
        history: AssignmentHistory,
        lane: WorkLane | None = None,
    ) -> None:
        self.state = state
        self.ingest = ingest
        self.tokens = tokens
        self.sessions = sessions
        self.checks = checks
        self.history = history
        self.admission = Admission()
        self.lane = lane or WorkLane()  # decodes large messages
        self.rejected: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self.refusal_log = RefusalLog()
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.dead_after = DEAD_AFTER
        self.clock_probe_every = CLOCK_PROBE_EVERY
        self.clock_threshold = DEFAULT_CLOCK_THRESHOLD
        self._protos_of: ChecksFile | None = None
        self._protos: dict[str, tuple[CheckSpec, pb.Check]] = {}
        self.configure(SecurityLimits(), MAX_MESSAGE_BYTES)

    def configure(self, limits: SecurityLimits, max_message_bytes: int) -> None:
        """Apply the security limits: rate limit, message size, certificate identity."""
        self.limits = limits
        self.max_message_bytes = max_message_bytes
        self.limiter = RateLimiter(limits.rate_limit, limits.rate_burst, limits.rate_max_delay)
        self._warned_files: set[tuple[str, str]] = set()

    async def Connect(
        self,
        request_iterator: object,  # unread: the stream reads with context.read
        context: grpc.aio.ServicerContext,
    ) -> None:
        """One agent's stream: admit it, send Welcome and its checks, then what
        its session queues, while the session's reader feeds ingest.

        A coroutine on gRPC's reader-writer API (context.read and write), not an
        async generator: gRPC's loop over a generator holds the last message it
        sent until the next one (the Checks message, about 1 KB of C heap a
        check, until the first heartbeat), and the generators it and the request
        iterator add are frames every stream keeps for its whole life. So the
        messages are read with context.read, and nothing this frame keeps while
        it waits holds a message (docs/architecture.md).
        """
        # Set-up after the Hello runs in a bounded slot (see admission.py);
        # released once the assignment is recorded, or when the stream ends.
        slot = self.admission.slot()
        try:
            session = await self._open(context, slot)
            try:
                if await self._start(context, session, slot):
                    outbox = session.outbox
                    while (message := await outbox.get()) is not None:
                        if message is HEARTBEAT_DUE:  # stamped as it goes out, not when due
                            message = pb.CollectorMessage(
                                heartbeat=pb.Heartbeat(timestamp=session.clock_probe())
                            )
                        await context.write(message)
                        session.last_sent = time.monotonic()
                        del message  # not kept while the stream idles: ~0.8 KB of C heap
            finally:
                await self._close(context, session)
        finally:
            slot.release()
        if session.end_code is not None and session.end_code != grpc.StatusCode.OK:
            await context.abort(session.end_code, session.end_details)

    async def _open(self, context: grpc.aio.ServicerContext, slot: Slot) -> Session:
        """Admit the stream (token, Hello, lease, a set-up slot) and register its session."""
        token_id, agent, last_seq = await self._admit(context)
        try:
            epoch = await self.ingest.take_lease(agent)
        except Exception as exc:  # the database is down or refuses: the agent tries another
            log.warning("cannot take the lease of agent %s: %s", agent.agent_id, exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "collector cannot take the agent's lease; retry"
            )
        await slot.acquire()
        self.ingest.reconcile(agent.agent_id, last_seq)
        session = Session(agent, token_id, epoch)
        streams_log.info(
            "agent %s (%s) connected from %s over %s, version %s",
            agent.agent_id, agent.country, peer(context), transport(context), agent.version or "?",
        )  # fmt: skip
        self.sessions.open(session)
        agent.connected = True
        return session

    async def _start(self, context: grpc.aio.ServicerContext, session: Session, slot: Slot) -> bool:
        """Assign the agent its checks, start its reader, send Welcome, and the
        Checks once the assignment is stored; False if it could not be.

        The Checks message lives in this frame only, which ends once it is sent."""
        # Assign the checks before anything can be ingested: a live result of
        # this session names the revision recorded here.
        checks, recorded = self.checks_message(session)
        session.reader = asyncio.create_task(self._pump(context, session))
        await context.write(
            pb.CollectorMessage(
                welcome=pb.Welcome(
                    collector_version=__version__,
                    acked_seq=self.ingest.mark_of(session.agent.agent_id),
                    heartbeat_interval_seconds=int(self.heartbeat_interval),
                    max_batch_results=self.ingest.limits.max_batch_results,
                    max_message_bytes=self.max_message_bytes,
                    collector_time=session.clock_probe(),
                    features=FEATURES,
                )
            )
        )
        if not await self._stored(session, recorded):
            return False
        slot.release()
        await context.write(checks)
        session.last_sent = time.monotonic()
        if CLOCK_ECHO in session.agent.features:
            session.early_probes = EARLY_CLOCK_PROBES
            session.probe_due = session.last_sent + self.heartbeat_interval
        self._heartbeat_later(session)
        return True

    async def _close(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        """Stop the session's heartbeats and reader, unregister it, log why it ended."""
        session.stop_timers()
        if session.reader is not None:
            session.reader.cancel()
            await asyncio.gather(session.reader, return_exceptions=True)
        self.sessions.close(session)
        agent = session.agent
        streams_log.info(
            "agent %s (%s) from %s disconnected after %s: %s",
            agent.agent_id, agent.country, peer(context),
            _duration(time.monotonic() - session.opened),
            session.end_details or "the stream ended",
        )  # fmt: skip

    def _heartbeat_later(self, session: Session) -> None:
        """Arm the session's heartbeat timer for when the stream will have been
        silent for heartbeat_interval or its clock probe is due, whichever
        comes first, rounded up to the next HEARTBEAT_GRID step.

        One timer per stream, re-armed when it fires, not one per outgoing
        message: waiting for the outbox with a timeout cost a task and a timer
        for every Ack. It fires at least once a heartbeat_interval, so a silent
        agent is found as soon as ever. On the grid, the timers of a thousand
        streams wake the collector ten times a second, not a hundred: waking an
        idle process costs more CPU than a heartbeat (docs/benchmarks.md)."""
        due = min(session.last_sent + self.heartbeat_interval, session.probe_due)
        session.heartbeat_timer = asyncio.get_running_loop().call_at(
            math.ceil(due / HEARTBEAT_GRID) * HEARTBEAT_GRID, self._heartbeat, session
        )

    def _heartbeat(self, session: Session) -> None:
        """End the stream of an agent silent for dead_after; else send a
        heartbeat if the stream was silent for heartbeat_interval or a clock
        probe is due (or, when only silent, the Acks it holds back), and re-arm.

        A busy stream's Acks already tell the agent the collector is alive, so
        it gets only the clock probes; every heartbeat is one, as it carries
        the collector's time."""
        now = time.monotonic()
        if not session.held_back and now - session.last_recv > self.dead_after:
            session.end(grpc.StatusCode.UNAVAILABLE, "no message from agent; presumed dead")
            return
        soon = now + 0.001  # the timer's time, rounded onto the grid, may be a hair early
        silent = soon > session.last_sent + self.heartbeat_interval
        probe = soon > session.probe_due
        if silent and not probe and session.held:
            # Held Acks tell the agent that the collector is alive as well as
            # a heartbeat, which would also draw the agent's echo.
            session.send_held_acks()
            session.last_sent = now
        elif silent or probe:
            session.send(HEARTBEAT_DUE)
            session.last_sent = now
            if session.early_probes:
                session.early_probes -= 1
            if session.early_probes:
                session.probe_due = now + self.heartbeat_interval
            elif session.probe_due < math.inf:
                session.probe_due = now + self.clock_probe_every
        self._heartbeat_later(session)

    async def _stored(self, session: Session, recorded: Future[object] | None) -> bool:
        """Wait for the history's write of the session's assignment; on a database
        failure end the stream with UNAVAILABLE (the agent reconnects and the
        write is tried again) and count it, instead of letting the error escape
        as UNKNOWN."""
        if recorded is None:
            return True
        try:
            await asyncio.wrap_future(recorded)
        except Exception as exc:
            self.rejected["database"] += 1
            log.warning("cannot record the checks of agent %s: %s", session.agent.agent_id, exc)
            session.end(grpc.StatusCode.UNAVAILABLE, "collector cannot record the checks; retry")
            return False
        return True

    async def close_taken_over(self) -> None:
        """Close the streams of agents whose lease another collector took lately.

        The fence refuses their batches anyway; this ends a stream that sends
        none (the agent left it half-open) within a poll, so the agent shows
        connected on one collector only.
        """
        store = self.ingest.store
        since = time.time() - POLL_WINDOW
        rows = await asyncio.wrap_future(store.worker.submit(store.recent_leases, since))
        leases = self.ingest.leases
        for agent_id, row in rows.items():
            if row.holder == leases.holder:
                continue
            if row.epoch > leases.epochs.get(agent_id, row.epoch):
                self.ingest.lease_lost(agent_id, row)
            session = self.sessions.by_agent.get(agent_id)
            if session is not None and row.epoch > session.epoch:
                session.end(grpc.StatusCode.ABORTED, stream_taken_message(agent_id, row))

    async def _refuse(
        self,
        context: grpc.aio.ServicerContext,
        key: str,
        reason: str,
        code: grpc.StatusCode,
        details: str,
        note: str = "",
    ) -> NoReturn:
        """Count, log (rate-limited per agent) and abort a stream we will not serve."""
        self.rejected[reason] += 1
        self.refusal_log.refused(key, peer(context), reason, note or details)
        await context.abort(code, details)
        raise AssertionError("unreachable: abort raises")

    async def _admit(self, context: grpc.aio.ServicerContext) -> tuple[str, AgentInfo, int]:
        """Check the token and the Hello; abort with the right status otherwise."""
        metadata = dict(context.invocation_metadata() or ())
        header = str(metadata.get("authorization", ""))
        token = header.removeprefix("Bearer ").strip()
        # Before the token is verified, name the stream by the token's (public) id.
        parts = token.split("_")
        key = f"token {parts[1][:16]}" if len(parts) >= 3 else f"peer {peer(context)}"
        if not header.startswith("Bearer "):
            await self._refuse(
                context, key, "unauthenticated", grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token",
            )  # fmt: skip
        try:
            binding = await self.tokens.in_thread(self.tokens.verify, token)
        except AuthError as exc:
            await self._refuse(
                context, key, "unauthenticated", grpc.StatusCode.UNAUTHENTICATED, str(exc)
            )
        except DatabaseError as exc:  # the agent retries, here or at another collector
            await self._refuse(
                context, key, "database", grpc.StatusCode.UNAVAILABLE,
                "collector cannot read its database; retry", str(exc),
            )  # fmt: skip
        key = f"agent {binding.agent_id}"
        if self.limits.require_cert_identity:
            names = _certificate_names(context)
            if names is not None and binding.agent_id not in names:
                await self._refuse(
                    context, key, "cert_identity", grpc.StatusCode.PERMISSION_DENIED,
                    f"client certificate does not name agent {binding.agent_id!r} (CN or SAN)",
                    f"token {binding.token_id} came with a client certificate for "
                    f"{sorted(names)[:4]}",
                )  # fmt: skip
        try:
            data = await asyncio.wait_for(context.read(), HELLO_TIMEOUT)
            first = None if data is grpc.aio.EOF else pb.AgentMessage.FromString(data)
        except TimeoutError:
            first = None
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:  # bytes that do not parse: no traceback per hostile stream
            await self._refuse(
                context, key, "protocol", grpc.StatusCode.INVALID_ARGUMENT,
                f"cannot read Hello: {type(exc).__name__}",
            )  # fmt: skip
        if first is None or first.WhichOneof("payload") != "hello":
            await self._refuse(
                context, key, "protocol", grpc.StatusCode.INVALID_ARGUMENT,
                "expected Hello as the first message",
            )  # fmt: skip
        hello = first.hello
        if hello.agent_id != binding.agent_id or hello.country != binding.country:
            await self._refuse(
                context, key, "identity", grpc.StatusCode.PERMISSION_DENIED,
                f"token is bound to agent {binding.agent_id!r} in {binding.country}",
                f"token {binding.token_id} bound to {binding.agent_id}/{binding.country} "
                f"was presented as {hello.agent_id[:64]!r}/{hello.country[:8]!r}",
            )  # fmt: skip
        if (
            not valid_region(hello.region)
            or not valid_region(hello.city)
            or not _VERSION_RE.match(hello.version)
            or not 0 <= hello.queue_max_age_seconds < math.inf  # NaN compares False
            or not 0 <= hello.ack_hold_seconds < math.inf
        ):
            await self._refuse(
                context, key, "invalid_hello", grpc.StatusCode.INVALID_ARGUMENT,
                "Hello: invalid region, city, version, queue_max_age_seconds or ack_hold_seconds",
            )  # fmt: skip
        self.tokens.touch_later(binding.token_id)
        agent = self.state.agents.get(hello.agent_id)
        if agent is None:
            agent = self.state.agents[hello.agent_id] = AgentInfo(hello.agent_id, hello.country)
        agent.region, agent.city, agent.asn, agent.version, agent.queue_max_age = (
            hello.region,
            hello.city,
            hello.asn,
            hello.version,
            hello.queue_max_age_seconds,
        )
        agent.features = tuple(f[:32] for f in hello.features[:16])
        agent.ack_hold = hello.ack_hold_seconds
        agent.secrets_dir = hello.secrets_dir_configured
        floor = hello.min_interval_seconds
        agent.min_interval = floor if 0 < floor < _MAX_FLOOR else 0.0  # NaN compares False
        agent.allow_private_targets = (
            hello.allow_private_targets if hello.HasField("allow_private_targets") else None
        )
        agent.last_seen = time.time()
        return binding.token_id, agent, hello.last_seq

    async def _within_rate(self, session: Session, n: int) -> bool:
        """Charge n results to the agent's bucket; wait out a small debt, end the stream on a large one."""
        wait = self.limiter.take(session.agent.agent_id, n)
        if wait is None:
            self.rejected["rate_limited"] += n
            self.refusal_log.refused(
                f"agent {session.agent.agent_id}", "its stream", "rate_limited",
                f"over {self.limiter.rate:g} results/s; stream ended, the agent retries later",
            )  # fmt: skip
            session.end(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.limiter.rate:g} results/s per agent exceeded; "
                "keep the results and retry later",
            )
            return False
        if wait:
            await asyncio.sleep(wait)  # backpressure: stop reading this stream meanwhile
        return True

    def _take_evidence(self, session: Session, report: pb.EvidenceReport) -> None:
        """Keep an agent's evidence for a check it was assigned; anything else is counted and dropped."""
        agent = session.agent
        if report.check not in agent.assigned:
            self.rejected["unknown_evidence"] += 1
            return
        if report.recovered:
            self.state.evidence.recover(report.check, agent.agent_id, time.time())
        else:
            self.state.evidence.observe(
                report.check, agent.agent_id, agent.country, report.evidence, time.time()
            )

    def _clock_sample(self, session: Session, heartbeat: pb.Heartbeat) -> None:
        """An agent's answer to one of our clock probes: one offset sample."""
        t4 = time.time()
        t1 = heartbeat.echo_timestamp
        if not session.answered(t1):  # not a probe we sent on this stream: ignore
            return
        held = heartbeat.echo_held_seconds
        if not 0 <= held <= MAX_HELD_SECONDS:
            return
        t3 = heartbeat.timestamp
        agent = session.agent
        was_skewed = agent.clock.skewed
        if agent.clock.add(t1, t3 - held, t3, t4, self.clock_threshold) and (
            agent.clock.skewed != was_skewed
        ):
            log.warning(
                "agent %s clock offset %+.3fs (round trip %.3fs): %s",
                agent.agent_id,
                agent.clock.offset,
                agent.clock.rtt,
                "beyond the threshold; its result times are corrected"
                if agent.clock.skewed
                else "back within the threshold",
            )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Serve Connect. Requests arrive encoded: the stream checks their size
        and decodes them itself (large ones through the decode lane)."""
        handlers = {
            "Connect": grpc.stream_stream_rpc_method_handler(
                self.Connect,
                request_deserializer=None,
                response_serializer=pb.CollectorMessage.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
        server.add_registered_method_handlers(_SERVICE, handlers)

    def _size_problem(self, size: int) -> tuple[str, str] | None:
        """(reason, detail) when a message of size bytes is larger than max_message_bytes."""
        if size > self.max_message_bytes:
            return "message_too_large", f"message of {size} bytes exceeds {self.max_message_bytes}"
        return None

    def checks_message(self, session: Session) -> tuple[pb.CollectorMessage, Future[object] | None]:
        """The full check set for the session's agent, and the history's write of it."""
        return self._assign(session, *self._assignment(session))

    def _warn_files_refused(self, agent_id: str, specs: list[CheckSpec]) -> None:
        """Log once per (agent, check) that names files this agent will refuse to read."""
        for spec in specs:
            files = spec.module.file_settings
            if files and (agent_id, spec.name) not in self._warned_files:
                self._warned_files.add((agent_id, spec.name))
                log.warning(
                    "check %s names files (%s) but agent %s has no --secrets-dir: "
                    "its probes of this check will fail",
                    spec.name,
                    ", ".join(files),
                    agent_id,
                )

    def push_checks(self) -> int:
        """After a reload: send each agent its new check set if it changed.

        The fingerprint leaves the revision out: a reload that changes nothing
        for an agent sends it nothing, and its results keep naming the
        revision it has, under which the same checks are recorded.
        """
        pushed = 0
        for session in list(self.sessions.by_agent.values()):
            specs, checks, fingerprint = self._assignment(session, remind=True)
            if fingerprint != session.checks_fingerprint:
                message, recorded = self._assign(session, specs, checks, fingerprint)
                if recorded is None or recorded.done():
                    _send_recorded(session, message, recorded)
                else:  # sent once recorded, in the order of the writes
                    recorded.add_done_callback(
                        functools.partial(
                            _send_from_thread, asyncio.get_running_loop(), session, message
                        )
                    )
                pushed += 1
        return pushed

    def _assignment(
        self, session: Session, remind: bool = False
    ) -> tuple[list[CheckSpec], list[pb.Check], bytes]:
        """The agent's check set now, as specs, wire checks and their fingerprint
        (a digest of the wire checks).

        Warns, naming check, agent and rule, about assigned checks the agent's
        announced policy will refuse: new ones, or all of them when remind is
        set (a reload).
        """
        agent = session.agent
        specs = self.checks().for_agent(agent.agent_id, agent.country)
        if not agent.secrets_dir:
            self._warn_files_refused(agent.agent_id, specs)
        refusals = runnable.predicted(specs, agent)
        for check, message in sorted(refusals.items()):
            if remind or agent.refusals.get(check) != message:
                log.warning(
                    "check %s cannot run on agent %s (%s): %s",
                    check, agent.agent_id, agent.country, message,
                )  # fmt: skip
        # Refusals the agent reported stay: not_runnable() checks them against
        # the latest result, and only the agent can judge a host name.
        agent.refusals = {**agent.refusals, **refusals}
        checks = [self._proto(spec) for spec in specs]
        encoded = b"".join(c.SerializeToString(deterministic=True) for c in checks)
        return specs, checks, hashlib.blake2b(encoded, digest_size=32).digest()

    def _proto(self, spec: CheckSpec) -> pb.Check:
        """The wire form of a spec, built once per checks file: encoding a module's
        settings costs about 0.25 ms, and a reconnect storm asks for every check
        of every agent at once."""
        checks = self.checks()
        if checks is not self._protos_of:
            self._protos_of, self._protos = checks, {}
        cached = self._protos.get(spec.name)
        if cached is None or cached[0] is not spec:
            cached = self._protos[spec.name] = (spec, spec.to_proto())
        return cached[1]

    def _assign(
        self, session: Session, specs: list[CheckSpec], checks: list[pb.Check], fingerprint: bytes
    ) -> tuple[pb.CollectorMessage, Future[object] | None]:
        """The Checks message and the history's write of it (in the database thread):
        the message goes out only once that write is done, so the agent never
        runs anything under a revision the history has not stored."""
        agent = session.agent
        revision = self.history.revision
        recorded = self.history.record(agent.agent_id, revision, specs, agent.queue_max_age)
        self.state.assign(agent, {spec.name: spec.target for spec in specs}, revision)
        session.checks_fingerprint = fingerprint
        return pb.CollectorMessage(checks=pb.Checks(revision=revision, checks=checks)), recorded

    async def _pump(self, context: grpc.aio.ServicerContext, session: Session) -> None:
        """Read the agent's messages into ingest until the stream ends.

        Each message is taken in a call of its own, so this frame, which lives as
        long as the stream, holds none while it waits for the next: a parsed
        batch of one result is about 5 KB of protobuf's C heap."""
        try:
            while await self._take(session, await context.read()):
                pass
        except grpc.aio.AioRpcError as exc:
            session.end(None, f"stream broken ({exc.code().name})")
        except Exception as exc:  # malformed message from the network: end only this stream
            self.rejected["protocol"] += 1
            session.end(
                grpc.StatusCode.INVALID_ARGUMENT, f"cannot read message: {type(exc).__name__}"
            )

    async def _take(self, session: Session, data: bytes | grpc.aio.EOFType) -> bool:
        """One message from the agent; False once the stream is to end."""
        if data is grpc.aio.EOF:
            session.end(None, "the agent closed the stream")
            return False
        session.last_recv = now = time.monotonic()
        if now - session.token_touched >= TOKEN_TOUCH_EVERY:
            self.tokens.touch_later(session.token_id)  # 'token list' shows last activity
            session.token_touched = now
        session.agent.last_seen = max(session.agent.last_seen, time.time())
        problem = self._size_problem(len(data))
        if problem is None:
            message = await self.lane.decode(data)
            kind = message.WhichOneof("payload")
            if kind == "results":
                problem = self.ingest.framing_problem(message.results)
        if problem:
            reason, details = problem
            self.rejected[reason] += 1
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if reason in _EXHAUSTED
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            session.end(code, details)
            return False
        if kind == "results":
            if not self.ingest.accepting:
                session.end(grpc.StatusCode.UNAVAILABLE, "collector shutting down")
                return False
            if not await self._within_rate(session, len(message.results.results)):
                return False
            # While the ingest queue is full the stream is not read: the
            # agent's silence then is ours, not a sign of a dead agent.
            session.held_back = True
            try:
                await self.ingest.submit(session, message.results)
            finally:
                session.held_back = False
            session.last_recv = time.monotonic()
        elif not await self._within_rate(session, 1):  # heartbeats and empty messages
            return False
        elif kind == "heartbeat":
            if message.heartbeat.ack_now:
                session.ack_now = True
                session.send_held_acks()
            if message.heartbeat.echo_timestamp:
                self._clock_sample(session, message.heartbeat)
        elif kind == "hello":
            self.rejected["protocol"] += 1
            session.end(grpc.StatusCode.INVALID_ARGUMENT, "Hello sent twice")
            return False
        elif kind == "evidence":
            self._take_evidence(session, message.evidence)
        return True


_EXHAUSTED = {"batch_too_large", "message_too_large"}
_SERVICE = "probemesh.v1.ProbeMesh"


def _send_recorded(
    session: Session, message: pb.CollectorMessage, recorded: Future[object] | None
) -> None:
    """Send a Checks message whose history write is done; end the stream if it failed."""
    if recorded is not None and recorded.exception() is not None:
        session.end(grpc.StatusCode.UNAVAILABLE, "collector cannot record the checks; retry")
    else:
        session.send(message)


def _send_from_thread(
    loop: asyncio.AbstractEventLoop,
    session: Session,
    message: pb.CollectorMessage,
    recorded: Future[object],
) -> None:
    loop.call_soon_threadsafe(_send_recorded, session, message, recorded)


def _duration(seconds: float) -> str:
    """3s, 4m05s, 2h07m: how long a stream lasted."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _certificate_names(context: grpc.aio.ServicerContext) -> set[str] | None:
    """CN and SANs of the client certificate, or None without one (no mTLS)."""
    auth = context.auth_context() or {}
    if not auth.get("x509_pem_cert"):
        return None
    values = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return {v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values}
