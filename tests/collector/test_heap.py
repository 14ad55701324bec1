"""probemesh.collector.heap: free C-heap pages below live blocks go back to the system."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from probemesh.collector import heap


def rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


@pytest.mark.skipif(
    heap._MALLOC_TRIM is None, reason="the C library has no malloc_trim (not glibc)"
)
def test_trim_returns_memory_freed_below_live_blocks() -> None:
    blocks = [bytearray(1000) for _ in range(100_000)]  # ~100 MB of C-heap blocks (> 512 B)
    keep = bytearray(1000)  # a live block above them: the heap's top cannot shrink
    del blocks
    before = rss_kib()
    heap.trim()
    after = rss_kib()
    assert before - after > 50_000, (before, after)  # most of the 100 MB went back
    assert len(keep) == 1000


async def test_trim_periodically_runs_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(0.0) or 0.0)
    task = asyncio.create_task(heap.trim_periodically(every=0.01))
    for _ in range(500):  # up to 5 s on a loaded host
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 3
