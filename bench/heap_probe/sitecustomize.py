"""Where a benchmarked collector's memory is: on SIGUSR2, a JSON report.

bench/mesh_scale.py --heap-report puts this directory on the collectors'
PYTHONPATH (Python imports ``sitecustomize`` at start-up) with
PROBEMESH_HEAP_REPORT naming the report's path prefix. Each SIGUSR2 writes
``<prefix>.<n>.json``: RSS and the anonymous memory (/proc/self/smaps_rollup);
Python's small-object allocator (pymalloc: bytes in live blocks, in free
blocks, in unused pools, arenas in all, from sys._debugmallocstats); the C
heap (glibc mallinfo2: bytes in use, free but resident); the objects the
garbage collector tracks; the RSS once the C heap is trimmed (malloc_trim,
as the collector does every 30 s); and, when tracemalloc runs (PYTHONTRACEMALLOC=1),
the lines that allocated the most live memory; the most numerous object types,
the event loop's live handles by callback, and the largest containers held in
objects' attributes (with the containers nested in them: a dict of dicts per
agent counts its inner tables). Benchmark instrumentation only.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import tracemalloc
from collections import Counter
from typing import Any

PREFIX = os.environ.get("PROBEMESH_HEAP_REPORT", "")
TOP_LINES = 25
TOP_TYPES = 8
TOP_CONTAINERS = 16
BIG = 1000  # a container with at least this many items, or nesting them, is reported


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _c_heap() -> dict[str, int]:
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return {}
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return {"in_use": info.uordblks + info.hblkhd, "free": info.fordblks}


def _pymalloc() -> dict[str, int]:
    """sys._debugmallocstats' totals (it writes to the C stderr: caught in a file).
    Empty while tracemalloc runs (its hooks hide pymalloc from the report)."""
    with tempfile.TemporaryFile("w+") as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            __import__("sys")._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    figures: dict[str, int] = {}
    for key, pattern in (
        ("live_blocks", r"# bytes in allocated blocks\s*=\s*([\d,]+)"),
        ("free_blocks", r"# bytes in available blocks\s*=\s*([\d,]+)"),
        ("unused_pools", r"unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
        ("arenas", r"# arenas allocated current\s*=\s*([\d,]+)"),
        ("total", r"\nTotal\s*=\s*([\d,]+)"),
    ):
        found = re.search(pattern, text)
        if found:
            figures[key] = int(found.group(1).replace(",", ""))
    return figures


def _rollup() -> dict[str, int]:
    out = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Anonymous:"):
                out[parts[0].rstrip(":").lower()] = int(parts[1]) * 1024
    return out


def _object_census(objects: list[Any]) -> dict[str, list[list[Any]]]:
    """The most numerous GC-tracked types, and what the event loop's live
    handles (callbacks and timers, cancelled ones still in its heap) call."""
    handles = Counter(
        getattr(o._callback, "__qualname__", type(o._callback).__name__)
        + (" (cancelled)" if o.cancelled() else "")
        for o in objects
        if issubclass(type(o), asyncio.Handle)  # not isinstance: a dead weakref proxy raises
    )
    types = Counter(type(o).__name__ for o in objects)
    return {
        "types": [list(t) for t in types.most_common(TOP_TYPES)],
        "handles": [list(h) for h in handles.most_common(TOP_TYPES)],
    }


def _footprint(container: Any) -> tuple[int, int]:
    """Bytes of a container's own table plus those of the containers directly in
    it (a dict of per-agent dicts, say; one shared by several counted once), and
    how many items they hold in all."""
    size, items = sys.getsizeof(container), len(container)
    values = container.values() if isinstance(container, dict) else container
    counted: set[int] = set()
    for inner in values:
        if type(inner) in (dict, list, set, tuple) and id(inner) not in counted:
            counted.add(id(inner))
            size += sys.getsizeof(inner)
            items += len(inner)
    return size, items


def _every_object(objects: list[Any]) -> list[Any]:
    """gc.get_objects() and what the collector froze at start-up (gc.freeze):
    its long-lived state is in the permanent generation, which get_objects skips.
    Found by following references from the modules, the threads' frames and the
    objects gc does list."""
    if not gc.get_freeze_count():
        return objects
    found = {id(o): o for o in objects}
    stack: list[Any] = [sys.modules, *sys._current_frames().values(), *objects]
    while stack:
        for ref in gc.get_referents(stack.pop()):
            if gc.is_tracked(ref) and id(ref) not in found:
                found[id(ref)] = ref
                stack.append(ref)
    return list(found.values())


def _containers(objects: list[Any]) -> list[list[Any]]:
    """The largest dicts, lists and sets held in an object's attribute, by owner
    class and attribute: what each index over every pair costs."""
    found: dict[str, list[int]] = {}
    for owner in _every_object(objects):
        attrs = getattr(owner, "__dict__", None)
        if type(attrs) is not dict or isinstance(owner, type):
            continue
        for name, value in attrs.items():
            if type(value) not in (dict, list, set) or len(value) < 2:
                continue
            size, items = _footprint(value)
            if items < BIG:
                continue
            entry = found.setdefault(f"{type(owner).__qualname__}.{name}", [0, 0, 0])
            entry[0] += size
            entry[1] += items
            entry[2] += 1
    top = sorted(found.items(), key=lambda kv: -kv[1][0])[:TOP_CONTAINERS]
    return [[where, *figures] for where, figures in top]


def report() -> dict[str, Any]:
    objects = gc.get_objects()
    body: dict[str, Any] = {
        **_rollup(),
        "pymalloc": _pymalloc(),
        "c_heap": _c_heap(),
        "gc_objects": len(objects),
        **_object_census(objects),
        "containers": _containers(objects),
    }
    del objects
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:  # what of the C heap's free memory a trim gives back now
        trim(0)
        body["rss_after_trim"] = _rollup()["rss"]
    if tracemalloc.is_tracing():
        stats = tracemalloc.take_snapshot().statistics("lineno")
        body["traced"] = sum(s.size for s in stats)
        body["top"] = [
            [s.size, s.count, f"{s.traceback[0].filename}:{s.traceback[0].lineno}"]
            for s in stats[:TOP_LINES]
        ]
    return body


_written = [0]


def _on_signal(*_: object) -> None:
    _written[0] += 1
    path = f"{PREFIX}.{_written[0]}.json"
    with open(path + ".part", "w") as out:
        json.dump(report(), out)
    os.replace(path + ".part", path)


if PREFIX:
    signal.signal(signal.SIGUSR2, _on_signal)
