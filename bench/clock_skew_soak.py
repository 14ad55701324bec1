"""Soak of the clock-offset estimate and of the correction of a skewed agent's backlog.

Each repetition draws a clock offset (1.5 to 10 s, ahead or behind) and an
outage length (0 to 3 s), then runs one agent under libfaketime (Debian
faketime) against a real collector:

1. the collector estimates the offset (error and round trip are recorded);
2. the collector stops; the agent keeps probing for the outage, queues on
   disk, then stops;
3. a fresh collector process starts (no estimate yet) and the agent comes
   back with its backlog: every result the new process applies must have been
   corrected (the Welcome's clock probe is answered before the first batch),
   none refused, and the lifetime count must match the agent's exactly.

Prints one line per repetition and the counts; exits 1 on any failure.

    .venv/bin/python bench/clock_skew_soak.py --reps 20
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import Mesh, http_get, total, wait_for

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), "")


def agent_entry(mesh: Mesh) -> dict[str, object] | None:
    agents = json.loads(http_get(mesh.api("/api/v1/agents")))["agents"]
    entry = next((a for a in agents if a["agent"] == "skewed"), None)
    if entry and entry["connected"] and entry["clock_offset_seconds"] is not None:
        return dict(entry)
    return None


def rep(root: Path, port: int, offset: float, outage: float) -> dict[str, float | bool]:
    checks = (
        "modules:\n  tcp_connect: {prober: tcp, timeout: 1s}\nchecks:\n"
        f"  - {{name: port, target: '127.0.0.1:{port}', module: tcp_connect, interval: 250ms}}\n"
    )
    mesh = Mesh(root, checks)
    fake = ["env", f"LD_PRELOAD={LIBFAKETIME}", f"FAKETIME={offset:+.3f}"]
    mesh.start_collector()
    try:
        mesh.start_agent("skewed", "DE", prefix=fake)
        entry = wait_for(lambda: agent_entry(mesh), 30, "estimate")
        assert isinstance(entry, dict)
        estimate = float(entry["clock_offset_seconds"])  # type: ignore[arg-type]
        rtt = float(entry["clock_rtt_seconds"])  # type: ignore[arg-type]
        assert mesh.collector is not None
        mesh.collector.stop()
        time.sleep(outage)
        mesh.agents["skewed"].stop()
        mesh.start_collector()
        before = total(mesh.metrics(), "probemesh_probe_results_total", agent="skewed")
        agent = mesh.start_agent("skewed", "DE", prefix=fake)
        wait_for(lambda: agent_entry(mesh), 30, "estimate after the restart")
        time.sleep(1.0)
        agent.stop()
        stops = re.findall(r"agent stopped: produced=(\d+) acked=(\d+) queued=(\d+)", agent.log())
        produced, acked, queued = map(int, stops[-1])
        metrics = mesh.metrics()
        after = total(metrics, "probemesh_probe_results_total", agent="skewed")
        adjusted = total(metrics, "probemesh_agent_clock_adjusted_results_total", agent="skewed")
        rejected = total(metrics, "probemesh_ingest_rejected_total")
        return {
            "error": estimate - offset,
            "rtt": rtt,
            "applied": after - before,
            "adjusted": adjusted,
            "exact": after == produced == acked and queued == 0,
            "ok": adjusted == after - before and rejected == 0 and abs(estimate - offset) < 0.25,
        }
    finally:
        mesh.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    if not LIBFAKETIME:
        print("libfaketime not found: apt-get install faketime", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    rows = []
    with socket.create_server(("127.0.0.1", 0), backlog=256) as target:
        port = target.getsockname()[1]
        for i in range(args.reps):
            offset = rng.choice((-1, 1)) * rng.uniform(1.5, 10.0)
            outage = rng.uniform(0.0, 3.0)
            with tempfile.TemporaryDirectory(prefix="clock-soak-") as tmp:
                row = rep(Path(tmp), port, offset, outage)
            rows.append(row)
            print(
                f"rep {i + 1:2d}: offset {offset:+7.3f}s outage {outage:4.2f}s "
                f"error {row['error'] * 1000:+7.2f}ms rtt {row['rtt'] * 1000:6.2f}ms "
                f"backlog+live {row['applied']:3.0f} corrected {row['adjusted']:3.0f} "
                f"exact={row['exact']} ok={row['ok']}",
                flush=True,
            )
    errors = [abs(float(r["error"])) for r in rows]
    good = sum(bool(r["ok"]) for r in rows)
    exact = sum(bool(r["exact"]) for r in rows)
    print(
        f"\n{args.reps} reps: {good} all results corrected and estimate within 250 ms, "
        f"{exact} exactly accounted; |error| median {statistics.median(errors) * 1000:.2f} ms, "
        f"max {max(errors) * 1000:.2f} ms"
    )
    return 0 if good == exact == args.reps else 1


if __name__ == "__main__":
    sys.exit(main())
