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
ACK_HOLD_MAX = 10.0
"""The longest an Ack is held back, whatever the agent allows (Hello.ack_hold_seconds)."""
ACK_BATCHES_HELD = 4
"""A held Ack goes out once it answers this many batches: half of an agent's
default in-flight window, so a busy agent never waits for the hold."""
ACK_GRID = 0.1
"""Held Acks due within the same step of this many seconds go out together."""


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
    # Batches applied and not acknowledged yet (first, last), while the agent
    # allows Acks to be held back; the mark when the last was applied; the
    # timer that sends them when the hold is over.
    held: list[tuple[int, int]] = field(default_factory=list)
    held_mark: int = 0
    ack_timer: asyncio.TimerHandle | None = None
    ack_now: bool = False  # the agent shuts down and waits for its Acks (Heartbeat.ack_now)
    ended: bool = False  # the handler writes nothing queued from now on

    def stop_timers(self) -> None:
        if self.heartbeat_timer is not None:
            self.heartbeat_timer.cancel()
        if self.ack_timer is not None:
            self.ack_timer.cancel()

    def acknowledge(self, mark: int, first: int, last: int, arrived: float) -> None:
        """Tell the agent that the batch first..last (which came at arrived, on
        the loop's clock) and every result up to mark are durable: at once,
        or with the batches applied after it.

        An Ack is a message of its own, and writing one costs the collector
        about as much as reading the batch it answers. An agent that allows it
        (Hello.ack_hold_seconds) gets one Ack for every few batches: at most
        ACK_BATCHES_HELD of them, at most its hold (ACK_HOLD_MAX) after the
        first of them came, when the hold's grid step comes. The hold counts
        from the batch's arrival, not from its commit: a batch that waited in
        a full ingest queue does not wait a whole hold more, and the agent's
        wait for its Ack stays within the hold it allowed.
        """
        if self.ended:
            return
        hold = 0.0 if self.ack_now else min(self.agent.ack_hold, ACK_HOLD_MAX)
        if hold <= 0:
            self.send(pb.CollectorMessage(ack=pb.Ack(seq=mark, first_seq=first, last_seq=last)))
            return
        self.held.append((first, last))
        self.held_mark = mark
        loop = asyncio.get_running_loop()
        due = math.floor((arrived + hold) / ACK_GRID) * ACK_GRID
        if len(self.held) >= ACK_BATCHES_HELD or due <= loop.time():
            self.send_held_acks()
        elif self.ack_timer is None:
            self.ack_timer = loop.call_at(due, self.send_held_acks)

    def send_held_acks(self) -> None:
        """One Ack for every batch held back, if any."""
        if self.ack_timer is not None:
            self.ack_timer.cancel()
            self.ack_timer = None
        if not self.held:
            return
        (first, last), *more = self.held
        self.held = []
        batches = [pb.AckedBatch(first_seq=a, last_seq=b) for a, b in more]
        self.send(
            pb.CollectorMessage(
                ack=pb.Ack(seq=self.held_mark, first_seq=first, last_seq=last, more=batches)
            )
        )

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
        """Ask the stream handler to finish (with a status when code is set),
        after the Acks held back: what they answer is durable, whyever the
        stream ends, and the agent need not send it again."""
        self.send_held_acks()
        self.ended = True
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
