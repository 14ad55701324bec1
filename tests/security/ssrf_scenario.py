"""SSRF scenario run inside an isolated network namespace (see test_ssrf.py).

The namespace has only a loopback interface, so even a broken policy could not
send a packet to 169.254.169.254 or to a private address: it would get
ENETUNREACH. Names resolve through the namespace's own /etc/hosts
(``ip netns exec`` bind-mounts /etc/netns/NAME/hosts), which maps
metadata.pmtest to 169.254.169.254: a rebinding-style name.

Runs a real collector and a real agent *without* --allow-private-targets and
prints one JSON object: failures with reason "other" per check, and how many
connections the loopback listener accepted (must be 0).
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from pathlib import Path

from tests.harness import Mesh, Proc, total, wait_for


def main(root: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            accepted.append(peer)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    checks = {
        "meta-ip": ("http://169.254.169.254/latest/meta-data/", "http_2xx", "2s"),
        "meta-mapped": ("http://[::ffff:169.254.169.254]/", "http_2xx", "2s"),
        "meta-name": ("http://metadata.pmtest/latest/meta-data/", "http_2xx", "2s"),
        "loop-ip": (f"127.0.0.1:{port}", "tcp_connect", "2s"),
        "loop-name": (f"loop.pmtest:{port}", "tcp_connect", "2s"),
        "private": ("10.1.2.3:80", "tcp_connect", "2s"),
        "too-fast": (f"127.0.0.1:{port}", "tcp_connect", "1s"),
    }
    lines = [
        "modules:",
        "  http_2xx: {prober: http, timeout: 1s}",
        "  tcp_connect: {prober: tcp, timeout: 1s}",
        "checks:",
    ]
    for name, (target, module, interval) in checks.items():
        lines.append(
            f"  - {{name: {name}, target: '{target}', module: {module}, interval: {interval}}}"
        )
    mesh = Mesh(root, "\n".join(lines) + "\n")
    mesh.start_collector()
    token = mesh.token("ssrf1", "DE")
    agent = Proc(
        [
            "agent", "--collector", f"127.0.0.1:{mesh.grpc_port}",
            "--agent-id", "ssrf1", "--country", "DE",
            "--state-dir", str(root / "agent"), "--min-interval", "2s",
        ],
        root / "agent.log",
        env={"PROBEMESH_TOKEN": token},
    ).start()  # fmt: skip
    try:

        def failures() -> dict[str, float]:
            samples = mesh.metrics()
            return {
                name: total(samples, "probemesh_probe_failures_total", check=name, reason="other")
                for name in checks
            }

        with contextlib.suppress(AssertionError):  # report what we have; the test asserts
            wait_for(lambda: all(failures().values()), 12, "a refusal for every check")
        time.sleep(0.5)
        out = {
            "failures": failures(),
            "successes": total(mesh.metrics(), "probemesh_probe_results_total", result="success"),
            "accepted": len(accepted),
            "agent_log": agent.log(),
        }
    finally:
        agent.stop()
        mesh.stop()
        listener.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
