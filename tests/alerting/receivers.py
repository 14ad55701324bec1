"""Real Alertmanager processes and a recording HTTP receiver for the alerting tests.

:class:`Alertmanager` runs the Debian ``prometheus-alertmanager`` on a free
loopback port with its own storage directory, clustering off, optionally behind
TLS and basic auth (its ``--web.config.file``). :class:`Recorder` is an HTTP
server in a thread that keeps every POST (path, headers, raw body); it stands in
for the people paged: Alertmanager's webhook receiver posts its notifications
there, and so do probemesh's webhooks.
"""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
import urllib.request
from base64 import b64encode
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import free_port, wait_for

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Recorder:
    """Keeps every POST it accepts; answers 503 to all of them while ``refuse_all`` is set,
    and to the first try of each delivery under ``flaky_prefix``."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.refused: list[Post] = []
        self.flaky_prefix = "/never"  # posts under it fail once per X-Probemesh-Delivery
        self.refuse_all = False  # every post fails with 503 while set
        self._seen_deliveries: set[str] = set()
        self._lock = threading.Lock()
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                post = Post(self.path, dict(self.headers.items()), self.rfile.read(length))
                status = recorder.record(post)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, post: Post) -> int:
        with self._lock:
            delivery = post.headers.get("X-Probemesh-Delivery", "")
            if self.refuse_all:
                self.refused.append(post)
                return 503
            if post.path.startswith(self.flaky_prefix) and delivery not in self._seen_deliveries:
                self._seen_deliveries.add(delivery)
                self.refused.append(post)
                return 503
            self.posts.append(post)
            return 200

    def under(self, path: str) -> list[Post]:
        with self._lock:
            return [p for p in self.posts if p.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def am_config(receiver_url: str) -> str:
    """One route, one group per alert, notify on resolve; short waits for the test."""
    return f"""
route:
  receiver: people
  group_by: [alertname, check, scope, agent]
  group_wait: 200ms
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: people
    webhook_configs:
      - url: {receiver_url}
        send_resolved: true
"""


@dataclass
class Alertmanager:
    """One Alertmanager process; restartable on the same port with the same storage."""

    root: Path
    name: str
    receiver_url: str
    web_config: str = ""  # TLS / basic auth (exporter-toolkit syntax); empty: plain HTTP
    ssl_context: ssl.SSLContext | None = None  # how the test itself talks to it
    basic_auth: tuple[str, str] | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.web_config else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / self.name / "alertmanager.log"

    def start(self) -> Alertmanager:
        base = self.root / self.name
        base.mkdir(exist_ok=True)
        (base / "alertmanager.yml").write_text(am_config(self.receiver_url))
        args = [
            f"--config.file={base / 'alertmanager.yml'}",
            f"--storage.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]
        if self.web_config:
            (base / "web.yml").write_text(self.web_config)
            args.append(f"--web.config.file={base / 'web.yml'}")
        assert ALERTMANAGER is not None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [ALERTMANAGER, *args], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(lambda: self.get("/-/ready") is not None, 20, f"alertmanager {self.name} ready")
        return self

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)
        if self.basic_auth:
            token = b64encode(":".join(self.basic_auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=3, context=self.ssl_context) as response:
            body = response.read()
        return json.loads(body) if path.startswith("/api/") else body

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds now (active, silenced and inhibited ones included)."""
        return list(self.get("/api/v2/alerts"))

    def stop(self) -> None:
        """SIGTERM (Alertmanager then writes its notification log) and wait."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
