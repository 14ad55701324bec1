"""Real processes for end-to-end tests: a collector and agents started through
the CLI exactly as a user would, on loopback, each with its own directories.

Used by the e2e, durability, security and dashboard tests; nothing here mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from probemesh.collector.database import open_database
from probemesh.collector.tokens import TokenStore

ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class _PortPool:
    """Loopback ports for the servers a test starts.

    Taken below the kernel's ephemeral range: a port the kernel hands out for
    ``bind(0)`` is one it may give the next outgoing connection of any process,
    which then holds it when the server starts ("Address already in use").
    Each pytest-xdist worker takes its own slice, so two workers never pick
    the same port, and walks it from a random point, handing a port out once.
    """

    def __init__(self) -> None:
        top = min(_ephemeral_start(), 32768)
        workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
        name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        worker = int(name[2:]) if name[2:].isdigit() else 0  # a replaced worker is gwN, N >= count
        size = (top - 10000) // workers
        self.first, self.size = 10000 + worker % workers * size, size
        self.at = random.randrange(size) if size > 0 else 0

    def take(self) -> int:
        for _ in range(self.size):
            port = self.first + self.at
            self.at = (self.at + 1) % self.size
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
        with socket.socket() as sock:  # no room below the ephemeral range on this host
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


_PORTS: _PortPool | None = None


def free_port() -> int:
    """A loopback port nobody listens on, for a server the test starts."""
    global _PORTS
    if _PORTS is None:
        _PORTS = _PortPool()
    return _PORTS.take()


def probemesh_cmd(*args: str) -> list[str]:
    """The command that runs probemesh; run it in ROOT (``python -m`` looks in
    the working directory first), so that a benchmark of another source tree
    runs that tree's collector and agents, not the checkout it was started from."""
    return [sys.executable, "-m", "probemesh", *args]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        probemesh_cmd(*args), capture_output=True, text=True, check=check, timeout=60, cwd=ROOT
    )


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> object:
    """Poll predicate until it returns something truthy; fail the test with what otherwise."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing polled may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


async def eventually(predicate: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    """The asyncio twin of wait_for: poll predicate every 10 ms without blocking the loop."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def serving(
    process: subprocess.Popen[bytes], ready_url: str, what: str, log_tail: Callable[[], str]
) -> Iterator[None]:
    """Wait (30 s at most) until ready_url answers 200, yield, then stop the process.

    For the real servers the tests start (Prometheus, VictoriaMetrics): a process
    that exits early or never gets ready fails the test with its log's tail.
    """
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"{what} exited early:\n{log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(ready_url, timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not ready after 30s:\n{log_tail()}")
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_in_isolated_netns(
    prefix: str, hosts: str, module: str, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` in a new network namespace with only loopback up
    and its own /etc/hosts (``ip netns exec`` mounts /etc/netns/NAME/), then remove both.

    Nothing but loopback is reachable from inside: scenarios that must not touch the
    network, or need host names that resolve only there, run here. Needs root.
    """
    ns = f"{prefix}-{uuid.uuid4().hex[:8]}"
    netns_etc = Path("/etc/netns") / ns
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
        netns_etc.mkdir(parents=True)
        (netns_etc / "hosts").write_text(hosts)
        routes = subprocess.run(
            ["ip", "-n", ns, "route", "show"], capture_output=True, text=True
        ).stdout
        assert routes.strip() == "", f"namespace must have no routes, has: {routes}"
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(netns_etc, ignore_errors=True)


def create_token(agent_id: str, country: str, data_dir: Path, database: str | None = None) -> str:
    """What ``probemesh token create`` prints, made in this process.

    The command itself is tested in test_cli.py and test_database_url.py; the
    other tests need tokens by the hundred, and a CLI process costs a second each.
    """
    conn = open_database(database, data_dir).connect()
    try:
        return TokenStore(conn).create(agent_id, country)
    finally:
        conn.close()


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """name + sorted labels -> value for every sample of a /metrics page."""
    out: Samples = {}
    for family in text_string_to_metric_families(http_get(url)):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample called name whose labels include labels."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


@dataclass
class Proc:
    """A started probemesh process with its log file."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(
            [*self.prefix, *probemesh_cmd(*self.args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: no chance to flush anything."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time."""
        if self.popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)

    def wait(self, timeout: float) -> int | None:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def log(self, lines: int | None = None) -> str:
        """The process's output so far, or its last `lines` lines."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if lines is None else "\n".join(text.splitlines()[-lines:])


def stop_all(procs: Iterable[Proc | None], timeout: float = 15) -> None:
    """SIGTERM every process at once, then wait for each (SIGKILL past timeout):
    their shutdowns overlap instead of adding up."""
    started = [proc for proc in procs if proc is not None and proc.popen is not None]
    for proc in started:
        proc.signal(signal.SIGTERM)
    until = time.monotonic() + timeout
    for proc in started:
        proc.stop(max(0.1, until - time.monotonic()))


@dataclass
class Mesh:
    """A collector plus agents in a temporary directory, all via the CLI."""

    root: Path
    checks_yaml: str
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    collector: Proc | None = None
    agents: dict[str, Proc] = field(default_factory=dict)
    collector_args: list[str] = field(default_factory=list)
    database: str | None = None  # --database of the collector and the token commands

    @property
    def database_args(self) -> list[str]:
        return ["--database", self.database] if self.database else []

    @property
    def data_dir(self) -> Path:
        return self.root / "collector-data"

    @property
    def checks_path(self) -> Path:
        return self.root / "checks.yaml"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/metrics"

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def start_collector(self, *extra: str, env: dict[str, str] | None = None) -> Proc:
        self.checks_path.write_text(self.checks_yaml)
        args = [
            "collector", "--checks", str(self.checks_path),
            "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--data-dir", str(self.data_dir), *self.database_args, *self.collector_args, *extra,
        ]  # fmt: skip
        collector = self.collector = Proc(args, self.root / "collector.log", env=env or {}).start()
        deadline = time.monotonic() + 20
        while True:  # ready, or the reason it is not: the log's tail
            with contextlib.suppress(OSError):
                if http_get(self.api("/readyz")):
                    return collector
            if not collector.alive():
                raise AssertionError(
                    f"the collector exited before it was ready:\n{self._log_tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the collector not ready after 20 s:\n{self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        return (self.root / "collector.log").read_text(errors="replace")[-3000:]

    def token(self, agent_id: str, country: str) -> str:
        return create_token(agent_id, country, self.data_dir, self.database)

    def start_agent(
        self,
        agent_id: str,
        country: str,
        *extra: str,
        token: str | None = None,
        collectors: str | None = None,
        metrics_port: int | None = None,
        prefix: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> Proc:
        """Start an agent; prefix wraps the command (e.g. a library preload), env adds variables."""
        token = token or self.token(agent_id, country)
        args = [
            "agent", "--collector", collectors or f"127.0.0.1:{self.grpc_port}",
            "--agent-id", agent_id, "--country", country,
            "--state-dir", str(self.root / f"agent-{agent_id}"),
            "--allow-private-targets", "--min-interval", "100ms", *extra,
        ]  # fmt: skip
        if metrics_port:
            args += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        proc = Proc(
            args,
            self.root / f"agent-{agent_id}.log",
            # Acks held back 0.5 s at most, not 10: the tests' waits for an
            # agent's empty queue would sit out the hold (held Acks are still used).
            env={"PROBEMESH_TOKEN": token, "PROBEMESH_LINK_ACK_HOLD": "0.5", **(env or {})},
            prefix=prefix or [],
        ).start()
        self.agents[agent_id] = proc
        return proc

    def metrics(self) -> Samples:
        return scrape(self.metrics_url)

    def stop(self) -> None:
        stop_all(self.agents.values())
        stop_all([self.collector])
