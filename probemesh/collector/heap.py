"""Hand the C heap's free pages back to the system now and then.

glibc's malloc returns memory to the system only from the top of a heap: what
is freed below live blocks stays resident. A collector's transient peaks (an
ingest group of up to 20,000 results, a /metrics scrape's pieces, a
remote-write snapshot's requests) leave most of its C heap free but resident:
66 of 117 MB in the mesh benchmark at 20,000 pairs (docs/benchmarks.md), more
than its live state. ``malloc_trim(0)`` gives every free page of every arena
back (``madvise``): 2-10 ms for a 200 MB heap, 20-25 ms for a fragmented 570 MB
heap, holding each arena's lock while it walks it (a thread allocating from
that arena, the event loop's included, waits that long at most). Where the C
library has no ``malloc_trim`` (not glibc), nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_EVERY = 30.0
"""Seconds between two trims: a heap freed by a peak is resident this long at most."""


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_MALLOC_TRIM = _find_malloc_trim()


def trim() -> float:
    """Return the C heap's free pages to the system; the seconds it took."""
    started = time.perf_counter()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
    return time.perf_counter() - started


async def trim_periodically(every: float = TRIM_EVERY) -> None:
    """trim() every ``every`` seconds, in a worker thread: it takes each arena's
    lock in turn, so only a thread allocating from that arena meanwhile waits."""
    while True:
        await asyncio.sleep(every)
        seconds = await asyncio.to_thread(trim)
        log.debug("returned the C heap's free pages in %.1f ms", seconds * 1000)
