"""A Paris-style TCP-SYN traceroute on raw sockets (IPv4).

Every probe is the same TCP SYN to the target's port from one source port:
addresses, ports, protocol and even the TCP checksum stay constant, so routers
that balance per flow keep all probes on one path (Paris traceroute's idea).
Only the TTL changes, and the IP identification field, which no balancer
hashes, tells the probes apart in the ICMP errors that quote them.

A SYN to the target's own port also crosses firewalls that let the service
through, where ICMP echo or high UDP ports are often dropped.

It needs CAP_NET_RAW (raw sockets), like ICMP probes; without it the trace is
reported unavailable, never as an error. It blocks, so the agent runs it in a
worker thread; its total time is bounded by max_hops x hop_timeout.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time

from probemesh.v1 import mesh_pb2 as pb

MAX_HOPS = 30
HOP_TIMEOUT = 1.0
# Consecutive silent TTLs after which the path is considered lost.
SILENT_HOPS = 3
_ICMP_TIME_EXCEEDED = 11
_ICMP_UNREACHABLE = 3
_SEQ = 0x50524F42  # constant TCP sequence number: part of the constant checksum


def raw_socket_problem() -> str | None:
    """Why raw sockets cannot be opened here, or None."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        return "needs CAP_NET_RAW"
    except OSError as exc:
        return f"raw sockets unavailable: {exc.strerror}"
    return None


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, _SEQ, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
    checksum = _checksum(pseudo + header)
    return header[:16] + struct.pack("!H", checksum) + header[18:]


def _ip_header(src: str, dst: str, ident: int, ttl: int) -> bytes:
    # Linux fills in the total length and header checksum of IP_HDRINCL packets.
    return struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        ident,
        0,
        ttl,
        socket.IPPROTO_TCP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )


def source_for(dst: str, source: str = "") -> str:
    """The local address the kernel would use towards dst (a connected UDP socket sends nothing)."""
    if source:
        return source
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((dst, 9))
        return str(probe.getsockname()[0])


def trace(
    dst: str,
    port: int,
    source: str = "",
    max_hops: int = MAX_HOPS,
    hop_timeout: float = HOP_TIMEOUT,
) -> pb.PathEvidence:
    """Trace the path to dst:port; stops at the destination or after SILENT_HOPS silent TTLs."""
    path = pb.PathEvidence(destination=dst, protocol=f"tcp-syn/{port}")
    if ipaddress.ip_address(dst).version != 4:
        path.unavailable_reason = "IPv6 traceroute is not supported"
        return path
    try:
        send = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        path.unavailable_reason = "needs CAP_NET_RAW"
        return path
    except OSError as exc:
        path.unavailable_reason = f"raw sockets unavailable: {exc.strerror}"
        return path
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        src = source_for(dst, source)
        sport = 33000 + int.from_bytes(os.urandom(2), "big") % 28000
        segment = _syn(src, dst, sport, port)
        base_id = int.from_bytes(os.urandom(2), "big") & 0xFF00
        path.available = True
        silent = 0
        for ttl in range(1, max_hops + 1):
            ident = (base_id + ttl) & 0xFFFF
            sent_at = time.monotonic()
            send.sendto(_ip_header(src, dst, ident, ttl) + segment, (dst, 0))
            answer = _await_answer(icmp, tcp, dst, port, sport, ident, sent_at + hop_timeout)
            if answer is None:
                path.hops.add(ttl=ttl)
                silent += 1
                if silent >= SILENT_HOPS:
                    break
                continue
            silent = 0
            address, at, final = answer
            path.hops.add(ttl=ttl, address=address, rtt_seconds=round(at - sent_at, 6))
            if final:
                path.reached = address == dst
                break
        while path.hops and not path.hops[-1].address:
            path.hops.pop()  # the trailing silence says only where the path was lost
        return path
    finally:
        for sock in (send, icmp, tcp):
            sock.close()


def _await_answer(
    icmp: socket.socket,
    tcp: socket.socket,
    dst: str,
    port: int,
    sport: int,
    ident: int,
    deadline: float,
) -> tuple[str, float, bool] | None:
    """(answering address, when, whether the trace ends there) for this probe, or None."""
    dst_raw = socket.inet_aton(dst)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        readable, _, _ = select.select([icmp, tcp], [], [], left)
        now = time.monotonic()
        for sock in readable:
            data, (sender, _) = sock.recvfrom(2048)
            if sock is tcp:
                ihl = (data[0] & 0x0F) * 4
                if len(data) >= ihl + 4 and data[12:16] == dst_raw:
                    their_sport, their_dport = struct.unpack("!HH", data[ihl : ihl + 4])
                    if their_sport == port and their_dport == sport:
                        return sender, now, True  # SYN-ACK or RST: the destination answered
                continue
            quoted = _quoted_probe(data)
            if quoted is None:
                continue
            icmp_type, q_ident, q_dst, q_sport, q_dport = quoted
            if q_ident == ident and q_dst == dst_raw and (q_sport, q_dport) == (sport, port):
                return sender, now, icmp_type == _ICMP_UNREACHABLE


def _quoted_probe(data: bytes) -> tuple[int, int, bytes, int, int] | None:
    """(ICMP type, quoted IP id, quoted destination, quoted ports) of an ICMP error."""
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 8 + 20:
        return None
    icmp_type = data[ihl]
    if icmp_type not in (_ICMP_TIME_EXCEEDED, _ICMP_UNREACHABLE):
        return None
    inner = ihl + 8
    inner_ihl = (data[inner] & 0x0F) * 4
    if data[inner + 9] != socket.IPPROTO_TCP or len(data) < inner + inner_ihl + 4:
        return None
    (q_ident,) = struct.unpack("!H", data[inner + 4 : inner + 6])
    q_sport, q_dport = struct.unpack("!HH", data[inner + inner_ihl : inner + inner_ihl + 4])
    return icmp_type, q_ident, data[inner + 16 : inner + 20], q_sport, q_dport
