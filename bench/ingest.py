"""Ingest throughput: N agent streams push result batches into a real collector.

Starts ``probemesh collector`` as a subprocess, creates one token per simulated
agent, and drives N gRPC streams from this process with pre-encoded batches
(so the client costs little), each keeping a window of batches in flight and
honouring Acks exactly like the real agent. Prints results/s applied by the
collector and the collector's CPU seconds per 100k results.

    .venv/bin/python bench/ingest.py --agents 100 --seconds 20 [--database postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.v1 import mesh_pb2 as pb
from probemesh.wire import SERVICE_METHOD, encode_batch, serialize
from tests.harness import Mesh, total

CHECKS = 20
ENDED: list[str] = []  # why the collector ended a stream before the run was over


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payloads(count: int) -> list[bytes]:
    """Realistic HTTP-like results: 10 samples each, about 400 bytes encoded."""
    now = time.time()
    out = []
    for i in range(count):
        result = pb.Result(
            check=f"c{i % CHECKS}", target="http://127.0.0.1/", timestamp=now, success=i % 7 != 0,
            revision=1,  # a fresh collector's first checks revision, as an agent tags it
            duration_seconds=0.0123, reason=0 if i % 7 else pb.FAILURE_REASON_TIMEOUT,
            message="" if i % 7 else "probe timed out",
            http_phase_seconds=[0.002]*5, samples=[pb.Sample(name="probe_http_duration_seconds", labels={"phase": p}, value=0.002)
                     for p in ("resolve", "connect", "tls", "processing", "transfer")]
            + [pb.Sample(name="probe_http_status_code", value=200),
               pb.Sample(name="probe_http_content_length", value=1234),
               pb.Sample(name="probe_http_redirects", value=0),
               pb.Sample(name="probe_http_ssl", value=0),
               pb.Sample(name="probe_http_version", value=1.1)],
        )  # fmt: skip
        out.append(result.SerializeToString())
    return out


async def agent_stream(
    address: str, agent_id: str, token: str, batch: list[bytes], stop: float, window: int
) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(
            SERVICE_METHOD,
            request_serializer=serialize,
            response_deserializer=pb.CollectorMessage.FromString,
        )(metadata=(("authorization", f"Bearer {token}"),))
        await call.write(
            pb.AgentMessage(hello=pb.Hello(agent_id=agent_id, country="DE", version="bench"))
        )
        welcome = await call.read()
        seq = welcome.welcome.acked_seq
        inflight = asyncio.Semaphore(window)
        sent = 0

        over = asyncio.Event()

        async def reader() -> None:
            try:
                while (message := await call.read()) is not grpc.aio.EOF:
                    if message.WhichOneof("payload") == "ack":
                        inflight.release()
            except grpc.aio.AioRpcError as exc:
                ENDED.append(f"{exc.code().name}: {exc.details()}")
            finally:
                over.set()
                inflight.release()  # the writer stops waiting for an Ack

        task = asyncio.create_task(reader())
        while time.monotonic() < stop and not over.is_set():
            await inflight.acquire()
            if over.is_set():
                break
            await call.write(encode_batch(seq + 1, 1, batch))
            seq += len(batch)
            sent += len(batch)
        for _ in range(window):  # wait for the last acks
            if over.is_set():
                break
            await asyncio.wait_for(inflight.acquire(), 30)
        task.cancel()
        call.cancel()
        return sent


async def drive(mesh: Mesh, tokens: dict[str, str], args: argparse.Namespace) -> int:
    batch = payloads(args.batch)
    stop = time.monotonic() + args.seconds
    sent = await asyncio.gather(
        *(
            agent_stream(f"127.0.0.1:{mesh.grpc_port}", a, t, batch, stop, args.window)
            for a, t in tokens.items()
        )
    )
    return sum(sent)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument(
        "--database", default=None, help="postgresql:// URL of an empty database [SQLite]"
    )
    args = parser.parse_args()
    checks = "\n".join(
        f'  - {{name: c{i}, target: "http://127.0.0.1/", module: http_2xx, interval: 30s}}'
        for i in range(CHECKS)
    )
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(Path(tmp), f"modules:\n  http_2xx: {{prober: http}}\nchecks:\n{checks}\n")
        mesh.database = args.database
        collector = mesh.start_collector()
        try:
            tokens = {
                f"bench-{i:03d}": mesh.token(f"bench-{i:03d}", "DE") for i in range(args.agents)
            }
            cpu0 = cpu_seconds(collector.pid)
            t0 = time.monotonic()
            sent = asyncio.run(drive(mesh, tokens, args))
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(collector.pid) - cpu0
            applied = total(mesh.metrics(), "probemesh_ingest_results_total")
            scrape0 = time.perf_counter()
            with urllib.request.urlopen(mesh.metrics_url, timeout=60) as response:
                response.read()
            scrape = time.perf_counter() - scrape0
        finally:
            mesh.stop()
    print(f"agents={args.agents} batch={args.batch} window={args.window} seconds={elapsed:.1f}")
    print(f"results sent={sent} applied={applied:.0f}")
    if ENDED:
        print(f"streams the collector ended: {len(ENDED)}, {Counter(ENDED).most_common(2)}")
    print(f"ingest rate: {applied / elapsed:,.0f} results/s")
    print(f"collector CPU: {cpu:.2f} s total, {cpu / applied * 100_000:.2f} s per 100k results")
    print(f"GET /metrics afterwards: {scrape * 1000:.0f} ms")


if __name__ == "__main__":
    main()
