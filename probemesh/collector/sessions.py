"""Live agent sessions: one per agent id; a new stream replaces the old one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from probemesh.collector.state import AgentInfo
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

HEARTBEAT_DUE = pb.CollectorMessage()
"""Queued in an outbox when a heartbeat is due; the stream sends a Heartbeat in
its place, stamped as it goes out (a clock probe's send time)."""


@dataclass
class Session:
    """One agent stream: its outbox and why it ended, if it did."""

    agent: AgentInfo
    token_id: str
    epoch: int = 0  # the agent's lease epoch this stream's batches are applied under
    outbox: asyncio.Queue[pb.CollectorMessage | None] = field(default_factory=asyncio.Queue)
    last_recv: float = field(default_factory=time.monotonic)
    held_back: bool = False  # the stream waits for room in the ingest queue, unread
    end_code: grpc.StatusCode | None = None
    end_details: str = ""
    # A digest of the wire checks last sent, not their bytes (12 KB an agent for 20 checks)
    checks_fingerprint: bytes = b""
    opened: float = field(default_factory=time.monotonic)
    # When the token's last use was written (at admission, then at most once a minute)
    token_touched: float = field(default_factory=time.monotonic)
    # Timestamps of the clock probes sent on this stream and not answered yet.
    probes: deque[float] = field(default_factory=lambda: deque(maxlen=4))
    heartbeat_timer: asyncio.TimerHandle | None = None

    def stop_heartbeats(self) -> None:
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()

    def clock_probe(self) -> float:
        """A timestamp for an outgoing clock probe (Welcome, Heartbeat), remembered."""
        now = time.time()
        self.probes.append(now)
        return now

    def answered(self, timestamp: float) -> bool:
        """True (once) when timestamp is a probe sent on this stream."""
        if timestamp in self.probes:
            self.probes.remove(timestamp)
            return True
        return False

    def send(self, message: pb.CollectorMessage) -> None:
        self.outbox.put_nowait(message)

    def end(self, code: grpc.StatusCode | None, details: str) -> None:
        """Ask the stream handler to finish (with a status when code is set)."""
        if self.end_code is None:
            self.end_code, self.end_details = code, details
        self.outbox.put_nowait(None)


class SessionRegistry:
    """Maps agent id -> live session."""

    def __init__(self) -> None:
        self.by_agent: dict[str, Session] = {}

    def open(self, session: Session) -> None:
        previous = self.by_agent.get(session.agent.agent_id)
        if previous is not None:
            log.info("agent %s reconnected; closing its previous stream", session.agent.agent_id)
            previous.end(grpc.StatusCode.ABORTED, "replaced by a newer stream for this agent")
        self.by_agent[session.agent.agent_id] = session

    def close(self, session: Session) -> None:
        if self.by_agent.get(session.agent.agent_id) is session:
            del self.by_agent[session.agent.agent_id]
            session.agent.connected = False

    def end_tokens(self, token_ids: set[str], details: str) -> None:
        for session in list(self.by_agent.values()):
            if session.token_id in token_ids:
                session.end(grpc.StatusCode.UNAUTHENTICATED, details)

    def __len__(self) -> int:
        return len(self.by_agent)
