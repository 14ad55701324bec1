"""Live agent sessions: one per agent id; a new stream replaces the old one."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import grpc

from probemesh.collector.state import AgentInfo
from probemesh.v1 import mesh_pb2 as pb

log = logging.getLogger(__name__)

HEARTBEAT_DUE = pb.CollectorMessage()
"""Queued in an outbox when a heartbeat is due; the stream sends a Heartbeat in
its place, stamped as it goes out (a clock probe's send time)."""


class SendQueue:
    """The messages waiting to go out on one stream; its handler alone reads them.

    Not an asyncio.Queue: that is four deques and an Event, about 2.5 KB for
    every connected agent, for a queue that seldom holds more than an Ack.
    A list read from a head index, compacted as the head moves on.
    """

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[pb.CollectorMessage | None] = []
        self._head = 0
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items) - self._head

    def put(self, item: pb.CollectorMessage | None) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> pb.CollectorMessage | None:
        """The oldest message, waiting for one if there is none."""
        while self._head == len(self._items):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, head = self._items, self._head
        item = items[head]
        head += 1
        if head == len(items):
            items.clear()
            head = 0
        elif head >= _COMPACT_AT and head * 2 >= len(items):
            del items[:head]
            head = 0
        self._head = head
        return item


_COMPACT_AT = 64
"""A send queue drops what it has sent once that is this many messages and half
of the list: a stream that always has more to send still frees them."""
PROBES_KEPT = 4  # clock probes remembered per stream


@dataclass(slots=True)
class Session:
    """One agent stream: its outbox and why it ended, if it did."""

    agent: AgentInfo
    token_id: str
    epoch: int = 0  # the agent's lease epoch this stream's batches are applied under
    outbox: SendQueue = field(default_factory=SendQueue)
    last_recv: float = field(default_factory=time.monotonic)
    held_back: bool = False  # the stream waits for room in the ingest queue, unread
    end_code: grpc.StatusCode | None = None
    end_details: str = ""
    # A digest of the wire checks last sent, not their bytes (12 KB an agent for 20 checks)
    checks_fingerprint: bytes = b""
    opened: float = field(default_factory=time.monotonic)
    # When the token's last use was written (at admission, then at most once a minute)
    token_touched: float = field(default_factory=time.monotonic)
    # Timestamps of the last clock probes sent on this stream and not answered
    # yet (a list: a deque costs 600 bytes however short).
    probes: list[float] = field(default_factory=list)
    # When the stream last wrote to the agent, and when its next clock probe is
    # due (inf: the agent does not echo them), on time.monotonic(), the loop's
    # clock: a heartbeat goes out only for one or the other.
    last_sent: float = field(default_factory=time.monotonic)
    probe_due: float = math.inf
    early_probes: int = 0  # clock probes still to send at the heartbeat interval
    heartbeat_timer: asyncio.TimerHandle | None = None
    reader: asyncio.Task[None] | None = None  # reads the agent's messages into ingest

    def stop_heartbeats(self) -> None:
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()

    def clock_probe(self) -> float:
        """A timestamp for an outgoing clock probe (Welcome, Heartbeat), remembered."""
        now = time.time()
        self.probes.append(now)
        if len(self.probes) > PROBES_KEPT:
            del self.probes[0]
        return now

    def answered(self, timestamp: float) -> bool:
        """True (once) when timestamp is a probe sent on this stream."""
        if timestamp in self.probes:
            self.probes.remove(timestamp)
            return True
        return False

    def send(self, message: pb.CollectorMessage) -> None:
        self.outbox.put(message)

    def end(self, code: grpc.StatusCode | None, details: str) -> None:
        """Ask the stream handler to finish (with a status when code is set)."""
        if self.end_code is None:
            self.end_code, self.end_details = code, details
        self.outbox.put(None)


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
