"""Soak: https probes cut by their timeout while new probes take their socket descriptors.

Usage: .venv/bin/python bench/tls_close_soak.py [--runs 20]

The http probe drives TLS itself on its socket (probemesh/agent/probes/tlsconn.py);
a probe cancelled while it waits to read must leave the event loop before its
descriptor is closed, or the next socket given that number breaks. Each run
starts 10 probes against a server that never answers (timeout varied per run,
0.2-0.5 s) and 40 probes against a server that answers, started around those
timeouts. Prints per run and in total how many slow probes did not end as
timeouts and how many answered probes failed; both must be 0. Runs on the
agent's event loop (uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from probemesh.agent import eventloop  # noqa: E402
from probemesh.agent.probes.result import Reason  # noqa: E402
from tests.agent.probes.probe_helpers import (  # noqa: E402
    read_request,
    response,
    run,
    serve,
    server_context,
)


async def one_run(index: int, secrets: Path, context: object) -> tuple[int, int]:
    timeout = 0.2 + (index % 4) * 0.1

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the probe hangs up

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response(200, b"ok"))

    async def later(delay: float, url: str) -> object:
        await asyncio.sleep(delay)
        return await run("http", url, settings, 2.0, secrets)

    # IPv4 from /etc/hosts: no AAAA query for localhost leaves the machine.
    settings = {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": "ca.pem"}}
    async with serve(silent, context) as slow_port, serve(ok, context) as ok_port:  # type: ignore[arg-type]
        slow = [
            run("http", f"https://localhost:{slow_port}/", settings, timeout, secrets)
            for _ in range(10)
        ]
        fast = [
            later(timeout - 0.05 + i * 0.004, f"https://localhost:{ok_port}/") for i in range(40)
        ]
        results = await asyncio.gather(*slow, *fast)
    not_timeouts = sum(r.reason != Reason.TIMEOUT for r in results[:10])  # type: ignore[attr-defined]
    failed = sum(not r.success for r in results[10:])  # type: ignore[attr-defined]
    return not_timeouts, failed


async def main(runs: int) -> None:
    ca = trustme.CA()
    context = server_context(ca.issue_cert("localhost"))
    totals = [0, 0]
    with tempfile.TemporaryDirectory() as name:
        secrets = Path(name)
        ca.cert_pem.write_to_path(str(secrets / "ca.pem"))
        for index in range(runs):
            not_timeouts, failed = await one_run(index, secrets, context)
            totals[0] += not_timeouts
            totals[1] += failed
            print(
                f"run {index + 1}: slow probes not timed out {not_timeouts}/10, "
                f"answered probes failed {failed}/40"
            )
    print(f"{runs} runs: slow probes not timed out {totals[0]}, answered probes failed {totals[1]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    eventloop.run(main(parser.parse_args().runs))
