"""Soak: rotate a probe's CA file while probes run, in place and atomically; print the counts.

Usage: .venv/bin/python bench/rotation_soak.py [--rounds 20]

nghttpd (over TLS, in its own process) presents a certificate of CA "A". Probes run back to back
(10 at a time) against it with ``tls_config.ca_file: ca.pem`` inside a secrets
dir. Each round swaps ca.pem between A and a stranger CA "B" and back, either
rewriting the file in place or writing a new file and renaming it over the old
one. Every probe is classified: ok, tls (it used B: expected while B is in
place), or other (the file was caught half-written). A context is rebuilt
whenever the file's mtime or size changes, so the counts show whether a probe
ever used a stale CA after the swap back (it must not: the round's last probe
must succeed) and how often in-place writes are caught half-done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trustme  # noqa: E402

from probemesh.agent.probes import PROBERS  # noqa: E402
from probemesh.agent.probes.net import ProbeEnv  # noqa: E402
from probemesh.agent.probes.result import ProbeResult, failure_from_exception  # noqa: E402
from probemesh.agent.safety import AddressPolicy  # noqa: E402
from probemesh.agent.secrets import SecretFiles  # noqa: E402
from probemesh.modules import parse_module  # noqa: E402
from tests.harness import free_port  # noqa: E402

NGHTTPD = "/usr/sbin/nghttpd"


async def soak(rounds: int, atomic: bool, secrets: Path, url: str, a: bytes, b: bytes) -> Counter:
    settings = parse_module(
        "m",
        {
            "prober": "http",
            "http": {"preferred_ip_protocol": "ip4", "tls_config": {"ca_file": "ca.pem"}},
        },
    ).settings
    env = ProbeEnv(policy=AddressPolicy(allow_private=True), secrets=SecretFiles(secrets))
    counts: Counter = Counter()
    stop = asyncio.Event()

    async def probe_once() -> str:
        result = ProbeResult()
        try:
            async with asyncio.timeout(5):
                await PROBERS["http"](url, settings, env, result)
        except Exception as exc:
            result.fail(*failure_from_exception(exc))
        return "ok" if result.success else str(result.reason)

    async def lane() -> None:
        while not stop.is_set():
            counts[await probe_once()] += 1

    def write(data: bytes) -> None:
        path = secrets / "ca.pem"
        if atomic:
            tmp = secrets / ".ca.pem.new"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            path.write_bytes(data)

    write(a)
    lanes = [asyncio.create_task(lane()) for _ in range(10)]
    stale = 0
    for _ in range(rounds):
        write(b)
        await asyncio.sleep(0.05)
        write(a)
        await asyncio.sleep(0.05)
        if await probe_once() != "ok":  # first probe after the swap back must use A
            stale += 1
    stop.set()
    await asyncio.gather(*lanes)
    counts["stale_after_swap_back"] = stale
    return counts


async def main(rounds: int) -> None:
    ca, stranger = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost")
    with tempfile.TemporaryDirectory() as server_dir:
        key, cert, docs = (Path(server_dir) / name for name in ("key.pem", "cert.pem", "docs"))
        leaf.private_key_pem.write_to_path(str(key))
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        docs.mkdir()
        (docs / "index.html").write_text("ok")
        port = free_port()
        command = [NGHTTPD, "-a", "127.0.0.1", "-d", str(docs), str(port), str(key), str(cert)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
        try:
            await asyncio.sleep(0.5)
            url = f"https://localhost:{port}/index.html"
            a, b = ca.cert_pem.bytes(), stranger.cert_pem.bytes()
            for atomic in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    counts = await soak(rounds, atomic, Path(tmp), url, a, b)
                mode = "atomic rename" if atomic else "in place     "
                print(f"{mode}: {rounds} rounds, probes by outcome {dict(sorted(counts.items()))}")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
