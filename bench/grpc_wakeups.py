"""CPU a gRPC aio server spends per stream message, spread in time or in bursts.

A collector at 1,000 agents receives about 300 one-result batches a second,
one every 3 s per stream at a random phase, and answers each with an Ack. Its
CPU per result (about 1 ms in bench/mesh_scale.py) changed little when the
messages per result fell by a fifth; its threads switch about twice per
message. This bench asks how much of a message's cost is waking the server
for it: a bare grpc.aio server (one bidirectional method that answers every
message, as the collector acks a batch) is fed the same messages per second
by the same number of streams, either spread (each stream at its own random
phase) or in bursts (every stream sends on a shared grid of ``--grid``
seconds), and prints the server's CPU per message and its context switches per
message, from /proc, for both.

    .venv/bin/python bench/grpc_wakeups.py --streams 1000 --interval 3 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import multiprocessing
import os
import random
import time
from pathlib import Path

import grpc

METHOD = "/bench.Wakeups/Talk"
MESSAGE = b"x" * 200  # about a one-result batch's size on the wire
REPLY = b"y" * 20  # about an Ack's


def _serve(port: int, ready: multiprocessing.synchronize.Event) -> None:
    async def talk(_requests: object, context: grpc.aio.ServicerContext) -> None:
        while (message := await context.read()) is not grpc.aio.EOF:
            del message
            await context.write(REPLY)

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(talk)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Wakeups", {"Talk": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        ready.set()
        await server.wait_for_termination()

    asyncio.run(main())


async def _drive(
    port: int, streams: int, interval: float, grid: float, seconds: float, received: list[int]
) -> None:
    """Run the streams for seconds, counting the replies in received[0]."""
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stop_at = time.monotonic() + seconds

    async def stream(n: int) -> None:
        call = channels[n % len(channels)].stream_stream(METHOD)()
        phase = random.random() * interval
        while True:
            now = time.time()
            due = (now - phase) // interval * interval + interval + phase
            if grid:  # every stream sends on the same ticks
                due = -(-due // grid) * grid
            await asyncio.sleep(max(0.0, due - now))
            if time.monotonic() >= stop_at:
                break
            await call.write(MESSAGE)
            await call.read()
            received[0] += 1
        await call.done_writing()

    await asyncio.gather(*(stream(n) for n in range(streams)))
    for channel in channels:
        await channel.close()


def _threads(pid: int) -> tuple[float, int]:
    """CPU seconds and voluntary context switches of every thread of pid."""
    cpu, switches = 0.0, 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            stat = Path(task, "stat").read_text().rsplit(")", 1)[1].split()
            status = Path(task, "status").read_text()
        except OSError:
            continue
        cpu += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        switches += int(
            next(line.split()[1] for line in status.splitlines()
                 if line.startswith("voluntary_ctxt_switches"))
        )  # fmt: skip
    return cpu, switches


def run(streams: int, interval: float, grid: float, seconds: float, warm: float) -> None:
    port = 20000 + random.randrange(20000)
    spawn = multiprocessing.get_context("spawn")  # not forked from a process using gRPC
    ready = spawn.Event()
    server = spawn.Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(30)
    pid = server.pid
    assert pid is not None

    async def measured() -> tuple[int, float, int]:
        received = [0]
        driving = asyncio.ensure_future(
            _drive(port, streams, interval, grid, warm + seconds + 1, received)
        )
        await asyncio.sleep(warm)
        cpu0, sw0, got0 = *_threads(pid), received[0]
        await asyncio.sleep(seconds)
        cpu1, sw1, got1 = *_threads(pid), received[0]
        await driving
        return got1 - got0, cpu1 - cpu0, sw1 - sw0

    messages, cpu, switches = asyncio.run(measured())
    server.kill()
    label = f"bursts on a {grid:g} s grid" if grid else "spread"
    print(
        f"{streams:,} streams, one message each {interval:g} s, {label}: "
        f"{messages / seconds:,.0f} messages/s, server CPU {cpu / seconds:.3f} cores, "
        f"{cpu / messages * 1e6:,.0f} us and {switches / messages:.2f} voluntary switches "
        f"per message (load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--grid", type=float, default=0.1, help="the bursts' grid, seconds")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warm", type=float, default=6.0)
    args = parser.parse_args()
    for grid in (0.0, args.grid, 0.0, args.grid):  # alternated, twice
        run(args.streams, args.interval, grid, args.seconds, args.warm)


if __name__ == "__main__":
    main()
