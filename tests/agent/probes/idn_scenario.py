"""IDN scenario run inside a network namespace whose /etc/hosts names IDN hosts (see test_http_idn.py).

Starts a recording HTTP server on 127.0.0.1 and blackbox_exporter, probes each
target with both, and prints one JSON object: per target, the request lines and
Host headers each side sent, and both verdicts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.agent.probes.probe_helpers import run
from tests.harness import free_port

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def start_blackbox(config: Path, port: int) -> subprocess.Popen[bytes]:
    blackbox = subprocess.Popen(
        [BLACKBOX, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            fetch(f"http://127.0.0.1:{port}/-/healthy")
            break
        except OSError:
            time.sleep(0.05)
    return blackbox


async def main(root: Path) -> None:
    seen: list[tuple[str, str]] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode("latin-1").strip()
        host = ""
        while (raw := await reader.readline()) not in (b"\r\n", b""):
            key, _, val = raw.decode("latin-1").partition(":")
            if key.strip().lower() == "host":
                host = val.strip()
        seen.append((line, host))
        if line.startswith("GET /to-idn "):
            port = writer.get_extra_info("sockname")[1]
            location = f"http://bücher.example:{port}/landed".encode()
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(record, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = root / "blackbox.yml"
    section = {"preferred_ip_protocol": "ip4"}
    config.write_text(yaml.safe_dump({"modules": {"m": {"prober": "http", "http": section}}}))
    bb_port = free_port()
    blackbox = start_blackbox(config, bb_port)
    out: dict[str, dict] = {}
    try:
        for target in (
            f"http://bücher.example:{port}/straße?q=1",
            f"http://пример.рф:{port}/",
            f"http://127.0.0.1:{port}/to-idn",
        ):
            seen.clear()
            query = urllib.parse.urlencode({"module": "m", "target": target, "debug": "true"})
            text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{bb_port}/probe?{query}")
            theirs = list(seen)
            seen.clear()
            result = await run("http", target, section)
            out[target] = {
                "blackbox": {
                    "sent": theirs,
                    "success": "probe_success 1" in text,
                    "log": [line for line in text.splitlines() if "level=error" in line],
                },
                "probemesh": {
                    "sent": list(seen),
                    "success": result.success,
                    "message": result.message,
                },
            }
    finally:
        blackbox.terminate()
        blackbox.wait()
        server.close()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
