"""What an idle bidirectional stream costs a plain grpc.aio server, for comparison.

The collector holds one stream per agent. bench/mesh_scale.py --heap-report prints
what a connected agent costs the collector ("streams alone"); this bench measures
the part gRPC itself takes: a grpc.aio server with one stream-stream method that
reads messages, N streams opened by a client in a child process over 4 channels,
one 200-byte message each. It prints the server's growth per stream: RSS, the C
heap in use (glibc's mallinfo2: gRPC's core and Python objects over 512 bytes) and
objects tracked by the garbage collector.

The options change how the streams are used, to see what of gRPC's part depends
on it: --handler coroutine serves them with the reader-writer API (context.read
and write) instead of an async generator over the request iterator; --reply
makes the server answer each stream's message with one of the same size (as the
collector's Welcome); --metadata has the client send an authorization header on
each call (as agents do); --options uses probemesh's server and channel options
(keepalive, message size limits).

    .venv/bin/python bench/grpc_stream_memory.py --streams 1000
    .venv/bin/python bench/grpc_stream_memory.py --streams 1000 --handler coroutine --reply
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc

CLIENT = """
import asyncio, json, sys, grpc
async def main(port, n, metadata, options):
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                          options=[("grpc.channel_id", i), *options])
                for i in range(4)]
    calls = []
    for i in range(n):
        call = channels[i % 4].stream_stream("/bench.Streams/Open")(metadata=metadata or None)
        await call.write(b"x" * 200)
        calls.append(call)
    print("open", flush=True)
    await asyncio.sleep(3600)
metadata = [tuple(m) for m in json.loads(sys.argv[3])]
options = [tuple(o) for o in json.loads(sys.argv[4])]
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), metadata, options))
"""
TOKEN = "Bearer pm_0123456789abcdef_" + "s" * 43
"""As long as an agent's token (bearer, token id, secret)."""


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


async def measure(args: argparse.Namespace) -> None:
    streams = args.streams
    received = 0
    all_received = asyncio.Event()
    reply = b"y" * 200 if args.reply else None

    def one_received() -> None:
        nonlocal received
        received += 1
        if received == streams:
            all_received.set()

    async def open_stream(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
        async for _ in requests:
            one_received()
            if reply is not None:
                yield reply

    async def serve_stream(requests: object, context: grpc.aio.ServicerContext) -> None:
        while await context.read() is not grpc.aio.EOF:
            one_received()
            if reply is not None:
                await context.write(reply)

    server_options, channel_options = [], []
    if args.options:
        from probemesh.grpc_options import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
        from probemesh.grpc_options import server_options as probemesh_server_options

        server_options = probemesh_server_options(MAX_MESSAGE_BYTES)
        channel_options = CHANNEL_OPTIONS
    server = grpc.aio.server(options=server_options)
    handler = grpc.stream_stream_rpc_method_handler(
        serve_stream if args.handler == "coroutine" else open_stream
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Streams", {"Open": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)
    before = (rss(), c_heap_in_use(), len(gc.get_objects()))
    metadata = [("authorization", TOKEN)] if args.metadata else []
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(streams), json.dumps(metadata),
        json.dumps(channel_options), stdout=subprocess.PIPE,
    )  # fmt: skip
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
    used = [f"{args.handler} handler"] + [
        name for name in ("reply", "metadata", "options") if getattr(args, name)
    ]
    print(
        f"plain grpc.aio {grpc.__version__}, {streams:,} idle streams ({', '.join(used)}): per stream "
        f"{grown[0] / 1024:.1f} KiB RSS, {grown[1] / 1024:.1f} KiB C heap in use, "
        f"{grown[2]:.0f} GC-tracked objects"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--handler", choices=("generator", "coroutine"), default="generator")
    parser.add_argument("--reply", action="store_true", help="answer each stream's message")
    parser.add_argument("--metadata", action="store_true", help="an authorization header a call")
    parser.add_argument("--options", action="store_true", help="probemesh's gRPC options")
    asyncio.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
