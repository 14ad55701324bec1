"""A real probemesh mesh for the Prometheus/Grafana tests: CLI processes and targets.

Everything listens on 127.0.0.0/8. Processes are started as
``[sys.executable, "-m", "probemesh", ...]`` exactly as a user runs them, and
stopped (SIGTERM, then SIGKILL) by :meth:`Mesh.close`.

Targets (:class:`Targets`), all in threads of the test process:

* HTTP on 127.0.0.1: ``/ok`` answers 200, ``/fail`` 500, and ``/mixed`` 500 to
  clients whose source address is in ``Targets.failing_sources`` (agents started
  with ``--source-address``), 200 to the others;
* HTTPS (trustme certificate) with the same paths; ``ca_file`` is its CA (in root,
  which agents of a Mesh on the same root use as their --secrets-dir);
* a one-record DNS server over UDP answering any A query with 127.0.0.1.
"""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset
import trustme

from tests.harness import Proc, create_token, free_port, stop_all
from tests.harness import wait_for as wait_until


class _Handler(http.server.BaseHTTPRequestHandler):
    failing_sources: set[str] = set()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        failing = path == "/fail" or (
            path == "/mixed" and self.client_address[0] in self.failing_sources
        )
        body = b"down\n" if failing else b"ok\n"
        self.send_response(500 if failing else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _DNSHandler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
                reply = dns.message.make_response(query)
                question = query.question[0]
                reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.1"))
                self.sock.sendto(reply.to_wire(), peer)
            except Exception:  # a malformed query: ignore it, like a real server would
                continue

    def close(self) -> None:
        self.stopping.set()
        self.join(timeout=2)
        self.sock.close()


@dataclass
class Targets:
    """HTTP, HTTPS and DNS targets on loopback; see the module docstring."""

    root: Path
    failing_sources: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        handler = type("Handler", (_Handler,), {"failing_sources": self.failing_sources})
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = self.root / "target-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        self.dns = _DNSHandler()
        self._threads = [
            threading.Thread(target=s.serve_forever, daemon=True) for s in (self.http, self.https)
        ]
        for thread in self._threads:
            thread.start()
        self.dns.start()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https.server_address[1]}"

    @property
    def dns_target(self) -> str:
        return f"127.0.0.1:{self.dns.port}"

    def close(self) -> None:
        for server in (self.http, self.https):
            server.shutdown()
            server.server_close()
        self.dns.close()


@dataclass
class Collector:
    """One collector process started through the CLI."""

    root: Path
    name: str
    checks_yaml: str
    extra: list[str] = field(default_factory=list)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / f"{self.name}-data"

    @property
    def http_address(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> Collector:
        checks = self.root / f"{self.name}-checks.yaml"
        checks.write_text(self.checks_yaml)
        self.proc = Proc(
            [
                "collector",
                "--checks",
                str(checks),
                "--grpc-listen",
                f"127.0.0.1:{self.grpc_port}",
                "--http-listen",
                self.http_address,
                "--data-dir",
                str(self.data_dir),
                *self.extra,
            ],
            self.root / f"{self.name}.log",
        ).start()

        def ready() -> bool:
            assert self.proc is not None and self.proc.popen is not None
            if self.proc.popen.poll() is not None:
                raise AssertionError(f"collector {self.name} exited:\n{self.proc.log()}")
            with urllib.request.urlopen(f"http://{self.http_address}/readyz", timeout=2) as r:
                return bool(r.status == 200)

        try:
            wait_until(ready, 30, f"collector {self.name} /readyz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.proc.log()}") from None
        return self

    def token(self, agent_id: str, country: str) -> str:
        return create_token(agent_id, country, self.data_dir)


@dataclass
class Mesh:
    """Collectors and agents; close() stops every process it started."""

    root: Path
    collectors: list[Collector] = field(default_factory=list)
    agents: dict[str, Proc] = field(default_factory=dict)
    agent_metrics: dict[str, str] = field(default_factory=dict)

    def collector(self, name: str, checks_yaml: str, *extra: str) -> Collector:
        c = Collector(self.root, name, checks_yaml, list(extra))
        self.collectors.append(c)
        return c.start()

    def agent(self, collector: Collector, agent_id: str, country: str, *extra: str) -> Proc:
        token = collector.token(agent_id, country)
        metrics = f"127.0.0.1:{free_port()}"
        proc = Proc(
            [
                "agent",
                "--collector",
                f"127.0.0.1:{collector.grpc_port}",
                "--agent-id",
                agent_id,
                "--country",
                country,
                "--token",
                token,
                "--state-dir",
                str(self.root / f"agent-{agent_id}"),
                "--allow-private-targets",
                # Checks name the targets' CA (written into root) relative to it.
                "--secrets-dir",
                str(self.root),
                "--min-interval",
                "100ms",
                "--metrics-listen",
                metrics,
                *extra,
            ],
            self.root / f"agent-{agent_id}.log",
        ).start()
        self.agents[agent_id] = proc
        self.agent_metrics[agent_id] = metrics
        return proc

    def logs(self) -> str:
        parts = [f"--- {c.name} ---\n{c.proc.log()}" for c in self.collectors if c.proc]
        parts += [f"--- agent {name} ---\n{p.log(lines=15)}" for name, p in self.agents.items()]
        return "\n".join(parts)

    def close(self) -> None:
        stop_all(self.agents.values())
        stop_all(c.proc for c in self.collectors)
