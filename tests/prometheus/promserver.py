"""Run a real Prometheus (the Debian /usr/bin/prometheus) for tests, on loopback only.

Used by tests/prometheus and tests/grafana. ``PROMETHEUS`` / ``PROMTOOL`` are
None when the binaries are missing; tests skip with ``MISSING_REASON``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness import free_port, serving

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
)
PROMTOOL = shutil.which("promtool") or (
    "/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None
)
MISSING_REASON = (
    "Prometheus binaries not found (need prometheus and promtool on PATH or in /usr/bin; "
    "Debian: apt-get install prometheus)"
)


@dataclass
class Prometheus:
    """A running Prometheus and a tiny client for its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; return its data, raise AssertionError on an API error."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (list of {metric, value})."""
        data = self.api("query", query=expr)
        result = data["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def query_range(self, expr: str, seconds: int = 60, step: str = "2s") -> list[dict[str, Any]]:
        now = time.time()
        data = self.api(
            "query_range", query=expr, start=str(now - seconds), end=str(now), step=step
        )
        return list(data["result"])

    def wait_for(self, expr: str, timeout: float = 30.0, count: int = 1) -> list[dict[str, Any]]:
        """Poll expr until it returns at least count series; fail with the last answer."""
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if len(result) >= count:
                return result
            time.sleep(0.5)
        raise AssertionError(
            f"{expr!r} returned {len(result)} series after {timeout}s (wanted {count}): "
            f"{result}\n--- prometheus log tail ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def run_prometheus(
    workdir: Path,
    scrape_targets: dict[str, list[str]] | None = None,
    rule_files: list[Path] | None = None,
    remote_write_receiver: bool = False,
    interval: str = "1s",
    scrape_configs: list[dict[str, Any]] | None = None,
) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port with a temp config and TSDB; stop it after.

    scrape_configs are whole jobs added as given (relabelling included); their
    names must resolve to loopback (the caller runs in an isolated namespace
    whose hosts file maps them).
    """
    assert PROMETHEUS is not None, MISSING_REASON
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in (rule_files or [])],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in (scrape_targets or {}).items()
        ]
        + list(scrape_configs or []),
    }
    if remote_write_receiver:
        # Results are written at the probe's own time: a replayed backlog is older
        # than what the TSDB already holds for its series.
        config["storage"] = {"tsdb": {"out_of_order_time_window": "1h"}}
    for target in (t for ts in (scrape_targets or {}).values() for t in ts):
        assert target.startswith("127."), f"tests scrape loopback only, not {target}"
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    args = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
        "--log.level=warn",
    ]
    if remote_write_receiver:
        args.append("--web.enable-remote-write-receiver")
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
    with serving(process, f"{prom.url}/-/ready", "prometheus", prom.log_tail):
        yield prom
