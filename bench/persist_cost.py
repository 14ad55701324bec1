"""Agent persistence CPU per result at a steady rate, SQLite queue vs segment files.

Drives the agent's real persistence cycle at --rate results/s for --seconds of
wall time, in one process, exactly as the agent does it: every flush interval
(0.2 s) append the pending results in one transaction, then, as the link does,
read them back, record the batch as sent and delete it on the Ack. CPU is
time.process_time() over the run minus an idle baseline (the same loop doing
nothing), divided by the number of results.

For the storage decision it runs the same cycle against a minimal append-only
segment-file queue (length-prefixed records, one write+flush per batch, an
ack cursor file rewritten per Ack: the cheapest design that still survives a
process crash).

    .venv/bin/python bench/persist_cost.py --rate 1000 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from probemesh.agent.queue import DurableQueue
from probemesh.v1 import mesh_pb2 as pb

FLUSH_INTERVAL = 0.2


def sample_payload(i: int) -> bytes:
    """A realistic HTTP result, about 350 bytes encoded."""
    phases = ("resolve", "connect", "tls", "processing", "transfer")
    return pb.Result(
        check=f"check-{i % 50:03d}",
        target="https://example.org/health",
        timestamp=time.time(),
        success=True,
        duration_seconds=0.1234,
        samples=[
            pb.Sample(name="probe_http_duration_seconds", labels={"phase": p}, value=0.02)
            for p in phases
        ]
        + [
            pb.Sample(name="probe_http_status_code", value=200),
            pb.Sample(name="probe_http_ssl", value=1),
            pb.Sample(name="probe_ssl_earliest_cert_expiry", value=1.8e9),
        ],
    ).SerializeToString()


class SegmentQueue:
    """Minimal segment-file queue: append records, persist an ack cursor."""

    def __init__(self, directory: Path) -> None:
        self.log = (directory / "seg-000001.log").open("ab")
        self.cursor = directory / "acked"
        self.last_seq = 0
        self.pending: list[tuple[int, bytes]] = []

    def append(self, payloads: list[tuple[float, bytes]]) -> None:
        out = bytearray()
        for ts, blob in payloads:
            self.last_seq += 1
            out += struct.pack("<QdI", self.last_seq, ts, len(blob)) + blob
            self.pending.append((self.last_seq, blob))
        self.log.write(out)
        self.log.flush()  # in the page cache: survives a process crash, like WAL + NORMAL

    def read_and_ack(self) -> None:
        rows, self.pending = self.pending, []
        if rows:
            tmp = self.cursor.with_suffix(".tmp")
            tmp.write_text(str(rows[-1][0]))
            os.replace(tmp, self.cursor)


def run_cycle(
    rate: int, seconds: float, step: Callable[[list[tuple[float, bytes]]], object]
) -> tuple[float, int]:
    per_flush = max(1, round(rate * FLUSH_INTERVAL))
    blobs = [
        sample_payload(i) for i in range(per_flush)
    ]  # serialising is the probe's cost, not ours
    cpu0, wall0 = time.process_time(), time.monotonic()
    next_at = wall0
    produced = 0
    while time.monotonic() - wall0 < seconds:
        now = time.time()
        step([(now, b) for b in blobs])
        produced += per_flush
        next_at += FLUSH_INTERVAL
        time.sleep(max(0.0, next_at - time.monotonic()))
    return time.process_time() - cpu0, produced


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=1000, help="results per second [1000]")
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per variant [10]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pm-persist-") as tmp:
        root = Path(tmp)
        idle_cpu, _ = run_cycle(args.rate, args.seconds, lambda rows: None)

        queue = DurableQueue(root / "append" / "results.sqlite3")
        append_cpu, n = run_cycle(args.rate, args.seconds, queue.append)
        queue.close()

        queue = DurableQueue(root / "full" / "results.sqlite3")
        after = 0

        def full(rows: list[tuple[float, bytes]]) -> None:
            nonlocal after
            _, last = queue.append(rows)
            batch = queue.read(after, None, 1000)
            queue.mark_sent(batch[0][0], batch[-1][0])
            queue.ack(batch[-1][0], [(batch[0][0], batch[-1][0])])
            after = last

        full_cpu, n_full = run_cycle(args.rate, args.seconds, full)
        assert queue.depth == 0 and queue.counters.acked == n_full
        queue.close()

        (root / "seg").mkdir()
        seg = SegmentQueue(root / "seg")

        def seg_full(rows: list[tuple[float, bytes]]) -> None:
            seg.append(rows)
            seg.read_and_ack()

        seg_cpu, n_seg = run_cycle(args.rate, args.seconds, seg_full)

    def per(cpu: float, count: int) -> float:
        return (cpu - idle_cpu) / count * 1e6

    print(
        f"rate {args.rate}/s, {args.seconds:g}s per variant, flush every {FLUSH_INTERVAL}s; "
        f"idle baseline {idle_cpu * 1000:.1f} ms CPU"
    )
    print(f"sqlite append only:             {per(append_cpu, n):6.2f} us CPU/result")
    print(
        f"sqlite append+read+sent+ack:    {per(full_cpu, n_full):6.2f} us CPU/result"
        "  (target <= 20)"
    )
    print(f"segment append+ack cursor:      {per(seg_cpu, n_seg):6.2f} us CPU/result")


if __name__ == "__main__":
    main()
