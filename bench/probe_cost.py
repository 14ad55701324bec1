"""CPU per HTTP probe, probemesh vs blackbox_exporter, and agent RSS with 1,000 checks.

Usage: .venv/bin/python bench/probe_cost.py [--probes 2000] [--concurrency 20]

One local HTTP target runs in its own process. Both sides make fresh-connection
HTTP probes against it at the same concurrency, in one run:

* blackbox_exporter: driven through its ``/probe`` endpoint; its CPU is read
  from /proc/<pid>/stat (utime + stime), so it includes serving /probe and
  encoding the metrics, which is blackbox's real per-probe cost.
* probemesh: the http probe function run in a worker process exactly as the
  agent's runner runs it (asyncio.timeout + ProbeResult); its CPU is that
  process's time.process_time(). Converting results to protobuf and sending
  them is not included (the collector link is batched; see docs/benchmarks.md).

RSS: a process that loads 1,000 checks through the checks-file parser and runs
them with the agent's real Scheduler and runner (interval 60 s against the
local target), measured from /proc/<pid>/status after the first probes ran.
The gRPC link to the collector is not started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import free_port  # noqa: E402

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
TICKS = os.sysconf("SC_CLK_TCK")

TARGET_SERVER = textwrap.dedent(
    """
    import asyncio, sys
    BODY = b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nok"
    async def handle(reader, writer):
        try:
            while (await reader.readline()) not in (b"\\r\\n", b""):
                pass
            writer.write(BODY)
            await writer.drain()
        finally:
            writer.close()
    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()
    asyncio.run(main())
    """
)

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from probemesh.agent.probes import PROBERS
    from probemesh.agent.probes.net import ProbeEnv
    from probemesh.agent.probes.result import ProbeResult, failure_from_exception
    from probemesh.agent.safety import AddressPolicy
    from probemesh.modules import parse_module

    url, total, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    module = {"prober": "http", "http": {"preferred_ip_protocol": "ip4"}}
    settings = parse_module("m", module).settings
    env = ProbeEnv(policy=AddressPolicy(allow_private=True))
    probe = PROBERS["http"]
    failures = {}

    async def one():
        result = ProbeResult()
        try:
            async with asyncio.timeout(5):
                await probe(url, settings, env, result)
        except Exception as exc:
            result.fail(*failure_from_exception(exc))
        if not result.success:
            key = f"{result.reason}: {result.message}"
            failures[key] = failures.get(key, 0) + 1
        return result.success

    async def main():
        await one()  # warm-up: imports, SSL-free path, caches
        remaining = total
        ok = 0
        async def lane():
            nonlocal remaining, ok
            while remaining > 0:
                remaining -= 1
                success = await one()  # not "ok += await": that loses updates
                ok += success
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        print(json.dumps({"cpu": cpu, "wall": wall, "ok": ok, "failures": failures}))

    asyncio.run(main())
    """
)

RSS_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from probemesh.agent.probes.net import ProbeEnv
    from probemesh.agent.safety import AddressPolicy
    from probemesh.agent.scheduler import Scheduler
    from probemesh.checks import parse_checks

    url, count = sys.argv[1], int(sys.argv[2])
    doc = {
        "modules": {"http_2xx": {"prober": "http", "timeout": "5s",
                                 "http": {"preferred_ip_protocol": "ip4"}}},
        "checks": [{"name": f"check-{i}", "target": f"{url}?i={i}", "module": "http_2xx",
                    "interval": "60s"} for i in range(count)],
    }

    async def main():
        checks = parse_checks(doc)
        produced = []
        scheduler = Scheduler(ProbeEnv(policy=AddressPolicy(allow_private=True)),
                              produced.append, min_interval=1.0, max_concurrency=100)
        scheduler.update(spec.to_proto() for spec in checks.checks.values())
        await asyncio.sleep(6)
        print(len(produced), flush=True)
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                print(int(line.split()[1]) // 1024, flush=True)
        await scheduler.stop()

    asyncio.run(main())
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env
    )


async def drive_blackbox(base: str, url: str, total: int, concurrency: int) -> int:
    """Run total /probe requests at the given concurrency; returns successes."""
    query = f"/probe?module=http_2xx&target={url}"
    remaining, ok = total, 0

    async def lane() -> None:
        nonlocal remaining, ok
        while remaining > 0:
            remaining -= 1
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + query, timeout=10).read()
            )
            ok += b"probe_success 1" in body

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--checks", type=int, default=1000)
    args = parser.parse_args()

    target = python(TARGET_SERVER)
    assert target.stdout is not None
    url = f"http://127.0.0.1:{int(target.stdout.readline())}/"
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "blackbox.yml"
        config.write_text(
            json.dumps(
                {
                    "modules": {
                        "http_2xx": {
                            "prober": "http",
                            "timeout": "5s",
                            "http": {"preferred_ip_protocol": "ip4"},
                        }
                    }
                }
            )
        )
        port = free_port()
        blackbox = subprocess.Popen(
            [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(base + "/-/healthy", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(drive_blackbox(base, url, 50, args.concurrency))  # warm-up
            cpu0, wall0 = cpu_seconds(blackbox.pid), time.perf_counter()
            bb_ok = asyncio.run(drive_blackbox(base, url, args.probes, args.concurrency))
            bb_cpu, bb_wall = cpu_seconds(blackbox.pid) - cpu0, time.perf_counter() - wall0
        finally:
            blackbox.terminate()
            blackbox.wait()

    worker = python(WORKER, url, str(args.probes), str(args.concurrency))
    out, _ = worker.communicate()
    pm = json.loads(out)
    if pm["failures"]:
        print("probemesh failures:", pm["failures"])

    rss_proc = python(RSS_WORKER, url, str(args.checks))
    rss_out, _ = rss_proc.communicate()
    produced, rss_mb = (int(x) for x in rss_out.split())
    target.terminate()
    target.wait()

    per_k_bb = bb_cpu / args.probes * 1000
    per_k_pm = pm["cpu"] / args.probes * 1000
    print(f"probes per side: {args.probes}, concurrency {args.concurrency}, fresh connections")
    print(
        f"blackbox_exporter: {per_k_bb:.3f} CPU s / 1000 probes "
        f"({bb_ok} ok, {args.probes / bb_wall:.0f} probes/s wall)"
    )
    print(
        f"probemesh:         {per_k_pm:.3f} CPU s / 1000 probes "
        f"({pm['ok']} ok, {args.probes / pm['wall']:.0f} probes/s wall)"
    )
    print(f"ratio probemesh / blackbox: {per_k_pm / per_k_bb:.2f}x (target <= 1.0x)")
    print(
        f"agent-equivalent RSS with {args.checks} checks scheduled "
        f"({produced} probes run in 6 s): {rss_mb} MB (target <= 80 MB)"
    )


if __name__ == "__main__":
    main()
