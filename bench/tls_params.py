"""Which TLS parameters each side of bench/probe_cost.py negotiates with nghttpd.

Usage (root, for a packet socket on lo): .venv/bin/python bench/tls_params.py

Starts the same nghttpd as the cost bench, makes one HTTP/2 probe with
blackbox_exporter and one with probemesh's http probe, and prints what the
server's ServerHello (and any HelloRetryRequest) chose for each: cipher suite
and key-exchange group. The certificate (trustme, ECDSA P-256) is the same for
both. A CPU comparison is only fair when these lines match. probemesh's
worker makes a warm-up probe before the counted one, so it shows two handshakes.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probe_cost import run_worker, start_blackbox, start_nghttpd  # noqa: E402

# RFC 8446 4.1.3: a HelloRetryRequest is a ServerHello with this random.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
GROUPS = {0x0017: "P-256", 0x0018: "P-384", 0x0019: "P-521", 0x001D: "X25519", 0x001E: "X448"}
SUITES = {0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384"}
SUITES[0x1303] = "TLS_CHACHA20_POLY1305_SHA256"


def capture(port: int, stop: threading.Event, seen: list[str]) -> None:
    """Record the ServerHellos sent from port on lo (each packet once, as received)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind(("lo", 0))
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            packet, address = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if address[2] == socket.PACKET_OUTGOING:
            continue
        ip = packet[14:]
        if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_TCP:
            continue
        tcp = ip[(ip[0] & 15) * 4 :]
        if struct.unpack("!H", tcp[:2])[0] != port:
            continue
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if len(payload) > 9 and payload[0] == 0x16 and payload[5] == 2:
            seen.append(describe(payload[9:]))
    sock.close()


def describe(hello: bytes) -> str:
    """'ServerHello TLS_AES_... P-256' from a ServerHello body."""
    kind = "HelloRetryRequest" if hello[2:34] == HRR_RANDOM else "ServerHello"
    at = 35 + hello[34]
    suite = struct.unpack("!H", hello[at : at + 2])[0]
    at += 3
    end = at + 2 + struct.unpack("!H", hello[at : at + 2])[0]
    at += 2
    group = 0
    while at < end:
        kind_id, length = struct.unpack("!HH", hello[at : at + 4])
        if kind_id == 0x0033:
            group = struct.unpack("!H", hello[at + 4 : at + 6])[0]
        at += 4 + length
    return f"{kind}: {SUITES.get(suite, hex(suite))}, group {GROUPS.get(group, hex(group))}"


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("needs root: reads TLS handshakes from a packet socket on lo")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        nghttpd, url = start_nghttpd(tmp)
        port = int(url.split("/")[2].split(":")[1])
        section = {"preferred_ip_protocol": "ip4", "valid_http_versions": ["HTTP/2.0"]}
        try:
            module = {"prober": "http", "timeout": "5s"}
            module["http"] = {**section, "tls_config": {"ca_file": str(tmp / "ca.pem")}}
            blackbox, base = start_blackbox({"http_2xx": module}, tmp)
            for side in ("blackbox_exporter", "probemesh"):
                stop, seen = threading.Event(), []
                thread = threading.Thread(target=capture, args=(port, stop, seen))
                thread.start()
                time.sleep(0.3)
                if side == "blackbox_exporter":
                    query = f"/probe?module=http_2xx&target={url}"
                    ok = b"probe_success 1" in urllib.request.urlopen(base + query).read()
                else:
                    tls = {**section, "tls_config": {"ca_file": "ca.pem"}}
                    ok = run_worker(url, 1, 1, tls, tmp, "http")["ok"] == 1
                time.sleep(0.3)
                stop.set()
                thread.join()
                print(f"{side} (probe {'succeeded' if ok else 'FAILED'}):")
                for line in seen:
                    print(f"  {line}")
            blackbox.terminate()
            blackbox.wait()
        finally:
            nghttpd.terminate()
            nghttpd.wait()


if __name__ == "__main__":
    main()
