"""Start a real VictoriaMetrics (Debian package victoria-metrics) for a test."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import free_port, serving

VICTORIA_METRICS = shutil.which("victoria-metrics")
MISSING_REASON = "victoria-metrics is not installed (Debian package victoria-metrics)"


@dataclass
class VictoriaMetrics:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def write_url(self) -> str:
        return f"{self.url}/api/v1/write"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query over everything ingested so far (flushed first, uncached)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        params = urllib.parse.urlencode({"query": expr, "nocache": "1"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{params}", timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def run_victoria_metrics(workdir: Path) -> Iterator[VictoriaMetrics]:
    """VictoriaMetrics on a free loopback port with its own storage; stopped after."""
    assert VICTORIA_METRICS is not None, MISSING_REASON
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "victoria-metrics.log"
    args = [
        VICTORIA_METRICS,
        f"-storageDataPath={workdir / 'data'}",
        f"-httpListenAddr=127.0.0.1:{port}",
        "-retentionPeriod=1d",
        "-search.latencyOffset=0s",  # show samples as soon as they are flushed
        "-loggerLevel=WARN",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    vm = VictoriaMetrics(f"http://127.0.0.1:{port}", process, log_path)
    with serving(process, f"{vm.url}/health", "victoria-metrics", vm.log_tail):
        yield vm
