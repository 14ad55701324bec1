"""Helpers for the durability tests: a TCP target, high-rate checks, and the
exact accounting check every test ends with.

The accounting check: quiesce the mesh (reload the checks so that no agent is
assigned any, which stops production without stopping anything else), wait for
every agent's queue to drain, then require

    sum(agent produced) == sum(collector probemesh_probe_results_total) + sum(agent dropped)

exactly, with no result rejected. Dedupe (probemesh_duplicate_results_total)
may be anything; a result counted twice or lost breaks the equality.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.harness import Mesh, Samples, free_port, scrape, total, wait_for

PRODUCED = "probemesh_agent_results_produced_total"
DROPPED = "probemesh_agent_results_dropped_total"
DEPTH = "probemesh_agent_queue_depth"
RESULTS = "probemesh_probe_results_total"
REFUSED = "probemesh_probe_refused_total"  # refused by the agent's policy: produced, not probed

# Fast reconnects for every process the tests start (inherited environment).
FAST_LINK_ENV = {"PROBEMESH_LINK_BACKOFF_CAP": "1"}


class TcpSink:
    """A TCP listener that accepts and closes connections: tcp probes succeed."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def checks_yaml(
    open_target: str,
    closed_target: str,
    n_checks: int = 10,
    interval: str = "100ms",
    countries: str = "",
) -> str:
    """n_checks tcp checks, alternating a listening and a closed target."""
    selector = f", countries: [{countries}]" if countries else ""
    lines = [
        "modules:",
        "  tcp_connect: {prober: tcp, timeout: 1s, tcp: {preferred_ip_protocol: ip4}}",
        "checks:",
    ]
    for i in range(n_checks):
        target = open_target if i % 2 == 0 else closed_target
        lines.append(
            f'  - {{name: c{i:02d}, target: "{target}", module: tcp_connect, '
            f"interval: {interval}{selector}}}"
        )
    return "\n".join(lines) + "\n"


def closed_port() -> int:
    """A loopback port nothing listens on, from the harness's pool (no outgoing
    connection takes it, and a later server of the test may)."""
    return free_port()


@dataclass
class AgentRef:
    """An agent started by a test: its id, metrics URL and state directory."""

    agent_id: str
    metrics_url: str
    state_dir: Path

    def metrics(self) -> Samples:
        return scrape(self.metrics_url)


def queue_counters(state_dir: Path) -> dict[str, int]:
    """The agent's persisted counters plus the rows on disk (works while it runs)."""
    db = sqlite3.connect(state_dir / "results.sqlite3", timeout=10)
    try:
        counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
        counters["depth"] = db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        counters["sent_ranges"] = db.execute("SELECT COUNT(*) FROM sent").fetchone()[0]
    finally:
        db.close()
    return counters


def collector_total(mesh: Mesh) -> float:
    samples = mesh.metrics()
    return total(samples, RESULTS) + total(samples, REFUSED)


def agents_sum(agents: list[AgentRef], name: str) -> float:
    return sum(total(a.metrics(), name) for a in agents)


def quiesce(mesh: Mesh, quiet_yaml: str, agents: list[AgentRef]) -> None:
    """Reload the collector with checks assigned to nobody: production stops.

    Waits first for every agent to be connected to the current collector, so
    that each one is told at once to stop.
    """
    assert mesh.collector is not None
    for agent in agents:
        wait_for(
            lambda a=agent: (
                total(mesh.metrics(), "probemesh_agent_connected", agent=a.agent_id) == 1
            ),  # type: ignore[misc]
            30,
            f"{agent.agent_id} connected before the quiesce",
        )
    mesh.checks_path.write_text(quiet_yaml)
    mesh.collector.signal(signal.SIGHUP)


def wait_no_checks(agents: list[AgentRef], timeout: float = 20) -> None:
    for agent in agents:
        wait_for(
            lambda a=agent: total(a.metrics(), "probemesh_agent_checks") == 0,  # type: ignore[misc]
            timeout,
            f"{agent.agent_id} to drop its checks",
        )
    time.sleep(0.5)  # the last pending results reach the queue (flush interval 0.2 s)


def assert_exact_accounting(
    mesh: Mesh, agents: list[AgentRef], timeout: float = 30, expect_dropped: bool = False
) -> dict[str, float]:
    """After quiesce: wait for drained queues, then require exact totals."""
    wait_no_checks(agents)

    def drained() -> bool:
        if agents_sum(agents, DEPTH) != 0:
            return False
        return collector_total(mesh) + agents_sum(agents, DROPPED) == agents_sum(agents, PRODUCED)

    with contextlib.suppress(AssertionError):  # report the numbers below instead
        wait_for(drained, timeout, "agents drained and totals equal")
    time.sleep(1.0)  # nothing late may still arrive and double count
    samples = mesh.metrics()
    figures = {
        "produced": agents_sum(agents, PRODUCED),
        "dropped": agents_sum(agents, DROPPED),
        "depth": agents_sum(agents, DEPTH),
        "collector": total(samples, RESULTS) + total(samples, REFUSED),
        "duplicates": total(samples, "probemesh_duplicate_results_total"),
    }
    # Evidence reports (diagnosis) are not results, and a stream refused while the
    # database is unreachable carries none: neither bears on the accounting.
    reasons = {
        dict(labels).get("reason", ""): value
        for (name, labels), value in samples.items()
        if name == "probemesh_ingest_rejected_total" and value
        and dict(labels).get("reason") not in ("unknown_evidence", "database")
    }  # fmt: skip
    figures["rejected"] = sum(reasons.values())
    print(f"accounting: {figures} rejected: {reasons}")
    assert figures["produced"] > 0, figures
    assert figures["depth"] == 0, f"agents still hold results: {figures}"
    assert figures["rejected"] == 0, f"the collector rejected results: {reasons} {figures}"
    assert figures["collector"] + figures["dropped"] == figures["produced"], (
        f"accounting broken: produced {figures['produced']:.0f} != collector "
        f"{figures['collector']:.0f} + dropped {figures['dropped']:.0f}: {figures}"
    )
    if not expect_dropped:
        assert figures["dropped"] == 0, figures
    return figures


def assert_disk_matches(agents: list[AgentRef], figures: dict[str, float]) -> None:
    """After the agents exit: the state DBs agree with what /metrics said."""
    produced = dropped = 0
    for agent in agents:
        counters = queue_counters(agent.state_dir)
        assert counters["depth"] == 0, (agent.agent_id, counters)
        assert counters["produced"] == counters["acked"] + counters["dropped"], counters
        produced += counters["produced"]
        dropped += counters["dropped"]
    assert (produced, dropped) == (figures["produced"], figures["dropped"])


class Relay:
    """A loopback TCP relay in front of the collector that a test can cut and throttle.

    cut() closes every relayed connection and closes new ones at once, so the
    agents are disconnected while the collector runs on (what a partition does
    to them, without root). rate, when set, caps the agent-to-collector
    direction of each connection in bytes/s: a thin uplink that makes a
    replay last long enough to restart the collector in the middle of it.
    freeze() stops the bytes both ways and keeps the connections open: the
    agent gives up a stream that the collector still holds open (half-open).
    hold_replies() stops only the collector's side (Acks): batches are applied
    and committed while the agent still holds them as unacked.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rate = 0.0
        self.open = True
        self.upstream_flowing = threading.Event()  # agent -> collector
        self.downstream_flowing = threading.Event()  # collector -> agent
        self.thaw()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if not self.open:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:  # the collector is down
                conn.close()
                continue
            upstream.settimeout(None)
            conn.settimeout(None)
            with self._lock:
                self._conns += [conn, upstream]
            for src, dst, up in ((conn, upstream, True), (upstream, conn, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        """Copy src to dst; up: the agent-to-collector direction (throttled)."""
        flowing = self.upstream_flowing if up else self.downstream_flowing
        try:
            while True:
                data = src.recv(4096)
                if not data:
                    break
                if up and self.rate:
                    time.sleep(len(data) / self.rate)
                flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Disconnect every agent and refuse them until heal()."""
        self.open = False
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def heal(self) -> None:
        self.open = True

    def freeze(self) -> None:
        self.upstream_flowing.clear()
        self.downstream_flowing.clear()

    def hold_replies(self) -> None:
        self.downstream_flowing.clear()

    def thaw(self) -> None:
        self.upstream_flowing.set()
        self.downstream_flowing.set()

    def close(self) -> None:
        self._stop = True
        self.thaw()
        self.cut()
        self._thread.join(2)
        self.sock.close()
