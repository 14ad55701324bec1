"""What an idle bidirectional stream costs a plain grpc.aio server, for comparison.

The collector holds one stream per agent. bench/mesh_scale.py --heap-report prints
what a connected agent costs the collector ("streams alone"); this bench measures
the part gRPC itself takes: a grpc.aio server with one stream-stream method that
reads messages, N streams opened by a client in a child process over 4 channels,
one 200-byte message each. It prints the server's growth per stream: RSS, the C
heap in use (glibc's mallinfo2: gRPC's core and Python objects over 512 bytes) and
objects tracked by the garbage collector.

    .venv/bin/python bench/grpc_stream_memory.py --streams 1000
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc

CLIENT = """
import asyncio, sys, grpc
async def main(port, n):
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.channel_id", i)])
                for i in range(4)]
    calls = []
    for i in range(n):
        call = channels[i % 4].stream_stream("/bench.Streams/Open")()
        await call.write(b"x" * 200)
        calls.append(call)
    print("open", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


def c_heap_in_use() -> int:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def measure(streams: int) -> None:
    received = 0
    all_received = asyncio.Event()

    async def open_stream(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        nonlocal received
        async for _ in requests:
            received += 1
            if received == streams:
                all_received.set()
        return
        yield b""  # a stream-stream handler is an async generator

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(open_stream)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Streams", {"Open": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    before = (rss(), c_heap_in_use(), len(gc.get_objects()))
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(streams), stdout=subprocess.PIPE
    )
    assert client.stdout is not None
    await client.stdout.readline()
    await all_received.wait()
    await asyncio.sleep(2)
    gc.collect()
    after = (rss(), c_heap_in_use(), len(gc.get_objects()))
    client.kill()
    await client.wait()
    await server.stop(0)
    grown = [(a - b) / streams for a, b in zip(after, before, strict=True)]
    print(
        f"plain grpc.aio {grpc.__version__}, {streams:,} idle streams: per stream "
        f"{grown[0] / 1024:.1f} KiB RSS, {grown[1] / 1024:.1f} KiB C heap in use, "
        f"{grown[2]:.0f} GC-tracked objects"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    asyncio.run(measure(parser.parse_args().streams))


if __name__ == "__main__":
    main()
