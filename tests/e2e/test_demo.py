"""probemesh demo: starts, shows the table and URLs, stops by itself; the target's
outage schedule fails six countries then recovers them one by one."""

from __future__ import annotations

import socket
import subprocess
import time

from probemesh import ports
from probemesh.demo import DemoTarget
from tests.harness import free_port, http_get, probemesh_cmd, wait_for


def test_demo_runs_unattended_and_stops_cleanly() -> None:
    http = free_port()
    result = subprocess.run(
        probemesh_cmd("demo", "--duration", "6", "--no-table",
                      "--http-listen", f"127.0.0.1:{http}", "--grpc-listen", f"127.0.0.1:{free_port()}"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{http}/metrics" in result.stdout
    assert "status" in result.stdout and "demo stopped" in result.stdout
    for country in ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP"):
        assert f"│ {country}" in result.stdout


def test_demo_target_fails_six_countries_then_recovers_progressively() -> None:
    target = DemoTarget()

    def failing_at(seconds: float) -> dict[str, str]:
        target.started = time.monotonic() - seconds
        return {
            cc: mode
            for cc in ("BR", "PH", "UG", "DE", "ZA", "LT", "US", "JP")
            if (mode := target.failure(cc))
        }

    assert failing_at(10) == {}
    assert failing_at(35) == {
        "BR": "500",
        "PH": "500",
        "UG": "hang",
        "DE": "500",
        "ZA": "hang",
        "LT": "hang",
    }
    assert set(failing_at(65)) == {"PH", "UG", "DE", "ZA", "LT"}  # BR back first
    assert set(failing_at(80)) == {"DE", "ZA", "LT"}
    assert failing_at(110) == {}


def _hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port, as another program would; None if something already does."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None  # taken already: just as good for the test
    sock.listen()
    return sock


def test_demo_moves_off_taken_default_ports() -> None:
    """blackbox_exporter (9115), snmp_exporter (9116) and something on each of the
    demo's own defaults: the demo still starts, on free ports, and says where."""
    held = [_hold(p) for p in (9115, 9116, ports.GRPC_PORT, ports.HTTP_PORT)]
    try:
        proc = subprocess.Popen(
            probemesh_cmd("demo", "--duration", "8", "--no-table"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        url, head = "", ""
        for line in proc.stdout:
            head += line
            if line.startswith("metrics: "):
                url = line.split()[1]
                break
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert port not in (9115, 9116, ports.GRPC_PORT, ports.HTTP_PORT)
        assert "probemesh_agent_connected" in wait_for(
            lambda: "probemesh_agent_connected" in (body := http_get(url)) and body,
            20,
            "the demo's /metrics",
        )
        out, err = proc.communicate(timeout=60)
        out = head + out
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{ports.HTTP_PORT} is in use" in out
    assert f"127.0.0.1:{ports.GRPC_PORT} is in use" in out


def test_demo_refuses_a_taken_address_the_user_chose() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        result = subprocess.run(
            probemesh_cmd("demo", "--duration", "2", "--no-table",
                          "--http-listen", f"127.0.0.1:{taken}", "--grpc-listen", f"127.0.0.1:{free_port()}"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{taken}" in result.stderr
