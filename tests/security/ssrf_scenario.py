"""SSRF scenario run inside an isolated network namespace (see test_ssrf.py).

The namespace has only a loopback interface, so even a broken policy could not
send a packet to 169.254.169.254 or to a private address: it would get
ENETUNREACH. Names resolve through the namespace's own /etc/hosts
(``ip netns exec`` bind-mounts /etc/netns/NAME/hosts), which maps
metadata.pmtest to 169.254.169.254: a rebinding-style name.

Runs a real collector and a real agent *without* --allow-private-targets and
prints one JSON object: the not-runnable rule of each check on /metrics, the
failure and success counters, the incidents and the API's not_runnable lines
after several rounds, the collector's log, and how many connections the
loopback listener accepted (must be 0).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import time
from pathlib import Path

from tests.durability.common import queue_counters
from tests.harness import Mesh, Proc, http_get, total, wait_for


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

        def rules() -> dict[str, str]:
            return {
                dict(labels)["check"]: dict(labels)["rule"]
                for (name, labels), value in mesh.metrics().items()
                if name == "probemesh_check_not_runnable" and value == 1
            }

        with contextlib.suppress(AssertionError):  # report what we have; the test asserts
            wait_for(lambda: len(rules()) == len(checks), 12, "a refusal for every check")
        time.sleep(5)  # more rounds than an incident needs (2 confirmed rounds)
        samples = mesh.metrics()
        reachability = json.loads(http_get(mesh.api("/api/v1/reachability")))
        out = {
            "rules": rules(),
            "failures": total(samples, "probemesh_probe_failures_total"),
            "results": total(samples, "probemesh_probe_results_total"),
            "probe_success": [
                dict(labels)["check"] for (name, labels) in samples if name == "probe_success"
            ],
            "incidents": json.loads(http_get(mesh.api("/api/v1/incidents")))["incidents"],
            "states": {c["check"]: c["state"] for c in reachability["checks"]},
            "messages": {
                c["check"]: [r["message"] for r in c["not_runnable"]]
                for c in reachability["checks"]
            },
            "accepted": len(accepted),
            "agent_log": agent.log(),
            "collector_log": re.sub(
                r"\x1b\[[0-9;]*m", "", mesh.collector.log() if mesh.collector else ""
            ),
        }
        agent.stop()  # drains: every result it produced reached the collector
        out["produced"] = queue_counters(root / "agent")["produced"]
        out["refused"] = total(mesh.metrics(), "probemesh_probe_refused_total")
    finally:
        agent.stop()
        mesh.stop()
        listener.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
