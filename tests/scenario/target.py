"""A target HTTP server for the netns scenario: answers 500 to the source IPs
listed in a control file (re-read on every request), 200 to everyone else.

    python target.py --host 10.200.0.1 --ports 8080,8081 --control FILE
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--ports", required=True)
    parser.add_argument("--control", required=True, type=Path)
    args = parser.parse_args()
    control: Path = args.control

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                failing = set(json.loads(control.read_text()).get("fail_500", []))
            except (OSError, ValueError):
                failing = set()
            status, body = (
                (500, b"upstream unavailable\n")
                if self.client_address[0] in failing
                else (200, b"ok\n")
            )
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    servers = [ThreadingHTTPServer((args.host, int(p)), Handler) for p in args.ports.split(",")]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
