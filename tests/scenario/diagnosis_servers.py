"""Servers for the diagnosis scenario, each run inside its own namespace.

    python diagnosis_servers.py dns --listen 10.210.0.1 --answer 10.212.0.10
    python diagnosis_servers.py dns --listen 10.210.0.2 --answer 10.212.0.10 \
        --lie 10.213.0.20 --control FILE
    python diagnosis_servers.py origin --listen 10.212.0.10:8080 --control FILE
    python diagnosis_servers.py blockpage --listen 10.213.0.20:8080

The DNS server answers every A question with --answer (or with --lie while the
control file says {"lie": true}) and AAAA with an empty NOERROR. The origin
serves a page (or HTTP 500 while the control file says {"fail_500": true});
the blockpage serves a different, shorter page with other headers. Control
files are re-read on every request.
"""

from __future__ import annotations

import argparse
import json
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

ORIGIN_PAGE = (
    b"<html><head><title>Social Home - Welcome Friends</title></head><body>"
    + b"<p>Social Home: the place where friends share their news and photos.</p>" * 12
    + b"</body></html>"
)
BLOCK_PAGE = (
    b"<html><head><title>Access Restricted By Order</title></head>"
    b"<body>This site is blocked.</body></html>"
)


def _flag(control: Path | None, name: str) -> bool:
    if control is None:
        return False
    try:
        return bool(json.loads(control.read_text()).get(name))
    except (OSError, ValueError):
        return False


def serve_dns(listen: str, answer: str, lie: str, control: Path | None) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((listen, 53))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
        except Exception:  # a test server: ignore garbage
            continue
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            address = lie if lie and _flag(control, "lie") else answer
            response.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A", address))
        sock.sendto(response.to_wire(), peer)


def serve_http(listen: str, page: str, control: Path | None) -> None:
    host, port = listen.rsplit(":", 1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if page == "origin" and _flag(control, "fail_500"):
                status, body, extra = 500, b"upstream unavailable\n", ("X-Origin-Node", "o1")
            elif page == "origin":
                status, body, extra = 200, ORIGIN_PAGE, ("X-Origin-Node", "o1")
            else:
                status, body, extra = 200, BLOCK_PAGE, ("X-Filter", "national")
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header(*extra)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("dns", "origin", "blockpage"))
    parser.add_argument("--listen", required=True)
    parser.add_argument("--answer", default="")
    parser.add_argument("--lie", default="")
    parser.add_argument("--control", type=Path, default=None)
    args = parser.parse_args()
    if args.role == "dns":
        serve_dns(args.listen, args.answer, args.lie, args.control)
    else:
        serve_http(args.listen, args.role, args.control)


if __name__ == "__main__":
    main()
