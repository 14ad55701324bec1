"""The shipped scrape job, as pasted, against a real collector and a real Prometheus.

Runs inside an isolated network namespace (see test_relabel.py): every port is
free there, so the collector listens on its default HTTP port 7444, and the
namespace's hosts file maps the example collector names of
deploy/prometheus/prometheus.yml to 127.0.0.1. A second listener answers on
[::1]:7444 so the IPv6 form is scraped too.

Prints one JSON object: target address -> {"collector": label, "up": value}.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from tests.harness import Mesh
from tests.prometheus.promserver import ROOT, run_prometheus

EXTRA_TARGETS = ["127.0.0.1:7444", "[::1]:7444"]


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE probemesh_test_up gauge\nprobemesh_test_up 1\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def shipped_collector_job() -> dict:
    """The probemesh-collector job of the shipped config, scraped every second."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "probemesh-collector"]
    job["scrape_interval"] = job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] += EXTRA_TARGETS
    return job


def main(root: Path) -> None:
    job = shipped_collector_job()
    targets = job["static_configs"][0]["targets"]
    mesh = Mesh(root, "modules: {}\nchecks: []\n", grpc_port=7443, http_port=7444)
    mesh.collector_args = ["--http-listen", "0.0.0.0:7444"]
    mesh.start_collector()
    v6 = _V6Server(("::1", 7444), _Metrics)
    threading.Thread(target=v6.serve_forever, daemon=True).start()
    try:
        with run_prometheus(root / "prometheus", scrape_configs=[job]) as prom:
            up = prom.wait_for('up{job="probemesh-collector"} == 1', 30, count=len(targets))
    finally:
        v6.shutdown()
        mesh.stop()
    print(
        json.dumps(
            {
                s["metric"]["instance"]: {
                    "collector": s["metric"].get("collector"),
                    "up": s["value"][1],
                }
                for s in up
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
