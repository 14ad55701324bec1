"""The collector's heartbeats: only when a stream is idle or a clock probe is due,
and a silent agent's end.

Acks already tell a busy agent that the collector is alive, so a busy stream
gets heartbeats only as clock probes: EARLY_CLOCK_PROBES one heartbeat_interval
apart after Welcome, then one every clock_probe_every; an agent that does not
echo clock probes gets none. An idle stream gets a heartbeat every
heartbeat_interval. An agent that sends nothing for dead_after is presumed dead
when the stream's timer fires, and its stream ends with UNAVAILABLE; not while
the collector itself leaves the stream unread.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from probemesh.collector.ingest import IngestLimits, _Item
from probemesh.collector.main import CollectorApp
from probemesh.collector.service import EARLY_CLOCK_PROBES, HEARTBEAT_GRID
from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD
from tests.security.conftest import in_process_options
from tests.security.test_rotation import wait_ready

INTERVAL = 0.1
DEAD_AFTER = 0.5
PROBE_EVERY = 0.5
BATCHES = 65  # one every 20 ms: an Ack each, so the stream is never idle for INTERVAL


async def converse(
    target: str,
    token: str,
    messages: AsyncIterator[pb.AgentMessage],
    heard: Callable[[pb.CollectorMessage], None],
) -> tuple[str, float]:
    """One agent stream, each collector message handed to heard, until it ends or
    10 s pass: its final status, and when it ended (time.monotonic)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            SERVICE_METHOD,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )(messages, metadata=(("authorization", f"Bearer {token}"),))
        try:
            async with asyncio.timeout(10):
                async for message in call:
                    heard(message)
            status = "OK"
        except grpc.aio.AioRpcError as exc:
            status = f"{exc.code().name}: {exc.details()}"
        except TimeoutError:
            status = "still open after 10 s"
            call.cancel()
        return status, time.monotonic()


class Agent:
    """A busy agent: BATCHES one-result batches, then silence with the stream open.
    With echo it announces clock_echo and answers each clock probe at once."""

    def __init__(self, app: CollectorApp, agent_id: str, echo: bool) -> None:
        self.app, self.agent_id, self.echo = app, agent_id, echo
        self.received: list[tuple[str, float]] = []  # (kind, when)
        self.assigned = asyncio.Event()
        self.probes: list[tuple[float, float]] = []  # (probe timestamp, arrival), to answer
        self.silent_from = 0.0

    async def messages(self) -> AsyncIterator[pb.AgentMessage]:
        features = ["clock_echo"] if self.echo else []
        yield pb.AgentMessage(
            hello=pb.Hello(agent_id=self.agent_id, country="DE", features=features)
        )
        await self.assigned.wait()
        for seq in range(1, BATCHES + 1):
            while self.probes:
                probe, arrived = self.probes.pop(0)
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(
                    timestamp=time.time(), echo_timestamp=probe,
                    echo_held_seconds=time.monotonic() - arrived,
                ))  # fmt: skip
            result = pb.Result(check="c00", revision=self.app.revision, timestamp=time.time(),
                               success=True, duration_seconds=0.01)  # fmt: skip
            yield pb.AgentMessage(
                results=pb.ResultBatch(first_seq=seq, last_seq=seq, results=[result])
            )
            self.silent_from = time.monotonic()  # written when the stream asks for the next
            await asyncio.sleep(0.02)
        await asyncio.sleep(30)  # silent, the stream left open

    def heard(self, message: pb.CollectorMessage) -> None:
        kind = message.WhichOneof("payload")
        self.received.append((kind, time.monotonic()))
        if kind == "checks":
            self.assigned.set()
        elif kind == "welcome" and self.echo:
            self.probes.append((message.welcome.collector_time, time.monotonic()))
        elif kind == "heartbeat" and self.echo:
            self.probes.append((message.heartbeat.timestamp, time.monotonic()))

    def heartbeats(self, after: float, before: float) -> list[float]:
        return [at for kind, at in self.received if kind == "heartbeat" and after < at < before]


def test_a_busy_stream_gets_clock_probes_only_an_idle_one_heartbeats_a_silent_agent_dies(
    tmp_path: Path,
) -> None:
    options = in_process_options(tmp_path, 1)

    stalls: list[float] = []  # when the event loop (the collector's and the agents') resumed

    async def ticker(stop: asyncio.Event) -> None:
        """Note the loop's stalls: one of INTERVAL / 2 may leave a busy stream idle
        for INTERVAL (Acks come every 20 ms), and hide the pause from the agent,
        which reads on the same loop."""
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            if time.monotonic() - before > 0.01 + INTERVAL / 2:
                stalls.append(time.monotonic())

    def idle(agent: Agent, at: float) -> bool:
        """Whether a heartbeat the agent got at `at` may have been one for an idle
        stream: its Acks paused (a slow commit) or the loop stalled."""
        before = max(t for _, t in agent.received if t < at)
        return at - before >= INTERVAL / 2 or any(
            0 <= at - s <= INTERVAL + HEARTBEAT_GRID for s in stalls
        )

    async def scenario() -> tuple[CollectorApp, list[tuple[Agent, str, float]]]:
        app = CollectorApp(options)
        app.service.heartbeat_interval = INTERVAL
        app.service.dead_after = DEAD_AFTER
        app.service.clock_probe_every = PROBE_EVERY
        agents = [Agent(app, "echoes", echo=True), Agent(app, "plain", echo=False)]
        tokens = [app.tokens.create(a.agent_id, "DE") for a in agents]
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        watch = asyncio.create_task(ticker(stop))
        ends = await asyncio.gather(*(
            converse(options.grpc_listen, token, a.messages(), a.heard)
            for a, token in zip(agents, tokens, strict=True)
        ))  # fmt: skip
        stop.set()
        await server
        await watch
        return app, [(a, status, ended) for a, (status, ended) in zip(agents, ends, strict=True)]

    app, runs = asyncio.run(scenario())
    for agent, status, ended in runs:
        kinds = [kind for kind, _ in agent.received]
        assert kinds[:2] == ["welcome", "checks"]
        assert kinds.count("ack") == BATCHES
        acks = [at for kind, at in agent.received if kind == "ack"]
        if agent.echo:
            # Any heartbeat is a probe: the early ones, then PROBE_EVERY apart.
            every = agent.heartbeats(0.0, acks[-1])
            assert len(every) > EARLY_CLOCK_PROBES, f"probes while acks flowed: {kinds}"
            later = itertools.pairwise(every[EARLY_CLOCK_PROBES - 1 :])
            assert all(b - a > PROBE_EVERY - 0.15 for a, b in later if not idle(agent, b)), (
                f"probes {[round(at - every[0], 3) for at in every]}, stalls {stalls}"
            )
            assert len(app.state.agents["echoes"].clock.samples) > EARLY_CLOCK_PROBES + 1
        else:
            busy = agent.heartbeats(acks[0], acks[-1])
            assert all(idle(agent, at) for at in busy), f"heartbeats while acks flowed: {kinds}"
        # Idle: a heartbeat every INTERVAL (on the grid) until the agent is presumed dead.
        assert status == "UNAVAILABLE: no message from agent; presumed dead"
        assert ended - agent.silent_from >= DEAD_AFTER
        silent = agent.heartbeats(agent.silent_from, ended)
        assert len(silent) >= int(DEAD_AFTER / (INTERVAL + HEARTBEAT_GRID)), (
            f"heartbeats of the idle stream: {kinds}"
        )


def test_a_stream_held_back_by_a_full_ingest_queue_is_not_presumed_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the ingest queue is full the collector does not read the stream:
    that silence is the collector's, so the agent is not presumed dead for it."""
    options = replace(in_process_options(tmp_path, 1), limits=IngestLimits(queue_batches=1))

    async def scenario() -> tuple[list[str], str]:
        app = CollectorApp(options)
        app.service.heartbeat_interval = INTERVAL
        app.service.dead_after = DEAD_AFTER
        token = app.tokens.create("hb2", "DE")
        release = asyncio.Event()
        apply_group = app.ingest._apply_group

        async def held(items: list[_Item]) -> None:  # the applier stalls, as on a slow disk
            await release.wait()
            await apply_group(items)

        monkeypatch.setattr(app.ingest, "_apply_group", held)
        stop = asyncio.Event()
        server = asyncio.create_task(app.run(stop))
        await wait_ready(app)
        kinds: list[str] = []
        assigned = asyncio.Event()

        async def messages() -> AsyncIterator[pb.AgentMessage]:
            yield pb.AgentMessage(hello=pb.Hello(agent_id="hb2", country="DE"))
            await assigned.wait()
            # The applier takes one or two, one waits in the queue, the stream holds the next.
            for seq in range(1, 6):
                result = pb.Result(check="c00", revision=app.revision, timestamp=time.time(),
                                   success=True, duration_seconds=0.01)  # fmt: skip
                yield pb.AgentMessage(
                    results=pb.ResultBatch(first_seq=seq, last_seq=seq, results=[result])
                )
            await asyncio.sleep(3 * DEAD_AFTER)  # held back all along
            release.set()
            while kinds.count("ack") < 5:
                yield pb.AgentMessage(heartbeat=pb.Heartbeat(timestamp=time.time()))
                await asyncio.sleep(0.05)

        def heard(message: pb.CollectorMessage) -> None:
            kinds.append(message.WhichOneof("payload"))
            if message.HasField("checks"):
                assigned.set()

        status, _ = await converse(options.grpc_listen, token, messages(), heard)
        release.set()
        stop.set()
        await server
        return kinds, status

    kinds, status = asyncio.run(scenario())
    assert kinds.count("ack") == 5, (kinds, status)
    assert status == "OK"
