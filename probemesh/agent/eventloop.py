"""The agent's event loop: uvloop (libuv) instead of asyncio's pure-Python selector loop.

A probe spends much of its CPU in the loop's own machinery: waiting on
sockets, waking tasks, scheduling callbacks, resolving in a thread. uvloop does
that work in C and cuts an HTTP/2-over-TLS probe's CPU by about an eighth
(docs/benchmarks.md, bench/probe_cost.py), which is what brings it to
blackbox_exporter's. Everything on the agent's loop (probes, the gRPC link to
the collector, the metrics server) runs on it; uvloop implements the whole
asyncio event-loop API.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop of the kind the agent runs on."""
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run main to completion on a new agent loop, as ``asyncio.run`` does."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
